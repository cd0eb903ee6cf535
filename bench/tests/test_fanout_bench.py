"""``orstream bench fanout`` writes the JSON the README table is built from (shape, not speed):
both senders' peers really received RTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_fanout_writes_its_json(tmp_path: Path, state_dir: Path) -> None:
    out = tmp_path / "fanout.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "orstream.cli.main",
            "bench",
            "fanout",
            "--peers",
            "2",
            "--baseline-peers",
            "1",
            "--seconds",
            "2",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
        timeout=240,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "fanout"
    assert report["config"]["peers"] == 2
    assert report["config"]["baseline_peers"] == 1
    assert report["config"]["resolution"] == "1280x720"
    results = report["results"]
    for key in ("peers_per_core", "cpu_per_peer_pct", "baseline_peers_per_core", "ratio"):
        assert results[key] > 0, key
    assert results["au_to_last_packet_rank"] == 2  # fewer than 10 peers: the last one
    latency = results["au_to_last_packet_ms"]
    assert latency["n"] > 0
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert results["au_to_last_packet_ms_last_peer"] == latency
    fanout, baseline = results["fanout"], results["baseline"]
    assert fanout["peers"] == 2 and fanout["peers_failed"] == 0
    assert baseline["peers"] == 1 and baseline["peers_failed"] == 0
    for sender in (fanout, baseline):
        assert sender["frames_received_min_peer"] > 0, "a peer received no video"
        assert sender["packets_received"] >= sender["frames_received"] > 0
        assert sender["cpu_cores"] > 0
        assert 0 < sender["received_ratio"] <= 1.01
    assert fanout["aus_published"] > 0
    assert fanout["counters"]["sessions_opened"] == 2
