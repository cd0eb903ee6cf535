"""``orstream up``'s stack played in a real browser: Debian's Chromium driven by Playwright.

Runs wherever ``/usr/bin/chromium`` exists (CI installs it); screenshots go to ``artifacts/``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed here (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def stack(nats_url: str, state_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    config = StackConfig(
        site=f"br{uuid.uuid4().hex[:6]}",
        nats_url=nats_url,
        state_dir=state_dir,
        log_dir=tmp_path / "logs",
        source="testpattern:?size=1280x720&fps=50",
        ice_host_addresses=["127.0.0.1"],
    )
    with Stack(config) as s:
        yield s


def test_viewer_plays_live_video_with_a_readable_timecode(
    browser, stack: Stack, state_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    token = make_token("surgeon", [f"{stack.config.site}/*"])
    page = browser.new_page(viewport={"width": 1280, "height": 820})
    try:
        page.goto(f"{stack.viewer_url}/#token={token}")
        page.wait_for_function("Number(document.body.dataset.lastSeq) > 0", timeout=30_000)
        first = int(page.evaluate("document.body.dataset.lastSeq"))
        time.sleep(2.0)
        later = int(page.evaluate("document.body.dataset.lastSeq"))
        assert later - first >= 25, f"frames did not advance: {first} → {later} in 2 s at 50 fps"
        assert page.inner_text("#role") == "Identified"
        assert page.inner_text("#state") == "connected"
        assert "token=" not in page.url, "the token must not stay in the address bar"
        latency = page.inner_text("#latency")
        assert latency.isdigit(), latency
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "viewer-playing.png"))
    finally:
        page.close()


def test_forbidden_room_shows_a_clear_message(browser, stack: Stack, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    token = make_token("student", ["othersite/*"])
    page = browser.new_page()
    try:
        page.goto(f"{stack.viewer_url}/#token={token}")
        page.wait_for_selector("#message:not([hidden])", timeout=15_000)
        assert "No stream you may watch" in page.inner_text("#message")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "viewer-forbidden.png"))
    finally:
        page.close()


def test_bad_token_is_refused_with_the_reason(browser, stack: Stack, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page()
    try:
        page.goto(f"{stack.viewer_url}/#token=not-a-token")
        page.wait_for_selector("#message:not([hidden])", timeout=15_000)
        text = page.inner_text("#message")
        assert "401" in text and "token malformed" in text, text
        assert page.is_visible("#signin")
    finally:
        page.close()
