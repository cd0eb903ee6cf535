"""The boundary between a source and the pipeline: one async iterator of raw frames.

A source yields :class:`RawFrame` objects whose ``fill`` writes the picture straight into the
ring slot it is given, so a frame is produced where the encoder will read it, without a copy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RawFrame:
    seq: int
    capture_ns: int
    #: Writes the frame into the view, returns its length in bytes (runs off the event loop).
    fill: Callable[[memoryview], int]


@dataclass(frozen=True, slots=True)
class VideoFormat:
    width: int
    height: int
    fps: float
    pix_fmt: str

    @property
    def frame_bytes(self) -> int:
        if self.pix_fmt == "yuv420p":
            return self.width * self.height * 3 // 2
        raise ValueError(f"unsupported pixel format {self.pix_fmt}")


class FrameSource(Protocol):
    format: VideoFormat
    description: str

    def frames(self) -> AsyncIterator[RawFrame]: ...
