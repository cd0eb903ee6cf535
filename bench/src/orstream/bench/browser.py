"""``orstream bench browser``: glass-to-glass latency in a real Chromium, read from the timecode.

Starts the stack (embedded NATS; ingest with the synthetic endoscope, encoder, edge, viewer) and
opens the viewer web app in Debian's Chromium, headless, driven by Playwright, with a surgeon
token. The page does what it does for every viewer: for each frame it renders
(``requestVideoFrameCallback``) it reads the burned-in timecode back from a canvas; because the
bench sets ``globalThis.orstreamSamples`` before the page loads, it also records each frame as
``{stream, seq, glassToGlassMs}``: capture → the time the compositor expects to show the frame.
Decode, Chromium's jitter buffer and its compositor are included; with no GPU, decode is in
software. The bench drains the array once a second, after a warm-up, for ``--seconds``.

The bench also wraps ``requestVideoFrameCallback`` (before the page's own scripts run) to add
the rest of the callback's metadata to each sample the page records, so the report can split
the figure into capture → last packet received, received → expected display, and the
compositor's share (callback → expected display).

CPU is read from ``/proc`` over the same window, per process tree::

    bench (this process) ─┬─ Playwright driver (node) ── chromium: browser, GPU, renderer, …
                          └─ stack: nats-server, ingest, encoder (+ worker), signaling, viewer
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orstream.bench.proctree import process_table, tree_cpu_s
from orstream.bench.report import write_report
from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig, StackError
from orstream.common.telemetry import percentiles
from orstream.viewer.chromium import CHROMIUM_ARGS, chromium_path

if TYPE_CHECKING:
    from playwright.sync_api import Page

DEFAULT_RESOLUTION = "1280x720"
DEFAULT_FPS = 50.0
DEFAULT_WARMUP_S = 3.0
VIEWPORT_WIDTH, VIEWPORT_HEIGHT = 1280, 820
#: Stack up, page loaded, signed in, WHEP answered, first frame decoded and read.
FIRST_SAMPLE_TIMEOUT_S = 60.0
#: The page's sample array is drained this often, so it never grows without bound.
DRAIN_INTERVAL_S = 1.0
VERSION_TIMEOUT_S = 10.0
DRAIN = "globalThis.orstreamSamples.splice(0)"
#: How far the page's high-resolution clock (timeOrigin + now(), which glass-to-glass uses) is
#: from its wall clock (Date.now(), the clock the timecode's capture times are on).
CLOCK_OFFSET = "Date.now() - (performance.timeOrigin + performance.now())"

# Runs in the page before its own scripts: the sample array the viewer app fills; a wrapper
# around requestVideoFrameCallback that adds the callback's timing metadata to each sample the
# app pushed during that callback; and a list of the page's peer connections, for their
# receive statistics. The app itself is not changed.
INIT_SCRIPT = """
(() => {
  globalThis.orstreamSamples = [];
  const Peer = globalThis.RTCPeerConnection;
  if (Peer) {
    const peers = (globalThis.orstreamPeers = []);
    globalThis.RTCPeerConnection = class extends Peer {
      constructor(...args) {
        super(...args);
        peers.push(this);
      }
    };
  }
  const original = HTMLVideoElement.prototype.requestVideoFrameCallback;
  if (!original) return;
  HTMLVideoElement.prototype.requestVideoFrameCallback = function (callback) {
    return original.call(this, (now, metadata) => {
      const samples = globalThis.orstreamSamples;
      const before = samples ? samples.length : 0;
      const start = performance.now();
      try {
        return callback(now, metadata);
      } finally {
        if (samples && samples.length > before) {
          const shown = metadata.expectedDisplayTime;
          const sample = samples[samples.length - 1];
          sample.presentedFrames = metadata.presentedFrames;
          sample.callbackToDisplayMs = shown - now;
          sample.callbackMs = performance.now() - start;
          if (metadata.receiveTime) sample.receiveToDisplayMs = shown - metadata.receiveTime;
          if (metadata.presentationTime)
            sample.presentationToDisplayMs = shown - metadata.presentationTime;
          if (metadata.processingDuration !== undefined)
            sample.processingMs = metadata.processingDuration * 1000;
        }
      }
    });
  };
})();
"""

# Every inbound video RTP stream of the page's open peer connections (W3C webrtc-stats).
INBOUND_STATS = """
async () => {
  const out = [];
  for (const pc of globalThis.orstreamPeers || []) {
    if (pc.connectionState === "closed") continue;
    (await pc.getStats()).forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") out.push(s);
    });
  }
  return out;
}
"""


class BenchError(RuntimeError):
    """The benchmark cannot run or measured nothing; the message says why."""


@dataclass
class Window:
    """What the page recorded and the processes spent over the measured window."""

    seconds: float
    samples: list[dict[str, Any]]
    browser_cpu_s: float
    stack_cpu_s: dict[str, float]
    page_clock_offset_ms: list[float]
    #: The page's inbound video RTP statistics at the start and the end of the window.
    inbound: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    page_errors: list[str] = field(default_factory=list)


def require_browser() -> Path:
    """Debian's chromium and Playwright, or a :class:`BenchError` that says what is missing."""
    chromium = chromium_path()
    if chromium is None:
        raise BenchError(
            "Debian's chromium is not installed here (apt-get install chromium); "
            "Playwright drives it and never downloads a browser"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise BenchError(
            f"Playwright is not installed ({exc}); it is in the workspace's dev dependency "
            "group: uv sync --locked --group dev"
        ) from exc
    return chromium


def chromium_version(chromium: Path) -> str:
    """``chromium --version`` (Debian's launcher script may complain on stderr; ignored)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        run = subprocess.run(
            [str(chromium), "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
        )
        return run.stdout.strip()
    return ""


def _stack_roots(stack: Stack) -> dict[str, int]:
    roots = {p.name: p.popen.pid for p in stack.processes}
    if stack.nats is not None:
        roots["nats-server"] = stack.nats.popen.pid
    return roots


def _cpu_reading(stack: Stack) -> tuple[float, dict[str, float]]:
    """CPU seconds so far of Chromium's processes and of each of the stack's."""
    table = process_table()
    roots = _stack_roots(stack)
    stack_pids = set(roots.values())
    # This process's other children are Playwright's driver; Chromium runs below it.
    drivers = {s.pid for s in table.values() if s.ppid == os.getpid() and s.pid not in stack_pids}
    browsers = [s.pid for s in table.values() if s.ppid in drivers]
    return tree_cpu_s(table, browsers), {
        name: tree_cpu_s(table, [pid]) for name, pid in roots.items()
    }


def _page_state(page: Page) -> str:
    """What the viewer shows, for an error message."""
    with contextlib.suppress(Exception):
        text: str = page.evaluate("document.body.innerText")
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())[:500]
    return "(page unreadable)"


def measure(page: Page, stack: Stack, url: str, warmup_s: float, seconds: float) -> Window:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.add_init_script(INIT_SCRIPT)
    page.goto(url)
    try:
        page.wait_for_function(
            "globalThis.orstreamSamples.length > 0", timeout=FIRST_SAMPLE_TIMEOUT_S * 1000
        )
    except PlaywrightTimeout:
        raise BenchError(
            f"the viewer recorded no frame in {FIRST_SAMPLE_TIMEOUT_S:g} s; "
            f"page: {_page_state(page)}; errors: {errors[:5]}"
        ) from None
    warmup_end = time.monotonic() + warmup_s
    while (left := warmup_end - time.monotonic()) > 0:
        page.wait_for_timeout(min(left, DRAIN_INTERVAL_S) * 1000)
        page.evaluate(DRAIN)
    offsets = [float(page.evaluate(CLOCK_OFFSET))]
    page.evaluate(DRAIN)
    inbound0: list[dict[str, Any]] = page.evaluate(INBOUND_STATS)
    browser0, stack0 = _cpu_reading(stack)
    t0 = time.monotonic()
    samples: list[dict[str, Any]] = []
    while (left := t0 + seconds - time.monotonic()) > 0:
        page.wait_for_timeout(min(left, DRAIN_INTERVAL_S) * 1000)
        samples += page.evaluate(DRAIN)
    browser1, stack1 = _cpu_reading(stack)
    window_s = time.monotonic() - t0
    inbound1: list[dict[str, Any]] = page.evaluate(INBOUND_STATS)
    offsets.append(float(page.evaluate(CLOCK_OFFSET)))
    return Window(
        seconds=window_s,
        samples=samples,
        browser_cpu_s=browser1 - browser0,
        stack_cpu_s={name: stack1[name] - stack0.get(name, 0.0) for name in stack1},
        page_clock_offset_ms=[round(o, 3) for o in offsets],
        inbound=(inbound0, inbound1),
        page_errors=errors[:10],
    )


def summary(values: list[float]) -> dict[str, float]:
    """p50/p95/p99 and n, with the mean and the maximum."""
    out = percentiles(values)
    if values:
        out["mean"] = round(statistics.fmean(values), 3)
        out["max"] = round(max(values), 3)
    return out


def frame_counts(seqs: list[int]) -> dict[str, int]:
    """Frames shown and missed, from the timecodes' sequence numbers (gaps between the first
    and the last; a frame whose timecode could not be read counts as missed)."""
    unique = set(seqs)
    if not unique:
        return {"frames_unique": 0, "frames_missed": 0, "frames_repeated": 0}
    span = max(unique) - min(unique) + 1
    return {
        "frames_unique": len(unique),
        "frames_missed": span - len(unique),
        "frames_repeated": len(seqs) - len(unique),
    }


def frames_presented(samples: list[dict[str, Any]]) -> int:
    """Frames Chromium handed to its compositor while the samples were taken (the callbacks'
    ``presentedFrames``); the callback runs at most once per rendering step, so it can be more
    than the samples."""
    counts = [int(s["presentedFrames"]) for s in samples if "presentedFrames" in s]
    if not counts:
        return 0
    return 1 + sum(max(0, b - a) for a, b in itertools.pairwise(counts))


def _per_frame_ms(total_s: float, frames: float) -> float | None:
    return round(1000 * total_s / frames, 3) if frames else None


def inbound_window(
    before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """What each inbound video stream did over the window, from Chromium's ``getStats()``."""
    start = {s["id"]: s for s in before}
    out: list[dict[str, Any]] = []
    for end in after:
        s0 = start.get(end["id"], {})

        def delta(key: str, end: dict[str, Any] = end, s0: dict[str, Any] = s0) -> float:
            return float(end.get(key, 0)) - float(s0.get(key, 0))

        emitted, decoded = delta("jitterBufferEmittedCount"), delta("framesDecoded")
        out.append(
            {
                "decoder": end.get("decoderImplementation"),
                "frame_size": f"{end.get('frameWidth')}x{end.get('frameHeight')}",
                "frames_received": round(delta("framesReceived")),
                "frames_decoded": round(decoded),
                "frames_dropped": round(delta("framesDropped")),
                "freezes": round(delta("freezeCount")),
                "packets_received": round(delta("packetsReceived")),
                "packets_lost": round(delta("packetsLost")),
                "nacks_sent": round(delta("nackCount")),
                "plis_sent": round(delta("pliCount")),
                # Means over the window: time in the jitter buffer (first packet → decoder),
                # Chromium's target for it, decode, and first packet → decoded.
                "jitter_buffer_ms_mean": _per_frame_ms(delta("jitterBufferDelay"), emitted),
                "jitter_buffer_target_ms_mean": _per_frame_ms(
                    delta("jitterBufferTargetDelay"), emitted
                ),
                "decode_ms_mean": _per_frame_ms(delta("totalDecodeTime"), decoded),
                "processing_ms_mean": _per_frame_ms(delta("totalProcessingDelay"), decoded),
            }
        )
    return out


