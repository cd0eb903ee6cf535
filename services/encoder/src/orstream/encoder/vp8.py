"""libvpx VP8 through PyAV, set up for live WebRTC: realtime deadline, no lag, keyframes ≥ 1/s."""

from __future__ import annotations

from orstream.encoder.codec import VideoEncoder

#: libvpx speed for the realtime deadline: higher is faster and coarser (VP8: 0-16).
DEFAULT_CPU_USED = 10


class VP8Encoder(VideoEncoder):
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
        options = {
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
        keyint = max(1, round(fps * keyframe_interval_s))
        super().__init__(
            "libvpx", width, height, fps, bitrate_bps, threads, options, gop_size=keyint
        )
