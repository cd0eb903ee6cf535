"""``orstream bench latency`` writes the JSON the README table is built from (shape, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_latency_writes_its_json(tmp_path: Path, state_dir: Path) -> None:
    out = tmp_path / "latency.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "orstream.cli.main",
            "bench",
            "latency",
            "--seconds",
            "2",
            "--warmup",
            "1",
            "--resolution",
            "640x360",
            "--fps",
            "25",
            "--peers",
            "2",
            "--json",
            str(out),
        ],
        check=True,
        timeout=180,
        capture_output=True,
    )
    report = json.loads(out.read_text())
    assert report["name"] == "latency"
    assert report["config"]["resolution"] == "640x360"
    assert report["config"]["peers"] == 2
    results = report["results"]
    g2g = results["glass_to_glass_ms"]
    assert g2g["n"] > 0
    assert 0 < g2g["p50"] <= g2g["p95"] <= g2g["p99"]
    assert 0 < results["frames_received"] <= results["frames_sent"]
    for hop in ("ingest", "encoder", "encode", "encoder_queue", "nats", "edge"):
        assert results["hops"][hop]["n"] > 0, hop
        assert results["hops"][hop]["p50"] <= results["hops"][hop]["p95"], hop
