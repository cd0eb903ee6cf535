"""Settings of the viewer's static server (``ORSTREAM_*``)."""

from __future__ import annotations

from pydantic import Field

from orstream.common.config import CommonSettings
from orstream.common.subjects import TOKEN_PATTERN

DEFAULT_HTTP_PORT = 8080


class ViewerSettings(CommonSettings):
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    #: Where browsers reach the edge's API (WHEP and the stream list).
    edge_url: str = "http://127.0.0.1:8081"
    room: str = Field(default="or1", pattern=TOKEN_PATTERN)
    stream: str = Field(default="endoscope", pattern=TOKEN_PATTERN)
