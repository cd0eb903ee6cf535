"""The VP8 encoder: decodable by libvpx, a keyframe first and whenever one is asked for."""

from __future__ import annotations

import av
import numpy as np

from orstream.encoder.codec import VIDEO_CLOCK_HZ
from orstream.encoder.vp8 import VP8Encoder


def _frame(i: int) -> av.VideoFrame:
    y, x = np.mgrid[0:180, 0:320]
    rgb = np.stack([(x + 4 * i) % 256, y % 256, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def test_vp8_units_decode_and_keyframes_come_on_request() -> None:
    encoder = VP8Encoder(320, 180, 25.0, 1_000_000, keyframe_interval_s=1.0)
    decoder = av.CodecContext.create("vp8", "r")
    keys: list[int] = []
    decoded = 0
    for i in range(40):
        frame = _frame(i)
        frame.pts = i * VIDEO_CLOCK_HZ // 25
        units = encoder.encode(frame, force_keyframe=i == 10)
        assert len(units) == 1, "no lag: one access unit per frame, at once"
        keys += [i for u in units if u.key]
        for unit in units:
            decoded += len(decoder.decode(av.Packet(unit.data)))
    encoder.close()
    assert keys == [0, 10, 35], "first frame, the forced one, then a second after it"
    assert decoded == 40
