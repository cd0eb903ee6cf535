"""``orstream bench browser`` writes the JSON the README's Chromium row comes from (shape, not
speed), and says plainly when Chromium or Playwright is missing."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orstream.bench import browser
from orstream.viewer.chromium import chromium_path


def _args(json_path: Path) -> argparse.Namespace:
    return argparse.Namespace(
        seconds=1.0, warmup=0.0, resolution="640x360", fps=25.0, json_path=str(json_path)
    )


def test_missing_chromium_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(browser, "chromium_path", lambda: None)
    assert browser.main(_args(tmp_path / "b.json")) == 2
    assert "chromium is not installed" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_missing_playwright_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(browser, "chromium_path", lambda: Path("/bin/true"))
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # import fails
    assert browser.main(_args(tmp_path / "b.json")) == 2
    assert "Playwright is not installed" in capsys.readouterr().err


def test_frames_missed_and_presented_come_from_the_counters() -> None:
    assert browser.frame_counts([10, 11, 13, 13, 16]) == {
        "frames_unique": 4,
        "frames_missed": 3,  # 12, 14, 15
        "frames_repeated": 1,
    }
    samples = [{"presentedFrames": n} for n in (5, 6, 8, 1, 2)]  # a new video element at 1
    assert browser.frames_presented(samples) == 1 + 1 + 2 + 0 + 1


@pytest.mark.integration
@pytest.mark.browser
@pytest.mark.slow
def test_bench_browser_writes_its_json(tmp_path: Path, state_dir: Path) -> None:
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser benchmark: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed here (apt-get install chromium)")
    out = tmp_path / "browser.json"
    run = subprocess.run(
        [sys.executable, "-m", "orstream.cli.main", "bench", "browser",
         "--seconds", "3", "--warmup", "1", "--resolution", "640x360", "--fps", "25",
         "--json", str(out)],
        timeout=240, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["name"] == "browser"
    config = report["config"]
    assert (config["resolution"], config["fps"], config["seconds"]) == ("640x360", 25.0, 3.0)
    assert config["chromium"].startswith("Chromium")
    results = report["results"]
    g2g = results["glass_to_glass_ms"]
    assert results["frames"] == g2g["n"] > 0
    assert 0 < g2g["p50"] <= g2g["p95"] <= g2g["p99"] <= g2g["max"]
    assert results["frames_expected"] == 75
    assert results["frames_unique"] + results["frames_repeated"] == results["frames"]
    assert results["frames_missed"] >= 0
    assert results["cpu_cores"]["chromium"] > 0
    assert results["cpu_cores"]["stack_by_process"]["encoder"] > 0
    inbound = results["webrtc_inbound_video"]
    assert inbound and inbound[0]["frames_decoded"] > 0
