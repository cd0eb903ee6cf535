"""Real H.264 for the fan-out bench, encoded once ahead of time and replayed live on NATS.

The synthetic endoscope (``testpattern``: smooth tissue, vessels, a slow pan) is encoded with the
encoder service's own libx264 settings (ultrafast, zerolatency, constrained baseline, IDR every
GOP, VBV-capped), then :class:`AccessUnitReplay` publishes the AUs on ``.enc.src`` at the frame
rate with the headers the encoder would send (:class:`AccessUnitMeta`), looping the clip. A
``.keyframe`` request makes the replay jump to the next IDR of the clip, as an encoder forcing
one would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt
from nats.aio.msg import Msg

from orstream.common.bus import Bus
from orstream.common.messages import AccessUnitMeta
from orstream.common.subjects import SOURCE_RENDITION, StreamId
from orstream.encoder.codec import VIDEO_CLOCK_HZ, EncodedAccessUnit
from orstream.encoder.h264 import H264Encoder
from orstream.ingest.testpattern import TestPattern

log = logging.getLogger(__name__)

Picture = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Clip:
    width: int
    height: int
    fps: float
    bitrate_bps: int
    gop_s: float
    units: list[EncodedAccessUnit]

    @property
    def keyframe_bytes(self) -> float:
        sizes = [len(u.data) for u in self.units if u.key]
        return sum(sizes) / len(sizes) if sizes else 0.0

    @property
    def mean_bytes(self) -> float:
        return sum(len(u.data) for u in self.units) / len(self.units)

    @property
    def bitrate_mbps(self) -> float:
        return self.mean_bytes * 8 * self.fps / 1e6


def pictures(width: int, height: int, fps: float, count: int) -> list[Picture]:
    """``count`` consecutive frames of the test pattern as I420 arrays (``height * 3/2`` rows)."""
    pattern = TestPattern(width, height, fps)
    out: list[Picture] = []
    for seq in range(count):
        picture = np.empty((height * 3 // 2, width), dtype=np.uint8)
        pattern.render(seq, time.time_ns(), picture.data.cast("B"))
        out.append(picture)
    return out


def video_frame(picture: Picture, pts: int) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
    frame.pts = pts
    return frame


def encode_clip(
    width: int, height: int, fps: float, seconds: float, bitrate_bps: int, gop_s: float
) -> Clip:
    """Encode ``seconds`` of the test pattern (a whole number of GOPs) once."""
    gop = max(1, round(fps * gop_s))
    frames = max(gop, round(seconds * fps) // gop * gop)
    pattern = TestPattern(width, height, fps)
    encoder = H264Encoder(width, height, fps, bitrate_bps, gop_s)
    picture = np.empty((height * 3 // 2, width), dtype=np.uint8)
    units: list[EncodedAccessUnit] = []
    for seq in range(frames):
        pattern.render(seq, time.time_ns(), picture.data.cast("B"))
        pts = round(seq * VIDEO_CLOCK_HZ / fps)
        units.extend(encoder.encode(video_frame(picture, pts), False))
    encoder.close()
    if not units or not units[0].key:
        raise RuntimeError("the encoded clip does not start with an IDR")
    return Clip(width, height, fps, bitrate_bps, gop_s, units)


class AccessUnitReplay:
    """Publishes a clip's AUs on a stream's ``.enc.src`` at its frame rate, looping."""

    def __init__(self, bus: Bus, stream: StreamId, clip: Clip) -> None:
        self.bus = bus
        self.stream = stream
        self.clip = clip
        #: AUs published so far, and the keyframe requests that made the clip jump.
        self.published = 0
        self.keyframe_jumps = 0
        self._jump = False
        self._keys = [i for i, u in enumerate(clip.units) if u.key]

    async def run(self, stop: asyncio.Event) -> None:
        async def on_keyframe(_: Msg) -> None:
            self._jump = True

        sub = await self.bus.subscribe(self.stream.keyframe(), on_keyframe)
        subject = self.stream.encoded(SOURCE_RENDITION)
        units = self.clip.units
        interval_s = 1.0 / self.clip.fps
        index = 0
        seq = 0
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                if self._jump:
                    self._jump = False
                    if not units[index].key:
                        index = next((k for k in self._keys if k > index), 0)
                        self.keyframe_jumps += 1
                unit = units[index]
                now_ns = time.time_ns()
                meta = AccessUnitMeta(
                    seq=seq,
                    pts=round(seq * VIDEO_CLOCK_HZ / self.clip.fps),
                    key=unit.key,
                    codec="h264",
                    capture_ns=now_ns,
                    notified_ns=now_ns,
                    published_ns=time.time_ns(),
                )
                await self.bus.publish(subject, unit.data, meta.to_headers())
                self.published += 1
                seq += 1
                index = (index + 1) % len(units)
                next_at += interval_s
                delay = next_at - time.monotonic()
                if delay < -interval_s:  # fell behind (a busy machine): stay live, skip
                    next_at = time.monotonic()
                    delay = 0.0
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
        finally:
            await sub.unsubscribe()