def breakdown(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Where the glass-to-glass time goes, from the callbacks' metadata (where Chromium gave it)."""
    received = [s for s in samples if "receiveToDisplayMs" in s]
    return {
        "capture_to_received": summary(
            [s["glassToGlassMs"] - s["receiveToDisplayMs"] for s in received]
        ),
        "received_to_expected_display": summary([s["receiveToDisplayMs"] for s in received]),
        "presented_to_expected_display": summary(
            [s["presentationToDisplayMs"] for s in samples if "presentationToDisplayMs" in s]
        ),
        "callback_to_expected_display": summary(
            [s["callbackToDisplayMs"] for s in samples if "callbackToDisplayMs" in s]
        ),
        "decode_processing": summary([s["processingMs"] for s in samples if "processingMs" in s]),
        "page_callback": summary([s["callbackMs"] for s in samples if "callbackMs" in s]),
    }


def run(args: argparse.Namespace, chromium: Path) -> dict[str, Any]:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    version = chromium_version(chromium)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="orstream-bench-browser-") as tmp:
        config = StackConfig(
            source=f"testpattern:?size={args.resolution}&fps={args.fps:g}",
            state_dir=Path(tmp) / "state",
            log_dir=Path(tmp) / "logs",
            ice_host_addresses=["127.0.0.1"],
            services=("ingest", "encoder", "signaling", "viewer"),
        )
        os.environ["ORSTREAM_STATE_DIR"] = str(config.state_dir)  # make_token and the edge
        try:
            with Stack(config) as stack, sync_playwright() as p:
                token = make_token("surgeon", [f"{config.site}/*"])
                browser = p.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
                try:
                    version = version or browser.version
                    page = browser.new_page(
                        viewport={"width": VIEWPORT_WIDTH, "height": VIEWPORT_HEIGHT}
                    )
                    window = measure(
                        page, stack, f"{stack.viewer_url}/#token={token}", args.warmup, args.seconds
                    )
                finally:
                    browser.close()
        except StackError as exc:
            raise BenchError(f"the stack did not start: {exc}") from exc
        except PlaywrightError as exc:
            raise BenchError(f"Chromium via Playwright failed: {exc}") from exc
    load_after = os.getloadavg()[0]
    return report(args, config, stack, window, version, (load_before, load_after))


