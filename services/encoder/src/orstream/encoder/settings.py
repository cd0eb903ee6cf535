"""Settings of the encoder service (``ORSTREAM_*``)."""

from __future__ import annotations

from pydantic import Field

from orstream.common.config import CommonSettings

DEFAULT_BITRATE_BPS = 4_000_000
DEFAULT_KEYFRAME_INTERVAL_S = 1.0
#: At most one forced IDR per this interval, however many peers ask.
DEFAULT_KEYFRAME_MIN_INTERVAL_S = 0.2


class EncoderSettings(CommonSettings):
    bitrate_bps: int = Field(default=DEFAULT_BITRATE_BPS, ge=100_000, le=50_000_000)
    keyframe_interval_s: float = Field(default=DEFAULT_KEYFRAME_INTERVAL_S, gt=0, le=1.0)
    keyframe_min_interval_s: float = Field(default=DEFAULT_KEYFRAME_MIN_INTERVAL_S, ge=0)
    x264_preset: str = "ultrafast"
    #: libx264 threads; 0 lets x264 decide (sliced threads under ``tune=zerolatency``).
    threads: int = Field(default=0, ge=0, le=64)
