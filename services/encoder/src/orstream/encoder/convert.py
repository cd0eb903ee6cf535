"""Ring slots → I420 frames for the encoder: the one copy out of shared memory, and conversion.

I420 is copied as is. RFC 4175 10-bit 4:2:2 pgroups (``uyvp``) are unpacked with vectorised
numpy straight to 8-bit I420 (the top 8 of each 10 bits; chroma rows averaged in pairs), which
is what a browser's H.264 decoder gets anyway. Every other carried format is copied into a PyAV
frame of its own format and converted by libswscale.
"""

from __future__ import annotations

from typing import Any

import av
import numpy as np
import numpy.typing as npt

from orstream.common.pixels import pixel_format
from orstream.common.shm import RingError, SlotInfo

U8 = npt.NDArray[np.uint8]
#: Formats copied into a PyAV frame of the same format, then converted by libswscale.
SWSCALE_FORMATS = frozenset({"nv12", "uyvy422", "yuyv422", "rgb24", "gray"})
#: Every format a ring slot may carry that :func:`to_i420` converts.
ENCODABLE_FORMATS = SWSCALE_FORMATS | {"yuv420p", "uyvp"}


def to_i420(data: memoryview, info: SlotInfo) -> av.VideoFrame:
    """The slot's frame as a new I420 :class:`av.VideoFrame` (a copy; the slot may be reused)."""
    width, height = info.width, info.height
    expected = pixel_format(info.pix_fmt).frame_bytes(width, height)
    if info.length < expected:
        raise RingError(f"{info.pix_fmt} {width}x{height} slot holds {info.length} < {expected} B")
    raw = np.frombuffer(data, dtype=np.uint8, count=expected)
    if info.pix_fmt == "yuv420p":
        return av.VideoFrame.from_ndarray(raw.reshape(height * 3 // 2, width), format="yuv420p")
    if info.pix_fmt == "uyvp":
        return _uyvp_to_i420(raw, width, height)
    if info.pix_fmt in SWSCALE_FORMATS:
        return _copy_into(raw, width, height, info.pix_fmt).reformat(format="yuv420p")
    raise RingError(f"pixel format {info.pix_fmt} cannot be encoded")


def _copy_into(raw: U8, width: int, height: int, pix_fmt: str) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, pix_fmt)
    offset = 0
    for plane in frame.planes:
        rows = plane.height
        row_bytes = (
            pixel_format(pix_fmt).frame_bytes(width, height) // height
            if len(frame.planes) == 1
            else width
        )
        dst: Any = np.frombuffer(memoryview(plane), dtype=np.uint8)
        dst = dst[: rows * plane.line_size].reshape(rows, plane.line_size)
        dst[:, :row_bytes] = raw[offset : offset + rows * row_bytes].reshape(rows, row_bytes)
        offset += rows * row_bytes
    return frame


def _uyvp_to_i420(raw: U8, width: int, height: int) -> av.VideoFrame:
    """Unpack 10-bit pgroups (Cb Y0 Cr Y1, 40 bits big-endian) to 8-bit I420."""
    g = raw.reshape(height, width // 2, 5)
    b0, b1, b2, b3, b4 = (g[..., i] for i in range(5))
    out = np.empty((height * 3 // 2, width), dtype=np.uint8)
    y = out[:height].reshape(height, width // 2, 2)
    # uint8 shifts drop the high bits, which is exactly the masking the unpacking needs.
    np.bitwise_or(np.left_shift(b1, 2), np.right_shift(b2, 6), out=y[..., 0])
    np.bitwise_or(np.left_shift(b3, 6), np.right_shift(b4, 2), out=y[..., 1])
    cb = b0
    cr = np.bitwise_or(np.left_shift(b2, 4), np.right_shift(b3, 4))
    quarter = height // 2 * (width // 2)
    u = out[height:].reshape(-1)[:quarter].reshape(height // 2, width // 2)
    v = out[height:].reshape(-1)[quarter:].reshape(height // 2, width // 2)
    _average_rows(cb, u)
    _average_rows(cr, v)
    return av.VideoFrame.from_ndarray(out, format="yuv420p")


def _average_rows(chroma: U8, out: U8) -> None:
    """4:2:2 → 4:2:0: each output row is the rounded mean of two input rows."""
    top = chroma[0::2].astype(np.uint16)
    top += chroma[1::2]
    top += 1
    np.right_shift(top, 1, out=top)
    out[:] = top
