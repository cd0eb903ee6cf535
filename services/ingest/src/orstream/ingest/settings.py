"""Settings of the ingest service (``ORSTREAM_*``)."""

from __future__ import annotations

from pydantic import Field

from orstream.common.config import CommonSettings
from orstream.common.subjects import TOKEN_PATTERN


class IngestSettings(CommonSettings):
    room: str = Field(default="or1", pattern=TOKEN_PATTERN)
    stream: str = Field(default="endoscope", pattern=TOKEN_PATTERN)
    #: Where frames come from, a URL-like string (see :mod:`orstream.ingest.sources`):
    #: ``testpattern:``, ``sdp:<path>``, ``file:<path>``, ``dicom:<path>``, ``v4l2:<dev>``…
    source: str = "testpattern:"
    label: str = "Endoscope"
    ring_slots: int = Field(default=8, ge=2, le=64)
    #: A live stream with no frame for this long (or five frame intervals) becomes ``stalled``.
    stall_after_s: float = Field(default=1.0, gt=0)
