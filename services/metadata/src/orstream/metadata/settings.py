"""Settings of the metadata service (``ORSTREAM_*``)."""

from __future__ import annotations

from orstream.common.config import CommonSettings


class MetadataSettings(CommonSettings):
    pass
