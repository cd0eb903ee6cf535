from __future__ import annotations

import av
import numpy as np

from orstream.common import timecode
from orstream.encoder.h264 import H264Encoder
from orstream.encoder.pipeline import pts_of

W, H = 640, 360


def _frame(i: int) -> av.VideoFrame:
    rng = np.random.default_rng(i // 10)
    yuv = np.empty((H * 3 // 2, W), dtype=np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    yuv[:H] = (100 + 60 * np.sin((xx + 4 * i) / 23.0) * np.cos(yy / 17.0)).astype(np.uint8)
    yuv[:H] += rng.integers(0, 8, (H, W), dtype=np.uint8)
    yuv[H:] = 128
    timecode.burn(yuv[:H], timecode.Timecode(i, 1_000_000 * i))
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    frame.pts = pts_of(20_000_000 * i)
    return frame


def _encode(n: int, force_at: set[int] = frozenset()) -> list:
    encoder = H264Encoder(W, H, 50.0, 1_500_000, 1.0)
    units = []
    for i in range(n):
        out = encoder.encode(_frame(i), force_keyframe=i in force_at)
        assert len(out) == 1, "zero latency: one access unit per frame, at once"
        units.extend(out)
    encoder.close()
    return units


def test_constrained_baseline_with_idr_every_second() -> None:
    units = _encode(120)
    assert units[0].key
    assert bytes(units[0].data[:8]).startswith(
        b"\x00\x00\x00\x01\x67\x42\xc0"
    )  # SPS, profile 66, cs1
    assert [i for i, u in enumerate(units) if u.key] == [0, 50, 100]
    pts = [u.pts for u in units]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)


def test_forced_keyframe_is_the_next_frame() -> None:
    units = _encode(40, force_at={17})
    assert [i for i, u in enumerate(units) if u.key] == [0, 17]
    assert b"\x00\x00\x00\x01\x67" in units[17].data  # SPS repeated so a new peer can start there


def test_timecode_survives_encoding() -> None:
    decoder = av.CodecContext.create("h264", "r")
    read = []
    for unit in _encode(60):
        for frame in decoder.decode(av.Packet(unit.data)):
            y = frame.to_ndarray(format="gray")
            read.append(timecode.read(y))
    assert read == [timecode.Timecode(i, 1_000_000 * i) for i in range(60)]
