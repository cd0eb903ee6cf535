"""Source URLs → sources. New kinds of source plug in here.

==================================  ==============================================
``testpattern:[?size=WxH&fps=F]``   the synthetic endoscope with burned-in timecode
``sdp:<path>[?interface=IP]``       a DICOM-RTV / ST 2110-20 flow (+ metadata flow)
``file:<path>[?loop=1]``            any video file FFmpeg reads, paced in real time
``dicom:<path>[?loop=1]``           a multi-frame DICOM object at its frame time
``v4l2:/dev/videoN``                a capture card or camera (Linux)
``avfoundation:<dev>``,             capture devices on macOS and Windows
``dshow:video=<name>``
``lavfi:<graph>``                   an FFmpeg filter graph, e.g. ``testsrc2=size=640x360:rate=25``
==================================  ==============================================
"""

from __future__ import annotations

from orstream.ingest.source import FrameSource

KINDS = ("testpattern", "sdp", "file", "dicom", "v4l2", "avfoundation", "dshow", "lavfi")


class SourceError(ValueError):
    """The source URL names no source this ingest knows, or the source cannot be opened."""


def open_source(url: str) -> FrameSource:
    scheme, sep, _ = url.partition(":")
    if not sep:
        raise SourceError(f"source {url!r} is not of the form <kind>:<where>")
    try:
        if scheme == "testpattern":
            from orstream.ingest.testpattern import TestPattern

            return TestPattern.from_url(url)
        if scheme == "sdp":
            from orstream.ingest.st2110 import St2110Source

            return St2110Source.from_url(url)
        if scheme == "dicom":
            from orstream.ingest.dicomfile import DicomSource

            return DicomSource.from_url(url)
        if scheme in ("file", "v4l2", "avfoundation", "dshow", "lavfi"):
            from orstream.ingest.avsource import AvSource

            return AvSource.from_url(url)
    except ValueError as exc:
        raise SourceError(f"source {url!r}: {exc}") from exc
    raise SourceError(f"source kind {scheme!r} is not supported; supported: {', '.join(KINDS)}")
