"""``orstream bench encoder`` writes the JSON the README's encoder rows come from (shape only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_bench_encoder_reports_every_codec_and_size(tmp_path: Path) -> None:
    out = tmp_path / "encoder.json"
    subprocess.run(
        [sys.executable, "-m", "orstream.cli.main", "bench", "encoder",
         "--seconds", "0.2", "--json", str(out)],
        check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["name"] == "encoder"
    results = report["results"]
    assert set(results) == {"h264_1280x720", "vp8_1280x720", "h264_1920x1080", "vp8_1920x1080"}
    for case in results.values():
        assert case["fps_per_core"] > 0 and case["bitrate_mbps"] > 0
        assert case["encode_ms"]["n"] == 10 and case["encode_ms"]["p95"] >= case["encode_ms"]["p50"]
