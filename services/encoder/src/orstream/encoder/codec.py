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


class EncoderOpenError(RuntimeError):
    """The codec would not open with these parameters (missing device, bad size, …)."""


class VideoEncoder:
    """One encoder for one stream and rendition; not thread-safe, owned by one thread.

    Subclasses name the PyAV ``codec_name`` and the codec's own ``options``. Frames come in as
    I420; an implementation that wants another layout (``pix_fmt``) gets them converted here.
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
        pix_fmt: str = "yuv420p",
    ) -> None:
        self.implementation = codec_name
        self.width = width
        self.height = height
        self.bitrate_bps = bitrate_bps
        try:
            self._ctx = cast("av.VideoCodecContext", av.CodecContext.create(codec_name, "w"))
        except ValueError as exc:  # av's UnknownCodecError
            raise EncoderOpenError(f"{codec_name} is not in this FFmpeg build") from exc
        self._ctx.width = width
        self._ctx.height = height
        self._ctx.pix_fmt = pix_fmt
        self._ctx.time_base = TIME_BASE
        self._ctx.framerate = Fraction(fps).limit_denominator(1001)
        self._ctx.bit_rate = bitrate_bps
        self._ctx.thread_count = threads
        if gop_size is not None:
            self._ctx.gop_size = gop_size
        self._ctx.options = options
        try:
            self._ctx.open()
        except (av.FFmpegError, ValueError) as exc:
            raise EncoderOpenError(
                f"{codec_name} {width}x{height} @ {bitrate_bps // 1000} kbit/s did not open: {exc}"
            ) from exc

    def encode(self, frame: av.VideoFrame, force_keyframe: bool) -> list[EncodedAccessUnit]:
        """Encode one frame (pts already set); the codec releases the GIL while it works."""
        if frame.format.name != self._ctx.pix_fmt:
            pts = frame.pts
            frame = frame.reformat(format=self._ctx.pix_fmt)
            frame.pts = pts
        frame.pict_type = PictureType.I if force_keyframe else PictureType.NONE
        return [
            EncodedAccessUnit(bytes(packet), int(packet.pts or 0), bool(packet.is_keyframe))
            for packet in self._ctx.encode(frame)
        ]

    def close(self) -> None:
        """Flush the encoder (no more frames follow)."""
        self._ctx.encode(None)
