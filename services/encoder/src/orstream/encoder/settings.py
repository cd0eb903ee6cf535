"""Settings of the encoder service (``ORSTREAM_*``)."""

from __future__ import annotations

import os
import re
import socket
from typing import Literal

from pydantic import BaseModel, Field

from orstream.common.config import CommonSettings
from orstream.common.subjects import SOURCE_RENDITION, TOKEN_PATTERN

DEFAULT_BITRATE_BPS = 4_000_000
DEFAULT_KEYFRAME_INTERVAL_S = 1.0
#: At most one forced IDR per this interval, however many peers ask.
DEFAULT_KEYFRAME_MIN_INTERVAL_S = 0.2

H264Implementation = Literal["libx264", "h264_nvenc", "h264_qsv", "h264_vaapi"]


class Rendition(BaseModel):
    """One encoding of a stream, published on ``.enc.<name>`` while someone watches it."""

    name: str = Field(pattern=TOKEN_PATTERN)
    #: Output height in lines (width follows the aspect ratio); none keeps the source size, and a
    #: rendition never scales up.
    height: int | None = Field(default=None, ge=64, le=4320)
    codec: Literal["h264", "vp8"] = "h264"
    bitrate_bps: int = Field(default=DEFAULT_BITRATE_BPS, ge=100_000, le=50_000_000)
    #: H.264 profile: constrained baseline plays in every browser; high is for capable peers.
    profile: Literal["baseline", "main", "high"] = "baseline"


DEFAULT_RENDITIONS = [
    Rendition(name=SOURCE_RENDITION),
    Rendition(name="360p", height=360, bitrate_bps=800_000),
]


def default_replica() -> str:
    """``<host>-<pid>``: unique among the replicas of a site, readable in the registry."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "host"
    return f"{host}-{os.getpid()}"


class EncoderSettings(CommonSettings):
    renditions: list[Rendition] = Field(default_factory=lambda: list(DEFAULT_RENDITIONS))
    keyframe_interval_s: float = Field(default=DEFAULT_KEYFRAME_INTERVAL_S, gt=0, le=1.0)
    keyframe_min_interval_s: float = Field(default=DEFAULT_KEYFRAME_MIN_INTERVAL_S, ge=0)
    x264_preset: str = "ultrafast"
    #: Encoder threads per rendition; 0 lets the codec decide (x264: sliced threads).
    threads: int = Field(default=0, ge=0, le=64)
    #: H.264 implementation; a hardware one that does not open falls back to libx264 (logged).
    h264_encoder: H264Implementation = "libx264"
    #: DRM render node for ``h264_vaapi``.
    vaapi_device: str = "/dev/dri/renderD128"
    #: A watcher's bitrate estimate lowers a rendition's bitrate, never below this share of it.
    min_bitrate_share: float = Field(default=0.25, gt=0, le=1.0)

    #: This replica's name in the encoder bucket (unique per site).
    replica: str = Field(default_factory=default_replica, pattern=TOKEN_PATTERN)
    #: Rooms (shell globs) whose streams this replica may claim; in Kubernetes, the pod's OR.
    rooms: list[str] = Field(default_factory=lambda: ["*"])
    #: Most streams this replica encodes at once; 0 = no limit.
    max_streams: int = Field(default=0, ge=0)
    #: Claims and presence are renewed this often; a claim not renewed for ``lease_s`` is free.
    heartbeat_s: float = Field(default=0.5, gt=0)
    lease_s: float = Field(default=1.5, gt=0)
    #: At most one stream is handed to a less busy replica per this interval.
    rebalance_s: float = Field(default=2.0, gt=0)
    #: A crashed worker is restarted after this, doubling up to the maximum while it keeps dying.
    restart_backoff_s: float = Field(default=0.25, gt=0)
    restart_backoff_max_s: float = Field(default=10.0, gt=0)
