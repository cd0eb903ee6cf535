"""``orstream bench ingest`` writes the JSON the README's ingest rows come from (shape, not speed)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_ingest_of_an_st2110_flow_writes_its_json(
    tmp_path: Path, state_dir: Path, st2110_sdp, gstreamer: str
) -> None:
    out = tmp_path / "ingest.json"
    sdp = tmp_path / "flow.sdp"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sdp.write_text(st2110_sdp(port, 320, 180, "25", 10))
    subprocess.run(
        [sys.executable, "-m", "orstream.cli.main", "bench", "ingest",
         "--source", f"sdp:{sdp}", "--seconds", "2", "--json", str(out)],
        check=True, timeout=180, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["name"] == "ingest"
    results = report["results"]
    assert results["frames_expected"] == 50
    assert results["frames_received"] + results["frames_dropped"] <= 50
    assert results["frames_received"] > 0 and results["packets_received"] > 0
    assert {"packets_lost", "cpu_cores"} <= set(results)
    assert 0 < results["cpu_cores"] < 2
