"""libx264 through PyAV, set up for live WebRTC: zero latency, constrained baseline, IDR ≥ 1/s."""

from __future__ import annotations

from orstream.encoder.codec import VIDEO_CLOCK_HZ, EncodedAccessUnit, VideoEncoder

__all__ = ["VIDEO_CLOCK_HZ", "EncodedAccessUnit", "H264Encoder"]


class H264Encoder(VideoEncoder):
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
        options = {
            "preset": preset,
            "tune": "zerolatency",
            "profile": "baseline",  # x264 baseline is constrained baseline (42c0xx)
            "forced-idr": "1",
            "x264-params": (
                f"keyint={keyint}:min-keyint={keyint}:scenecut=0:repeat-headers=1"
                f":vbv-maxrate={kbps}:vbv-bufsize={max(kbps // 2, 1)}:nal-hrd=none"
            ),
        }
        super().__init__("libx264", width, height, fps, bitrate_bps, threads, options)
