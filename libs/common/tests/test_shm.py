"""The frame ring: frames round-trip; a reader lapped by the writer gets nothing, never a torn frame."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from orstream.common.shm import SHM_DIR, RingError, RingReader, RingWriter, SlotInfo


@pytest.fixture
def ring_name() -> str:
    return f"orstream-test-{uuid.uuid4().hex[:8]}"


def _fill(value: int, length: int = 1000):
    def fill(view: memoryview) -> int:
        view[:length] = bytes([value]) * length
        return length

    return fill


def _copy(view: memoryview, info: SlotInfo) -> tuple[bytes, SlotInfo]:
    return bytes(view), info


def test_frame_round_trips_with_its_header(ring_name: str) -> None:
    writer = RingWriter.create(ring_name, slot_bytes=4096, slot_count=4)
    reader = RingReader.attach(ring_name)
    try:
        slot = writer.write(7, 123_456, 32, 16, "yuv420p", _fill(9))
        assert slot == 7 % 4
        assert reader.latest_seq == 7
        data, info = reader.read(7, _copy)  # type: ignore[misc]
        assert data == bytes([9]) * 1000
        assert info == SlotInfo(7, 123_456, 1000, 32, 16, "yuv420p")
    finally:
        reader.close()
        writer.close()


def test_overwritten_slot_is_not_returned(ring_name: str) -> None:
    writer = RingWriter.create(ring_name, slot_bytes=4096, slot_count=2)
    reader = RingReader.attach(ring_name)
    try:
        writer.write(1, 1, 1, 1, "gray", _fill(1))
        writer.write(3, 3, 1, 1, "gray", _fill(3))  # same slot, newer frame
        assert reader.read(1, _copy) is None
        assert reader.read(3, _copy) is not None
    finally:
        reader.close()
        writer.close()


def test_writer_lapping_a_reader_mid_read_drops_the_frame(ring_name: str) -> None:
    writer = RingWriter.create(ring_name, slot_bytes=4096, slot_count=2)
    reader = RingReader.attach(ring_name)
    try:
        writer.write(0, 0, 1, 1, "gray", _fill(0))

        def slow_consumer(view: memoryview, info: SlotInfo) -> bytes:
            head = bytes(view[:10])
            writer.write(2, 2, 1, 1, "gray", _fill(2))  # the writer laps us during the copy
            return head + bytes(view[10:])

        assert reader.read(0, slow_consumer) is None
    finally:
        reader.close()
        writer.close()


def test_frame_larger_than_slot_is_refused(ring_name: str) -> None:
    writer = RingWriter.create(ring_name, slot_bytes=100)
    try:
        with pytest.raises(RingError):
            writer.write(0, 0, 1, 1, "gray", lambda view: 101)
    finally:
        writer.close()


def test_attach_to_missing_ring_is_a_clear_error() -> None:
    with pytest.raises(RingError, match="does not exist"):
        RingReader.attach(f"orstream-test-missing-{uuid.uuid4().hex[:8]}")


def test_reader_exit_leaves_the_ring_and_writer_close_removes_it(ring_name: str) -> None:
    writer = RingWriter.create(ring_name, slot_bytes=64)
    writer.write(5, 5, 1, 1, "gray", _fill(5, 64))
    code = (
        "from orstream.common.shm import RingReader\n"
        f"r = RingReader.attach({ring_name!r})\n"
        "assert r.latest_seq == 5\n"
        "import os; os._exit(0)\n"  # a crashing consumer: no close, no cleanup
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert (SHM_DIR / ring_name).exists()
    reader = RingReader.attach(ring_name)
    assert reader.read(5, _copy) is not None
    reader.close()
    writer.close()
    assert not (SHM_DIR / ring_name).exists()


def test_stale_ring_of_a_crashed_writer_is_replaced(ring_name: str) -> None:
    stale = RingWriter.create(ring_name, slot_bytes=64)
    stale.write(1, 1, 1, 1, "gray", _fill(1, 64))
    stale.close(unlink=False)
    fresh = RingWriter.create(ring_name, slot_bytes=128, slot_count=3)
    reader = RingReader.attach(ring_name)
    try:
        assert (reader.slot_bytes, reader.slot_count, reader.latest_seq) == (128, 3, 0)
    finally:
        reader.close()
        fresh.close()
    assert not Path(SHM_DIR / ring_name).exists()
