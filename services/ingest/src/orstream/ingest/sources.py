"""Source URLs → sources. New kinds of source plug in here."""

from __future__ import annotations

from orstream.ingest.source import FrameSource
from orstream.ingest.testpattern import TestPattern


class SourceError(ValueError):
    """The source URL names no source this ingest knows, or is malformed."""


def open_source(url: str) -> FrameSource:
    scheme, sep, _ = url.partition(":")
    if not sep:
        raise SourceError(f"source {url!r} is not of the form <kind>:<where>")
    try:
        if scheme == "testpattern":
            return TestPattern.from_url(url)
    except ValueError as exc:
        raise SourceError(f"source {url!r}: {exc}") from exc
    raise SourceError(f"source kind {scheme!r} is not supported (yet): {url!r}")
