"""A machine-readable timecode burned into the pixels: frame seq and capture time.

Any receiver (the probe, a browser canvas) can read it after H.264 and measure glass-to-glass
latency with nothing but the decoded picture. The code is a strip of big black/white luma blocks
near the top-left corner, sized from the frame width so a scaled rendition still reads::

    x0 = y0 = block = width // 80 (16 px at 1280)
    2 rows x 56 blocks, MSB first:
      magic 1011 | seq (32) | capture_ns (64) | check (8) = crc32(seq, capture_ns) & 0xff | 0000

A block is far larger than a macroblock's quantisation error at normal bitrates, and the reader
samples only each block's inner half, so edges smeared by the codec do not matter.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ROWS = 2
COLS = 56
BITS = ROWS * COLS
MAGIC = 0b1011
BLACK = 16
WHITE = 235
THRESHOLD = 128
_PAYLOAD = struct.Struct(">IQ")

U8 = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Timecode:
    seq: int
    capture_ns: int


def block_size(width: int) -> int:
    return max(4, width // 80)


def region(width: int) -> tuple[int, int, int, int]:
    """``(x0, y0, w, h)`` of the strip in a frame ``width`` pixels wide."""
    b = block_size(width)
    return b, b, COLS * b, ROWS * b


def _bits(tc: Timecode) -> U8:
    payload = _PAYLOAD.pack(tc.seq & 0xFFFFFFFF, tc.capture_ns & 0xFFFFFFFFFFFFFFFF)
    check = zlib.crc32(payload) & 0xFF
    raw = bytes([MAGIC << 4]) + payload + bytes([check])  # 4 + 96 + 8 bits + 4 padding
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
    # drop the low nibble of the magic byte so magic sits in the first 4 bits
    bits = np.concatenate([bits[:4], bits[8:]])
    out = np.zeros(BITS, dtype=np.uint8)
    out[: bits.size] = bits
    return out


def burn(y_plane: U8, tc: Timecode) -> None:
    """Write ``tc`` into a luma plane (H x W view, modified in place)."""
    width = y_plane.shape[1]
    x0, y0, w, h = region(width)
    b = block_size(width)
    levels = np.where(_bits(tc).reshape(ROWS, COLS), WHITE, BLACK).astype(np.uint8)
    y_plane[y0 : y0 + h, x0 : x0 + w] = np.repeat(np.repeat(levels, b, axis=0), b, axis=1)


def neutral_chroma(u_plane: U8, v_plane: U8, luma_width: int) -> None:
    """Grey chroma under the strip (4:2:0 planes), so the blocks are pure black and white."""
    x0, y0, w, h = region(luma_width)
    for plane in (u_plane, v_plane):
        plane[y0 // 2 : (y0 + h + 1) // 2, x0 // 2 : (x0 + w + 1) // 2] = 128


def read(y_plane: U8) -> Timecode | None:
    """Read the timecode from a decoded luma plane; ``None`` if absent or damaged."""
    height, width = y_plane.shape[:2]
    x0, y0, w, h = region(width)
    b = block_size(width)
    if y0 + h > height or x0 + w > width:
        return None
    strip = y_plane[y0 : y0 + h, x0 : x0 + w].reshape(ROWS, b, COLS, b)
    q = max(1, b // 4)
    means = strip[:, q : b - q, :, q : b - q].mean(axis=(1, 3))
    bits = (means.reshape(-1) > THRESHOLD).astype(np.uint8)
    if int(bits[0]) << 3 | int(bits[1]) << 2 | int(bits[2]) << 1 | int(bits[3]) != MAGIC:
        return None
    raw = np.packbits(bits[4 : 4 + 104]).tobytes()
    payload, check = raw[:12], raw[12]
    if zlib.crc32(payload) & 0xFF != check:
        return None
    seq, capture_ns = _PAYLOAD.unpack(payload)
    return Timecode(seq, capture_ns)
