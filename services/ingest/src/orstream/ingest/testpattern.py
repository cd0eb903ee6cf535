"""A synthetic endoscope: moving tissue in a circular field of view, timecode burned in.

The picture is built once (smooth reddish tissue, a branching vessel network, specular
highlights), larger than the frame; each frame is a window panned along a Lissajous path, masked
to the endoscope's circle, with the frame's seq and capture time burned into the top-left corner
(:mod:`orstream.common.timecode`). With ``context=demo`` it also sends the fictitious patient
and procedure of :mod:`orstream.common.samples` as a DICOM-RTV grain once a second, so a demo
(and the viewer's tests) show patient context per role. Realistic enough that the encoder
works as hard as on real video (unlike noise or flat colour), cheap enough to generate at 50 fps
in a few milliseconds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncGenerator
from urllib.parse import parse_qs

import numpy as np
import numpy.typing as npt

from orstream.common import samples, timecode
from orstream.common.shm import RingWriter
from orstream.ingest.source import Context, RawFrame, SourceEvent, VideoFormat

log = logging.getLogger(__name__)

DEFAULT_WIDTH = 1280
DEFAULT_HEIGHT = 720
DEFAULT_FPS = 50.0
#: Pan range of the tissue behind the scope, as a fraction of the frame size.
PAN_FRACTION = 0.12
PAN_PERIOD_X_S = 7.0
PAN_PERIOD_Y_S = 4.6
SEED = 20261121
#: How often the demo context is sent (a real RTV metadata flow sends one grain per frame).
CONTEXT_INTERVAL_S = 1.0

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> F32:
    """Band-limited noise in [-1, 1]: white noise low-passed in the frequency domain."""
    noise = rng.standard_normal(shape).astype(np.float32)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    spectrum = np.fft.rfft2(noise) * np.exp(-((fx**2 + fy**2) * (scale**2)))
    field = np.fft.irfft2(spectrum, s=shape).astype(np.float32)
    field /= max(1e-6, float(np.abs(field).max()))
    return field


def _tissue(width: int, height: int) -> tuple[U8, U8, U8]:
    """Y, U, V planes (4:2:0) of the tissue texture, each a little larger than the pan range."""
    rng = np.random.default_rng(SEED)
    shape = (height, width)
    folds = _smooth_noise(rng, shape, 60.0)
    detail = _smooth_noise(rng, shape, 8.0)
    ridges = _smooth_noise(rng, shape, 25.0)
    vessels = np.exp(-((ridges / 0.045) ** 2))  # thin dark lines along the zero set
    luma = 118 + 45 * folds + 12 * detail - 55 * vessels
    highlights = _smooth_noise(rng, shape, 14.0)
    luma = np.where(highlights > 0.72, 235.0, luma)
    y = np.clip(luma, 20, 235).astype(np.uint8)
    half = (slice(0, None, 2), slice(0, None, 2))
    u = np.clip(108 - 6 * folds[half] - 4 * vessels[half], 16, 240).astype(np.uint8)
    v = np.clip(172 + 10 * folds[half] + 16 * vessels[half], 16, 240).astype(np.uint8)
    v = np.where(highlights[half] > 0.72, 128, v).astype(np.uint8)
    u = np.where(highlights[half] > 0.72, 128, u).astype(np.uint8)
    return y, u, v


class TestPattern:
    """``testpattern:[?size=WxH&fps=F&timecode=0|1&context=demo]`` — the default source."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        width: int = DEFAULT_WIDTH,
        height: int = DEFAULT_HEIGHT,
        fps: float = DEFAULT_FPS,
        burn_timecode: bool = True,
        demo_context: bool = False,
    ) -> None:
        if width % 16 or height % 2 or width < 320 or height < 180:
            raise ValueError(
                f"test pattern size {width}x{height}: width a multiple of 16, >= 320x180"
            )
        if not 1 <= fps <= 120:
            raise ValueError(f"test pattern fps {fps} out of 1..120")
        self.format = VideoFormat(width, height, fps, "yuv420p")
        self.burn_timecode = burn_timecode
        self.demo_context = demo_context
        self.description = (
            f"testpattern {width}x{height}@{fps:g}{'' if burn_timecode else ' (no timecode)'}"
            f"{' with demo context' if demo_context else ''}"
        )
        self._pan_x = int(width * PAN_FRACTION) // 2 * 2
        self._pan_y = int(height * PAN_FRACTION) // 2 * 2
        self._y, self._u, self._v = _tissue(width + 2 * self._pan_x, height + 2 * self._pan_y)
        yy, xx = np.mgrid[0:height, 0:width]
        radius = 0.49 * height
        outside = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 > radius**2
        self._outside_y = outside
        self._outside_c = outside[::2, ::2]
        self.dropped = 0

    @classmethod
    def from_url(cls, url: str) -> TestPattern:
        """Parse ``testpattern:?size=1280x720&fps=50&timecode=1&context=demo``."""
        _, _, query = url.partition(":")
        params = parse_qs(query.lstrip("?"))
        width, height, fps = DEFAULT_WIDTH, DEFAULT_HEIGHT, DEFAULT_FPS
        if "size" in params:
            w, _, h = params["size"][0].partition("x")
            width, height = int(w), int(h)
        if "fps" in params:
            fps = float(params["fps"][0])
        burn = params.get("timecode", ["1"])[0].lower() not in ("0", "false", "no", "off")
        context = params.get("context", ["none"])[0]
        if context not in ("none", "demo"):
            raise ValueError(f"test pattern context {context!r}: 'demo' or 'none'")
        return cls(width, height, fps, burn, context == "demo")

    def render(self, seq: int, capture_ns: int, out: memoryview) -> int:
        """Draw frame ``seq`` as I420 into ``out``; returns the bytes written."""
        w, h = self.format.width, self.format.height
        t = seq / self.format.fps
        ox = int(self._pan_x * (1 + math.sin(2 * math.pi * t / PAN_PERIOD_X_S))) // 2 * 2
        oy = int(self._pan_y * (1 + math.sin(2 * math.pi * t / PAN_PERIOD_Y_S))) // 2 * 2
        buf = np.frombuffer(out, dtype=np.uint8, count=self.format.frame_bytes)
        y = buf[: w * h].reshape(h, w)
        u = buf[w * h : w * h * 5 // 4].reshape(h // 2, w // 2)
        v = buf[w * h * 5 // 4 :].reshape(h // 2, w // 2)
        y[...] = self._y[oy : oy + h, ox : ox + w]
        u[...] = self._u[oy // 2 : oy // 2 + h // 2, ox // 2 : ox // 2 + w // 2]
        v[...] = self._v[oy // 2 : oy // 2 + h // 2, ox // 2 : ox // 2 + w // 2]
        np.copyto(y, 16, where=self._outside_y)
        np.copyto(u, 128, where=self._outside_c)
        np.copyto(v, 128, where=self._outside_c)
        if self.burn_timecode:
            timecode.burn(y, timecode.Timecode(seq, capture_ns))
            timecode.neutral_chroma(u, v, w)
        return self.format.frame_bytes

    def counters(self) -> dict[str, int]:
        return {"frames_skipped": self.dropped}

    async def frames(self, ring: RingWriter) -> AsyncGenerator[SourceEvent, None]:
        """Frames paced by the monotonic clock; if the consumer falls behind, skip ahead."""
        period_ns = int(1e9 / self.format.fps)
        next_context_ns = 0
        start = time.monotonic_ns()
        seq = 0
        while True:
            due = start + seq * period_ns
            now = time.monotonic_ns()
            if now < due:
                await asyncio.sleep((due - now) / 1e9)
            elif now - due > 2 * period_ns:
                behind = (now - due) // period_ns
                self.dropped += behind
                seq += behind
                log.debug("test pattern fell %d frames behind; skipping ahead", behind)
            capture_ns = time.time_ns()
            yield RawFrame(seq, capture_ns, functools.partial(self.render, seq, capture_ns))
            if self.demo_context and capture_ns >= next_context_ns:
                # By the clock, not by seq: skipping ahead under load must not skip the context.
                next_context_ns = capture_ns + int(CONTEXT_INTERVAL_S * 1e9)
                yield self.context(seq, capture_ns)
            seq += 1

    def context(self, seq: int, capture_ns: int) -> Context:
        """The demo patient's context for frame ``seq`` (every value invented)."""
        ds = samples.or_context(seq)
        return Context(
            part10=samples.rtv_grain(seq),
            capture_ns=capture_ns,
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            modality=str(ds.Modality),
            seq=seq,
        )
