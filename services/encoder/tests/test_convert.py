"""Every pixel format the ring carries becomes the I420 the encoder needs, with the right values."""

from __future__ import annotations

import numpy as np
import pytest

from orstream.common.shm import RingError, SlotInfo
from orstream.encoder.convert import to_i420

W, H = 64, 32


def _info(pix_fmt: str, length: int) -> SlotInfo:
    return SlotInfo(seq=1, capture_ns=0, length=length, width=W, height=H, pix_fmt=pix_fmt)


def _planes(frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    i420 = frame.to_ndarray()
    y = i420[:H]
    rest = i420[H:].reshape(-1)
    q = (H // 2) * (W // 2)
    return y, rest[:q].reshape(H // 2, W // 2), rest[q:].reshape(H // 2, W // 2)


def pack_uyvp(y10: np.ndarray, cb10: np.ndarray, cr10: np.ndarray) -> bytes:
    """RFC 4175 10-bit 4:2:2 pgroups: Cb Y0 Cr Y1, 10 bits each, big-endian, 5 bytes."""
    y0, y1 = y10[:, 0::2].astype(np.uint64), y10[:, 1::2].astype(np.uint64)
    word = (cb10.astype(np.uint64) << 30) | (y0 << 20) | (cr10.astype(np.uint64) << 10) | y1
    out = np.empty((*word.shape, 5), dtype=np.uint8)
    for i in range(5):
        out[..., i] = (word >> np.uint64(8 * (4 - i))) & np.uint64(0xFF)
    return out.tobytes()


def test_10_bit_pgroups_unpack_to_8_bit_i420() -> None:
    rng = np.random.default_rng(7)
    y10 = rng.integers(64, 940, (H, W))
    cb10 = rng.integers(64, 960, (H, W // 2))
    cr10 = rng.integers(64, 960, (H, W // 2))
    data = pack_uyvp(y10, cb10, cr10)
    assert len(data) == W * H * 5 // 2
    y, u, v = _planes(to_i420(memoryview(data), _info("uyvp", len(data))))
    assert np.array_equal(y, (y10 >> 2).astype(np.uint8))
    expect_u = ((cb10[0::2] >> 2) + (cb10[1::2] >> 2) + 1) >> 1
    expect_v = ((cr10[0::2] >> 2) + (cr10[1::2] >> 2) + 1) >> 1
    assert np.array_equal(u, expect_u.astype(np.uint8))
    assert np.array_equal(v, expect_v.astype(np.uint8))


@pytest.mark.parametrize("pix_fmt", ["uyvy422", "yuyv422", "nv12"])
def test_8_bit_yuv_formats_keep_their_values(pix_fmt: str) -> None:
    yv, uv, vv = 150, 90, 200
    if pix_fmt == "uyvy422":
        data = bytes([uv, yv, vv, yv]) * (W * H // 2)
    elif pix_fmt == "yuyv422":
        data = bytes([yv, uv, yv, vv]) * (W * H // 2)
    else:
        data = bytes([yv]) * (W * H) + bytes([uv, vv]) * (W * H // 4)
    y, u, v = _planes(to_i420(memoryview(data), _info(pix_fmt, len(data))))
    assert (int(y.min()), int(y.max())) == (yv, yv)
    assert (int(u.min()), int(u.max()), int(v.min()), int(v.max())) == (uv, uv, vv, vv)


def test_rgb_and_gray_are_converted_by_swscale() -> None:
    white = bytes([255]) * (W * H * 3)
    y, u, v = _planes(to_i420(memoryview(white), _info("rgb24", len(white))))
    assert abs(int(y.mean()) - 235) <= 1 and abs(int(u.mean()) - 128) <= 1
    black = bytes(W * H)
    y, u, v = _planes(to_i420(memoryview(black), _info("gray", len(black))))
    assert abs(int(y.mean()) - 16) <= 1 and abs(int(v.mean()) - 128) <= 1


def test_a_short_slot_or_unknown_format_is_refused() -> None:
    with pytest.raises(RingError, match="holds 10"):
        to_i420(memoryview(bytes(10)), _info("uyvp", 10))
    with pytest.raises(ValueError, match="not carried"):
        to_i420(memoryview(bytes(W * H * 4)), _info("bgra", W * H * 4))
