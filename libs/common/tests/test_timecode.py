from __future__ import annotations

import numpy as np
import pytest

from orstream.common import timecode
from orstream.common.timecode import Timecode


@pytest.mark.parametrize("width", [1280, 1920, 640, 320])
def test_burned_timecode_reads_back(width: int) -> None:
    height = width * 9 // 16
    y = np.full((height, width), 90, dtype=np.uint8)
    tc = Timecode(seq=4_000_000_123, capture_ns=1_790_000_000_123_456_789)
    timecode.burn(y, tc)
    assert timecode.read(y) == tc


def test_noise_and_blank_frames_have_no_timecode() -> None:
    rng = np.random.default_rng(1)
    assert timecode.read(rng.integers(0, 256, (720, 1280), dtype=np.uint8)) is None
    assert timecode.read(np.zeros((720, 1280), dtype=np.uint8)) is None


def test_one_flipped_block_fails_the_check() -> None:
    y = np.full((720, 1280), 90, dtype=np.uint8)
    timecode.burn(y, Timecode(17, 99))
    x0, y0, _, _ = timecode.region(1280)
    b = timecode.block_size(1280)
    cell = y[y0 + b : y0 + 2 * b, x0 + 20 * b : x0 + 21 * b]
    cell[...] = 255 - cell
    assert timecode.read(y) is None


def test_moderate_noise_does_not_change_the_reading() -> None:
    rng = np.random.default_rng(2)
    y = np.full((720, 1280), 90, dtype=np.uint8)
    tc = Timecode(5, 1_700_000_000_000_000_000)
    timecode.burn(y, tc)
    noisy = np.clip(y.astype(np.int16) + rng.integers(-40, 41, y.shape), 0, 255).astype(np.uint8)
    assert timecode.read(noisy) == tc
