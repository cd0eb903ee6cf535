"""Decoded PyAV frames into ring slots: plane by plane, padding stripped, in the carried format.

A decoder's frame keeps each plane in its own buffer with a padded line size; the ring holds one
tightly packed frame. Formats the ring carries (:mod:`orstream.common.pixels`) go in as they are;
anything else (yuvj420p, yuv444p, 10-bit planar…) is converted to I420 once here by libswscale.
"""

from __future__ import annotations

from collections.abc import Callable

import av
import numpy as np

from orstream.common.pixels import FORMATS

#: PyAV formats copied as they are; everything else becomes yuv420p.
CARRIED = frozenset({"yuv420p", "nv12", "uyvy422", "yuyv422", "rgb24", "gray"})
FALLBACK = "yuv420p"


def carried_format(av_format: str) -> str:
    return av_format if av_format in CARRIED and av_format in FORMATS else FALLBACK


def _plane_shapes(pix_fmt: str, width: int, height: int) -> list[tuple[int, int]]:
    """(rows, bytes per row) of each plane of a packed frame in the ring."""
    if pix_fmt == "yuv420p":
        return [(height, width), (height // 2, width // 2), (height // 2, width // 2)]
    if pix_fmt == "nv12":
        return [(height, width), (height // 2, width)]
    bytes_per_pixel = {"uyvy422": 2, "yuyv422": 2, "rgb24": 3, "gray": 1}[pix_fmt]
    return [(height, width * bytes_per_pixel)]


def conform(frame: av.VideoFrame, width: int, height: int, pix_fmt: str) -> av.VideoFrame:
    """The frame at the stream's announced size and format (converted only if it differs)."""
    if frame.width == width and frame.height == height and frame.format.name == pix_fmt:
        return frame
    return frame.reformat(width=width, height=height, format=pix_fmt)


def filler(frame: av.VideoFrame) -> Callable[[memoryview], int]:
    """A ``fill`` for :class:`~orstream.ingest.source.RawFrame` that copies ``frame`` in."""

    def fill(view: memoryview) -> int:
        offset = 0
        shapes = _plane_shapes(frame.format.name, frame.width, frame.height)
        for plane, (rows, row_bytes) in zip(frame.planes, shapes, strict=True):
            src = np.frombuffer(memoryview(plane), dtype=np.uint8)
            src = src[: rows * plane.line_size].reshape(rows, plane.line_size)[:, :row_bytes]
            dst = np.frombuffer(view, dtype=np.uint8, count=rows * row_bytes, offset=offset)
            dst.reshape(rows, row_bytes)[:] = src
            offset += rows * row_bytes
        return offset

    return fill
