"""libvpx VP8 through PyAV, set up for live WebRTC: realtime deadline, no lag, keyframes ≥ 1/s."""

from __future__ import annotations

from fractions import Fraction

import av
from av.video.frame import PictureType

from orstream.encoder.h264 import TIME_BASE, EncodedAccessUnit

#: libvpx speed for the realtime deadline: higher is faster and coarser (VP8: 0-16).
DEFAULT_CPU_USED = 10


class VP8Encoder:
    """One libvpx encoder for one stream and rendition; not thread-safe, owned by one thread."""

    codec = "vp8"

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        bitrate_bps: int,
        keyframe_interval_s: float,
        cpu_used: int = DEFAULT_CPU_USED,
        threads: int = 0,
    ) -> None:
        keyint = max(1, round(fps * keyframe_interval_s))
        self._ctx = av.CodecContext.create("libvpx", "w")
        self._ctx.width = width
        self._ctx.height = height
        self._ctx.pix_fmt = "yuv420p"
        self._ctx.time_base = TIME_BASE
        self._ctx.framerate = Fraction(fps).limit_denominator(1001)
        self._ctx.bit_rate = bitrate_bps
        self._ctx.gop_size = keyint
        self._ctx.thread_count = threads
        self._ctx.options = {
            "deadline": "realtime",
            "cpu-used": str(cpu_used),
            "lag-in-frames": "0",
            "error-resilient": "1",
            "auto-alt-ref": "0",
            "static-thresh": "0",
            "undershoot-pct": "95",
            "overshoot-pct": "5",
            "buf-initial": "300",
            "buf-optimal": "400",
            "buf-size": "500",
            "qmin": "4",
            "qmax": "56",
        }
        self._ctx.open()

    def encode(self, frame: av.VideoFrame, force_keyframe: bool) -> list[EncodedAccessUnit]:
        """Encode one frame (pts already set)."""
        frame.pict_type = PictureType.I if force_keyframe else PictureType.NONE
        return [
            EncodedAccessUnit(bytes(packet), int(packet.pts or 0), bool(packet.is_keyframe))
            for packet in self._ctx.encode(frame)
        ]

    def close(self) -> None:
        """Flush the encoder (no more frames follow)."""
        self._ctx.encode(None)