def report(
    args: argparse.Namespace,
    config: StackConfig,
    stack: Stack,
    window: Window,
    chromium: str,
    load: tuple[float, float],
) -> dict[str, Any]:
    seen = Counter(str(s.get("stream", "")) for s in window.samples)
    # The stack's source feeds the room's first stream; count only that one. A page that does
    # not label its samples (stream "") counts as showing just that one.
    stream = stack.stream.stream if stack.stream.stream in seen else next(iter(seen), "")
    samples = [s for s in window.samples if str(s.get("stream", "")) == stream]
    counts = frame_counts([int(s["seq"]) for s in samples])
    stack_cores = {name: round(cpu / window.seconds, 3) for name, cpu in window.stack_cpu_s.items()}
    return {
        "name": "browser",
        "config": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "resolution": args.resolution,
            "fps": args.fps,
            "source": config.source,
            "chromium": chromium,
            "chromium_args": list(CHROMIUM_ARGS),
            "viewport": f"{VIEWPORT_WIDTH}x{VIEWPORT_HEIGHT}",
            "measured": "timecode capture → requestVideoFrameCallback expectedDisplayTime, "
            "read back from a canvas in the viewer web app",
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            # Other work on the machine shows in the latencies.
            "load_average_1m": [round(load[0], 2), round(load[1], 2)],
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "results": {
            "glass_to_glass_ms": summary([float(s["glassToGlassMs"]) for s in samples]),
            "frames": len(samples),
            "frames_expected": round(args.fps * args.seconds),
            **counts,
            "frames_presented": frames_presented(samples),
            "stream": stream,
            "streams_seen": dict(seen),
            "window_s": round(window.seconds, 3),
            "breakdown_ms": breakdown(samples),
            "webrtc_inbound_video": inbound_window(*window.inbound),
            "cpu_cores": {
                "chromium": round(window.browser_cpu_s / window.seconds, 3),
                "stack": round(sum(stack_cores.values()), 3),
                "stack_by_process": stack_cores,
            },
            "page_clock_offset_ms": window.page_clock_offset_ms,
            "page_errors": window.page_errors,
        },
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main(args: argparse.Namespace) -> int:
    try:
        chromium = require_browser()
    except BenchError as exc:
        print(f"orstream bench browser: {exc}", file=sys.stderr)
        return 2
    try:
        result = run(args, chromium)
    except BenchError as exc:
        print(f"orstream bench browser: {exc}", file=sys.stderr)
        return 1
    write_report(result, args.json_path)
    if not result["results"]["frames"]:
        print("orstream bench browser: no frame measured in the window", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(
        main(
            argparse.Namespace(
                seconds=10.0,
                warmup=DEFAULT_WARMUP_S,
                resolution=DEFAULT_RESOLUTION,
                fps=DEFAULT_FPS,
                json_path="browser.json",
            )
        )
    )
