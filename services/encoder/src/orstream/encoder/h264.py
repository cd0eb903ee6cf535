"""H.264 for live WebRTC: libx264 (zero latency, constrained baseline unless told otherwise, IDR
at least every second) and the hardware encoders, which fall back to libx264 when absent."""

from __future__ import annotations

import logging
from functools import partial

from orstream.encoder.codec import VIDEO_CLOCK_HZ, EncodedAccessUnit, EncoderOpenError, VideoEncoder

__all__ = ["VIDEO_CLOCK_HZ", "EncodedAccessUnit", "H264Encoder", "open_h264"]

log = logging.getLogger(__name__)
_fell_back: set[str] = set()


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
        profile: str = "baseline",
        implementation: str = "libx264",
        vaapi_device: str = "",
    ) -> None:
        keyint = max(1, round(fps * keyframe_interval_s))
        kbps = bitrate_bps // 1000
        pix_fmt = "yuv420p"
        options: dict[str, str]
        if implementation == "libx264":
            # x264 signals the least profile its tools need, and ultrafast needs only baseline:
            # the higher profiles turn on what makes them worth having (CABAC, 8x8 transform).
            tools = {"baseline": "", "main": ":cabac=1", "high": ":cabac=1:8x8dct=1"}[profile]
            options = {
                "preset": preset,
                "tune": "zerolatency",
                "profile": profile,  # x264's baseline is constrained baseline (42c0xx)
                "forced-idr": "1",
                "x264-params": (
                    f"keyint={keyint}:min-keyint={keyint}:scenecut=0:repeat-headers=1"
                    f":vbv-maxrate={kbps}:vbv-bufsize={max(kbps // 2, 1)}:nal-hrd=none{tools}"
                ),
            }
        elif implementation == "h264_nvenc":
            options = {
                "preset": "p1",
                "tune": "ull",
                "zerolatency": "1",
                "delay": "0",
                "rc": "cbr",
                "profile": profile,
                "forced-idr": "1",
                "no-scenecut": "1",
                "bf": "0",
            }
        elif implementation == "h264_qsv":
            pix_fmt = "nv12"
            options = {
                "preset": "veryfast",
                "profile": profile,
                "async_depth": "1",
                "look_ahead": "0",
                "low_delay_brc": "1",
                "forced_idr": "1",
                "bf": "0",
            }
        elif implementation == "h264_vaapi":
            # Needs VAAPI surfaces (a hardware frames context on the device): an FFmpeg build
            # without them refuses to open, and the caller falls back to libx264.
            options = {"profile": profile, "bf": "0", "device": vaapi_device}
        else:
            raise EncoderOpenError(f"unknown H.264 implementation {implementation!r}")
        super().__init__(
            implementation,
            width,
            height,
            fps,
            bitrate_bps,
            threads,
            options,
            gop_size=keyint,
            pix_fmt=pix_fmt,
        )


def open_h264(
    implementation: str,
    width: int,
    height: int,
    fps: float,
    bitrate_bps: int,
    keyframe_interval_s: float,
    *,
    preset: str = "ultrafast",
    threads: int = 0,
    profile: str = "baseline",
    vaapi_device: str = "",
) -> H264Encoder:
    """The chosen implementation, or libx264 with a log line when a hardware one will not open
    (once per process: later encoders go straight to libx264).

    Raises :class:`EncoderOpenError` only when libx264 itself cannot encode this.
    """
    make = partial(
        H264Encoder,
        width,
        height,
        fps,
        bitrate_bps,
        keyframe_interval_s,
        preset=preset,
        threads=threads,
        profile=profile,
        vaapi_device=vaapi_device,
    )
    if implementation != "libx264" and implementation not in _fell_back:
        try:
            return make(implementation=implementation)
        except EncoderOpenError as exc:
            _fell_back.add(implementation)
            log.warning("%s unavailable (%s); falling back to libx264", implementation, exc)
    return make()
