"""``orstream bench latency`` writes the JSON the README table is built from (shape, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orstream.common.observability import HOPS

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
    # every hop of the path, in its order, each with samples; the extras beside it
    assert list(results["hops"]) == list(HOPS)
    for hop, summary in [
        *results["hops"].items(),
        ("encoder.queue", results["hops_extra"]["encoder.queue"]),
    ]:
        assert summary["n"] > 0, hop
        assert summary["p50"] <= summary["p95"] <= summary["p99"], hop
        assert "mean" in summary, hop
    # the 10th peer's send has samples from 10 peers on
    assert results["hops_extra"]["edge.send.peer10"] == {"n": 0}
    # each probe-decoded frame was joined with the edge's send of it
    assert results["hops"]["viewer"]["n"] >= 0.9 * g2g["n"]
    assert results["hop_sum_p50_ms"] == pytest.approx(
        sum(s["p50"] for s in results["hops"].values()), abs=0.01
    )
    assert results["hop_sum_mean_ms"] == pytest.approx(
        sum(s["mean"] for s in results["hops"].values()), abs=0.01
    )
    # … and `orstream latency` reads it
    table = subprocess.run(
        [sys.executable, "-m", "orstream.cli.main", "latency", "--from", str(out)],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout
    assert all(hop in table for hop in HOPS), table
