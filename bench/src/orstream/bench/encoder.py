"""``orstream bench encoder``: encoded frames per core and encode latency, per codec and size.

Content is the synthetic endoscope (smooth tissue, vessels, panning: realistic motion, not
noise), rendered once per size and fed in order with advancing timestamps. Two passes per codec
and size:

- throughput: one encoder thread, as many frames as it takes; ``fps_per_core`` is frames per
  CPU-second of this process (so two 720p50 streams per core means ``fps_per_core`` ≥ 100);
- latency: the service's own settings (encoder threads chosen by the codec), one frame per frame
  interval like a live stream; ``encode_ms`` is the wall time of each ``encode`` call.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

import av

from orstream.bench.report import write_report
from orstream.common.telemetry import percentiles
from orstream.encoder.codec import VIDEO_CLOCK_HZ, VideoEncoder
from orstream.encoder.h264 import H264Encoder
from orstream.encoder.settings import DEFAULT_BITRATE_BPS, DEFAULT_KEYFRAME_INTERVAL_S
from orstream.encoder.vp8 import VP8Encoder
from orstream.ingest.testpattern import TestPattern

CASES = (("h264", 1280, 720), ("vp8", 1280, 720), ("h264", 1920, 1080), ("vp8", 1920, 1080))
FPS = 50.0
#: Distinct pictures rendered per size (then reused in order; the pan keeps moving).
PICTURES = 100
BITRATE_1080P_BPS = 8_000_000


def _encoder(codec: str, width: int, height: int, threads: int) -> VideoEncoder:
    bitrate = DEFAULT_BITRATE_BPS if height <= 720 else BITRATE_1080P_BPS
    if codec == "h264":
        return H264Encoder(
            width, height, FPS, bitrate, DEFAULT_KEYFRAME_INTERVAL_S, threads=threads
        )
    return VP8Encoder(width, height, FPS, bitrate, DEFAULT_KEYFRAME_INTERVAL_S, threads=threads)


def _pictures(width: int, height: int, count: int) -> list[av.VideoFrame]:
    pattern = TestPattern(width, height, FPS)
    out: list[av.VideoFrame] = []
    buf = bytearray(pattern.format.frame_bytes)
    for seq in range(count):
        pattern.render(seq, time.time_ns(), memoryview(buf))
        frame = av.VideoFrame(width, height, "yuv420p")
        offset = 0
        for plane, (w, h) in zip(
            frame.planes,
            ((width, height), (width // 2, height // 2), (width // 2, height // 2)),
            strict=True,
        ):
            for row in range(h):
                start = row * plane.line_size
                memoryview(plane)[start : start + w] = buf[offset + row * w : offset + row * w + w]
            offset += w * h
        out.append(frame)
    return out


def _throughput(codec: str, pictures: list[av.VideoFrame], frames: int) -> dict[str, Any]:
    first = pictures[0]
    encoder = _encoder(codec, first.width, first.height, threads=1)
    nbytes = 0
    cpu0 = time.process_time()
    for n in range(frames):
        frame = pictures[n % len(pictures)]
        frame.pts = round(n * VIDEO_CLOCK_HZ / FPS)
        nbytes += sum(len(u.data) for u in encoder.encode(frame, False))
    cpu_s = time.process_time() - cpu0
    encoder.close()
    return {
        "fps_per_core": round(frames / cpu_s, 1),
        "bitrate_mbps": round(nbytes * 8 / (frames / FPS) / 1e6, 2),
    }


def _latency(codec: str, pictures: list[av.VideoFrame], frames: int) -> dict[str, float]:
    first = pictures[0]
    encoder = _encoder(codec, first.width, first.height, threads=0)
    times: list[float] = []
    interval = 1.0 / FPS
    next_at = time.monotonic()
    for n in range(frames):
        frame = pictures[n % len(pictures)]
        frame.pts = round(n * VIDEO_CLOCK_HZ / FPS)
        started = time.perf_counter()
        encoder.encode(frame, n % 50 == 25)  # a forced keyframe each second, as peers ask
        times.append((time.perf_counter() - started) * 1e3)
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    encoder.close()
    return percentiles(times)


def run(seconds: float) -> dict[str, Any]:
    frames = max(10, round(seconds * FPS))
    results: dict[str, Any] = {}
    for codec, width, height in CASES:
        pictures = _pictures(width, height, min(PICTURES, frames))
        entry = _throughput(codec, pictures, frames)
        entry["encode_ms"] = _latency(codec, pictures, frames)
        results[f"{codec}_{width}x{height}"] = entry
    return {
        "name": "encoder",
        "config": {
            "seconds": seconds,
            "fps": FPS,
            "content": "testpattern (synthetic endoscope, panning)",
            "h264": "libx264 ultrafast, zerolatency, constrained baseline",
            "vp8": "libvpx realtime, cpu-used 10",
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "results": results,
    }


def main(args: argparse.Namespace) -> int:
    report = run(args.seconds)
    write_report(report, args.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(argparse.Namespace(seconds=5, json_path="encoder.json")))
