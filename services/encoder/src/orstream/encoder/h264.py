"""libx264 through PyAV, set up for live WebRTC: zero latency, constrained baseline, IDR ≥ 1/s."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

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


class H264Encoder:
    """One libx264 encoder for one stream and rendition; not thread-safe, owned by one thread."""

    codec = "h264"

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        bitrate_bps: int,
        keyframe_interval_s: float,
        preset: str = "ultrafast",
        threads: int = 0,
    ) -> None:
        keyint = max(1, round(fps * keyframe_interval_s))
        kbps = bitrate_bps // 1000
        self._ctx = av.CodecContext.create("libx264", "w")
        self._ctx.width = width
        self._ctx.height = height
        self._ctx.pix_fmt = "yuv420p"
        self._ctx.time_base = TIME_BASE
        self._ctx.framerate = Fraction(fps).limit_denominator(1001)
        self._ctx.bit_rate = bitrate_bps
        self._ctx.thread_count = threads
        self._ctx.options = {
            "preset": preset,
            "tune": "zerolatency",
            "profile": "baseline",  # x264 baseline is constrained baseline (42c0xx)
            "forced-idr": "1",
            "x264-params": (
                f"keyint={keyint}:min-keyint={keyint}:scenecut=0:repeat-headers=1"
                f":vbv-maxrate={kbps}:vbv-bufsize={max(kbps // 2, 1)}:nal-hrd=none"
            ),
        }
        self._ctx.open()

    def encode(self, frame: av.VideoFrame, force_keyframe: bool) -> list[EncodedAccessUnit]:
        """Encode one frame (pts already set); releases the GIL inside libx264."""
        frame.pict_type = PictureType.I if force_keyframe else PictureType.NONE
        return [
            EncodedAccessUnit(bytes(packet), int(packet.pts or 0), bool(packet.is_keyframe))
            for packet in self._ctx.encode(frame)
        ]

    def close(self) -> None:
        """Flush the encoder (no more frames follow)."""
        self._ctx.encode(None)
