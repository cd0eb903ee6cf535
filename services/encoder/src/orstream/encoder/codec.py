"""What every video encoder here shares: the 90 kHz RTP clock, the encoded access unit, and a
PyAV codec context set up for one live stream (size, rate, bitrate, threads; I420 in)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import av
from av.video.frame import PictureType

#: RTP video clock: pts of access units are in 90 kHz units.
VIDEO_CLOCK_HZ = 90_000
TIME_BASE = Fraction(1, VIDEO_CLOCK_HZ)


@dataclass(frozen=True, slots=True)
class EncodedAccessUnit:
    data: bytes
    pts: int
    key: bool


class VideoEncoder:
    """One encoder for one stream and rendition; not thread-safe, owned by one thread.

    Subclasses name the PyAV ``codec_name`` and the codec's own ``options``.
    """

    codec = ""

    def __init__(
        self,
        codec_name: str,
        width: int,
        height: int,
        fps: float,
        bitrate_bps: int,
        threads: int,
        options: dict[str, str],
        gop_size: int | None = None,
    ) -> None:
        self._ctx = cast("av.VideoCodecContext", av.CodecContext.create(codec_name, "w"))
        self._ctx.width = width
        self._ctx.height = height
        self._ctx.pix_fmt = "yuv420p"
        self._ctx.time_base = TIME_BASE
        self._ctx.framerate = Fraction(fps).limit_denominator(1001)
        self._ctx.bit_rate = bitrate_bps
        self._ctx.thread_count = threads
        if gop_size is not None:
            self._ctx.gop_size = gop_size
        self._ctx.options = options
        self._ctx.open()

    def encode(self, frame: av.VideoFrame, force_keyframe: bool) -> list[EncodedAccessUnit]:
        """Encode one frame (pts already set); the codec releases the GIL while it works."""
        frame.pict_type = PictureType.I if force_keyframe else PictureType.NONE
        return [
            EncodedAccessUnit(bytes(packet), int(packet.pts or 0), bool(packet.is_keyframe))
            for packet in self._ctx.encode(frame)
        ]

    def close(self) -> None:
        """Flush the encoder (no more frames follow)."""
        self._ctx.encode(None)
