"""The viewer in a real browser: Debian's Chromium driven by Playwright, against the whole stack
(every service its own process) with two streams in the room and the demo patient's context.

Runs wherever Debian's ``chromium`` is installed (CI installs it); screenshots of every view go
to ``artifacts/``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig, StreamSpec
from orstream.common import samples

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
#: Inked pixels of a tile's telestration canvas, and where their centre is (fractions).
INK = """(stream) => {
  const c = document.querySelector(`.tile[data-stream="${stream}"] canvas.ink`);
  if (!c || !c.width) return {count: 0};
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let count = 0, sx = 0, sy = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 0) {
    const p = (i - 3) / 4; count++; sx += p % c.width; sy += Math.floor(p / c.width);
  }
  return {count, x: count && sx / count / c.width, y: count && sy / count / c.height};
}"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("browser")
    config = StackConfig(
        site=f"br{uuid.uuid4().hex[:6]}",
        nats_url=nats_url,
        streams=[
            StreamSpec("endoscope", "testpattern:?size=1280x720&fps=50&context=demo"),
            StreamSpec("roomcam", "testpattern:?size=640x360&fps=25"),
        ],
        state_dir=tmp / "state",
        log_dir=tmp / "logs",
        ice_host_addresses=["127.0.0.1"],
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ORSTREAM_STATE_DIR", str(tmp / "state"))  # where make_token finds the key
        # Some frames traced, so the page answers the edge's trace requests (viewer.receipt).
        env.setenv("ORSTREAM_TRACE_SAMPLE_RATIO", "0.2")
        with Stack(config) as s:
            yield s


def token(stack: Stack, role: str, sub: str | None = None, rooms: list[str] | None = None) -> str:
    site = stack.config.site
    state = stack.config.state_dir
    assert state is not None
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ORSTREAM_STATE_DIR", str(state))
        return make_token(role, rooms or [f"{site}/*"], 600, sub)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def open_viewer(browser: Any, stack: Stack, tok: str, query: str = "", **kw: Any) -> Any:
    page = browser.new_page(viewport=kw.pop("viewport", {"width": 1600, "height": 900}), **kw)
    external: list[str] = []
    page.on(
        "request",
        lambda r: (
            urlparse(r.url).hostname not in (None, "127.0.0.1", "localhost")
            and not r.url.startswith("data:")
            and external.append(r.url)
        ),
    )
    page.external_requests = external
    page.goto(f"{stack.viewer_url}/{query}#token={tok}")
    return page


def wait_playing(page: Any, timeout_s: float = 30) -> None:
    """The main tile shows frames whose timecode the page reads, and they advance."""
    page.wait_for_function("Number(document.body.dataset.lastSeq) > 0", timeout=timeout_s * 1000)
    first = int(page.evaluate("document.body.dataset.lastSeq"))
    page.wait_for_function(f"Number(document.body.dataset.lastSeq) >= {first + 25}", timeout=10_000)


def metadata_text(page: Any) -> str:
    page.wait_for_function(
        "document.querySelector('#metadata').textContent.trim().length > 0", timeout=20_000
    )
    text: str = page.inner_text("#metadata")
    return text


def empty_values(page: Any) -> list[str]:
    """Labels of rendered rows without a value (a blank would hint at what was removed)."""
    result: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('#metadata dt')]
              .filter((dt) => !(dt.nextElementSibling?.textContent || '').trim())
              .map((dt) => dt.textContent)"""
    )
    return result


def test_a_student_watches_the_room_with_only_deidentified_context(
    browser: Any, stack: Stack
) -> None:
    page = open_viewer(browser, stack, token(stack, "student", "learner"))
    try:
        wait_playing(page)
        assert page.inner_text("#role") == "De-identified"
        assert page.inner_text("#state") == "connected"
        assert "token=" not in page.url, "the token must not stay in the address bar"
        tiles = page.eval_on_selector_all(".tile", "ts => ts.map(t => t.dataset.stream)")
        assert tiles == ["endoscope", "roomcam"], "every stream of the room, the main one first"
        page.wait_for_function(
            "document.querySelector('.tile[data-stream=roomcam]').dataset.seq > 0",
            timeout=15_000,
        )
        latency = page.inner_text(".tile.main .latency")
        assert latency.endswith(" ms") and latency[:-3].isdigit(), latency
        text = metadata_text(page)
        for value in samples.IDENTIFYING:
            assert value not in text, f"{value!r} reached the student's screen"
        assert "ORS-" in text, "the pseudonymous patient ID the profile keeps"
        assert "De-identified" in text
        assert empty_values(page) == []
        # The page reports what it measured back to the edge on the stats channel.
        deadline = time.monotonic() + 10
        receipts: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not receipts:
            detail = stack.stats("signaling")["session_detail"]
            receipts = [d["receipt"] for d in detail if d["role"] == "student" and d["receipt"]]
            time.sleep(0.5)
        assert receipts and receipts[0]["frames"] > 0, detail
        assert 0 < receipts[0]["glass_to_glass_ms"] < 2000, receipts[0]
        # Sampled frames: the page said when it showed each one the edge asked about, which
        # becomes the edge's "viewer" hop (sent → shown) and the trace's viewer.receipt span.
        deadline = time.monotonic() + 10
        viewer: dict[str, Any] = {"n": 0}
        while time.monotonic() < deadline and not viewer["n"]:
            edge = stack.stats("signaling")
            viewer = edge["streams"][stack.stream.key]["renditions"]["src"]["hops"]["viewer"]
            time.sleep(0.5)
        assert viewer["n"] > 0, edge["counters"]
        assert 0 < viewer["p50"] < 1000, viewer
        assert page.is_hidden("#tools"), "students may not draw"
        assert page.is_visible("#chat"), "students may chat"
        assert page.external_requests == [], "no CDN: hospital networks are closed"
        shot(page, "viewer-student.png")
    finally:
        page.close()


def test_an_expert_sees_the_patient_and_ops_sees_no_patient_data(
    browser: Any, stack: Stack
) -> None:
    expert = open_viewer(browser, stack, token(stack, "expert", "mentor"))
    ops = open_viewer(browser, stack, token(stack, "ops", "it-desk"))
    try:
        wait_playing(expert)
        assert expert.inner_text("#role") == "Identified"
        text = metadata_text(expert)
        assert "Rivera, Maria Elena" in text and samples.PATIENT_ID in text
        assert "Laparoscopic cholecystectomy" in text
        shot(expert, "viewer-expert.png")

        wait_playing(ops)
        assert ops.inner_text("#role") == "Technical"
        text = metadata_text(ops)
        assert "Endoscopy Co" in text, "the technical view shows the equipment"
        for value in (*samples.IDENTIFYING, "ORS-", "Patient"):
            assert value not in text, f"{value!r} reached the ops screen"
        assert empty_values(ops) == []
        assert ops.is_hidden("#tools") and ops.is_hidden("#chat")
        shot(ops, "viewer-ops.png")
    finally:
        expert.close()
        ops.close()


def test_an_experts_stroke_appears_on_the_or_wall_display(browser: Any, stack: Stack) -> None:
    display = open_viewer(
        browser,
        stack,
        token(stack, "surgeon", "or1-wall"),
        "?kiosk=1",
        viewport={"width": 1920, "height": 1080},
    )
    expert = open_viewer(browser, stack, token(stack, "expert", "mentor"))
    student = open_viewer(browser, stack, token(stack, "student", "learner"))
    try:
        for page in (display, expert, student):
            wait_playing(page)
        assert display.is_hidden("#toolbar"), "the wall display shows video, not controls"
        expert.keyboard.press("d")
        assert expert.get_attribute("[data-tool=draw]", "aria-pressed") == "true"
        box = expert.locator(".tile.main canvas.ink").bounding_box()
        assert box is not None and box["width"] > 400
        # A tick over the right half of the picture, at (0.6..0.8, 0.4..0.6).
        expert.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.4 * box["height"])
        expert.mouse.down()
        for i in range(1, 21):
            expert.mouse.move(
                box["x"] + (0.6 + 0.01 * i) * box["width"],
                box["y"] + (0.4 + 0.01 * i) * box["height"],
            )
        expert.mouse.up()
        display.wait_for_function(f"({INK})('endoscope').count > 200", timeout=10_000)
        ink = display.evaluate(f"({INK})('endoscope')")
        assert 0.6 < ink["x"] < 0.8 and 0.4 < ink["y"] < 0.6, f"stroke landed at {ink}"
        assert display.evaluate(f"({INK})('roomcam')")["count"] == 0, "only on its stream"
        # The student chats; the expert reads it with who wrote it.
        student.fill("#chat-text", "Is that the cystic duct?")
        student.press("#chat-text", "Enter")
        expert.wait_for_function(
            "document.querySelector('#chat-log').textContent.includes('cystic duct')",
            timeout=10_000,
        )
        assert "learner (student)" in expert.inner_text("#chat-log")
        shot(expert, "viewer-room.png")
        expert.screenshot(path=str(ARTIFACTS / "viewer-room.jpg"), type="jpeg", quality=82)
        shot(display, "viewer-or-display.png")
        # Clear wipes it on the wall display too.
        expert.click("#clear")
        display.wait_for_function(f"({INK})('endoscope').count === 0", timeout=10_000)
    finally:
        for page in (display, expert, student):
            page.close()


def test_layouts_and_main_stream_by_keyboard_and_drag(browser: Any, stack: Stack) -> None:
    page = open_viewer(browser, stack, token(stack, "expert", "mentor"))
    try:
        wait_playing(page)
        main = "document.querySelector('.tile.main').dataset.stream"
        assert page.evaluate(main) == "endoscope"
        page.keyboard.press("2")
        assert "layout-grid" in page.get_attribute("#stage", "class")
        assert page.get_attribute("[data-layout=grid]", "aria-pressed") == "true"
        page.keyboard.press("1")
        assert page.is_hidden(".tile[data-stream=roomcam]"), "single shows the main stream only"
        page.keyboard.press("3")
        page.focus(".tile[data-stream=roomcam]")
        page.keyboard.press("Enter")
        assert page.evaluate(main) == "roomcam"
        page.drag_and_drop(".tile[data-stream=endoscope]", ".tile.main")
        assert page.evaluate(main) == "endoscope", "dragged into the main slot"
        # Tab from the layout buttons reaches a tile; Enter on it makes it main.
        page.focus("[data-layout=single]")
        for _ in range(30):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.classList.contains('tile')"):
                break
        assert page.evaluate("document.activeElement.dataset.stream") == "endoscope"
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        assert page.evaluate(main) == "roomcam", "the thumbnail reached by Tab became main"
    finally:
        page.close()


def test_a_4k_wall_display_fills_the_screen(browser: Any, stack: Stack) -> None:
    page = open_viewer(
        browser,
        stack,
        token(stack, "surgeon", "or1-wall"),
        "?kiosk=1&layout=single",
        viewport={"width": 3840, "height": 2160},
    )
    try:
        wait_playing(page)
        video = page.locator(".tile.main video").bounding_box()
        assert video is not None and video["height"] > 1800, video
        font = page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
        assert font >= 24, "text grows with the screen"
        shot(page, "viewer-4k.png")
    finally:
        page.close()


def test_a_forbidden_room_says_so(browser: Any, stack: Stack) -> None:
    site = stack.config.site
    # Allowed or2 only: or1 is refused by the edge with its reason, not a blank page.
    page = open_viewer(
        browser, stack, token(stack, "student", rooms=[f"{site}/or2"]), f"?room={site}/or1"
    )
    try:
        page.wait_for_selector("#message:not([hidden])", timeout=15_000)
        text = page.inner_text("#message")
        assert f"You may not watch {site}/or1" in text and "403" in text, text
        assert page.is_hidden("#room")
        shot(page, "viewer-forbidden.png")
    finally:
        page.close()
    page = open_viewer(browser, stack, token(stack, "student", rooms=["othersite/*"]))
    try:
        page.wait_for_selector("#message:not([hidden])", timeout=15_000)
        assert "No room you may watch is live" in page.inner_text("#message")
    finally:
        page.close()


def test_a_bad_token_is_refused_with_the_reason(browser: Any, stack: Stack) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{stack.viewer_url}/#token=not-a-token")
        page.wait_for_selector("#message:not([hidden])", timeout=15_000)
        text = page.inner_text("#message")
        assert "401" in text and "token malformed" in text, text
        assert page.is_visible("#signin")
    finally:
        page.close()


def test_the_viewer_reconnects_when_the_edge_restarts(browser: Any, stack: Stack) -> None:
    page = open_viewer(browser, stack, token(stack, "expert", "mentor"))
    try:
        wait_playing(page)
        edge = next(p for p in stack.processes if p.name == "signaling")
        stack.stop_service(edge)
        stack.processes.remove(edge)
        page.wait_for_function(
            "document.querySelector('#state').dataset.state === 'reconnecting'", timeout=20_000
        )
        stopped_at = int(page.evaluate("document.body.dataset.lastSeq"))
        started = time.monotonic()
        stack.start_service("signaling")
        page.wait_for_function(
            "document.querySelector('#state').dataset.state === 'connected'", timeout=30_000
        )
        page.wait_for_function(
            f"Number(document.body.dataset.lastSeq) > {stopped_at + 25}", timeout=15_000
        )
        assert time.monotonic() - started < 30
        assert page.is_hidden("#message") or not page.inner_text("#message")
    finally:
        page.close()
