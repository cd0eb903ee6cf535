"""The boundary between a source and the pipeline: one async iterator of source events.

::

    source.frames(ring) ──► RawFrame     a frame to render: ingest calls ``fill`` on a ring slot
                        ──► FrameInRing  the source already wrote it (RTP reassembles in place)
                        ──► Context      a DICOM dataset about the stream (RTV metadata, header)
                        ──► Stalled      the source stopped delivering; it keeps trying

Either way a frame is produced where the encoder reads it: in the ring slot, without a
further copy. When the iterator ends, the source has ended (a file without ``loop``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from orstream.common.pixels import frame_bytes
from orstream.common.shm import RingWriter


@dataclass(frozen=True, slots=True)
class RawFrame:
    seq: int
    capture_ns: int
    #: Writes the frame into the view, returns its length in bytes (runs off the event loop).
    fill: Callable[[memoryview], int]


@dataclass(frozen=True, slots=True)
class FrameInRing:
    """Frame ``seq`` is committed in ring slot ``slot``."""

    seq: int
    capture_ns: int
    slot: int


@dataclass(frozen=True, slots=True)
class Context:
    """A DICOM dataset describing the stream, as Part 10 bytes (preamble, DICM, group 2, data)."""

    part10: bytes
    capture_ns: int
    study_uid: str = ""
    series_uid: str = ""
    modality: str = ""
    rtp_ts: int | None = None
    #: The video frame this dataset belongs to, when known (DICOM-RTV per-frame metadata).
    seq: int | None = None
    flow: str = ""


@dataclass(frozen=True, slots=True)
class Stalled:
    reason: str


SourceEvent = RawFrame | FrameInRing | Context | Stalled


@dataclass(frozen=True, slots=True)
class VideoFormat:
    width: int
    height: int
    fps: float
    pix_fmt: str
    bit_depth: int = 8
    colorimetry: str = ""

    @property
    def frame_bytes(self) -> int:
        return frame_bytes(self.pix_fmt, self.width, self.height)


@dataclass
class SourceCounters:
    """What a source counts besides frames (packets, decode errors, reopen attempts…)."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, amount: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + amount


class FrameSource(Protocol):
    format: VideoFormat
    description: str

    def frames(self, ring: RingWriter) -> AsyncGenerator[SourceEvent, None]: ...

    def counters(self) -> dict[str, int]: ...
