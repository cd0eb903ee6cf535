"""The shared-memory frame ring: raw frames from ingest to the encoders of the same host.

::

    ring header (64 B)   magic "ORSR" | version | slot_count | slot_bytes | latest_seq
    slot 0 header (64 B) generation | seq | capture_ns | length | width | height | pix_fmt
    slot 0 data          slot_bytes of frame
    slot 1 header ...

Each slot is a seqlock. The single writer makes the slot's generation odd, writes the frame,
then makes it even again; it never waits for readers. A reader reads the generation, copies (or
views) the frame, and reads the generation again: if it changed or was odd, the writer lapped
the reader and the frame is dropped, never returned torn. Frame ``seq`` lives in slot
``seq % slot_count``; readers take the newest frame.

Segments are POSIX shared memory named after the stream, created and unlinked by the writer.
Readers never unlink, so a crashed reader leaves the ring intact for its successor.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

MAGIC = b"ORSR"
VERSION = 1
RING_HEADER = struct.Struct("<4sHHIQQ")  # magic, version, reserved, slot_count, slot_bytes, latest
SLOT_HEADER = struct.Struct("<QQQQII16s")  # gen, seq, capture_ns, length, width, height, pix_fmt
HEADER_BYTES = 64
_GEN = struct.Struct("<Q")
_SEQ = struct.Struct("<Q")
#: The seq of a slot that holds no frame (being written, or aborted); no reader asks for it.
NO_FRAME = 2**64 - 1
_LATEST_OFFSET = 24
DEFAULT_SLOT_COUNT = 8
SHM_DIR = Path("/dev/shm")

T = TypeVar("T")


class RingError(RuntimeError):
    """The ring is missing, malformed, or the frame does not fit."""


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """What a slot's header said when it was read."""

    seq: int
    capture_ns: int
    length: int
    width: int
    height: int
    pix_fmt: str


def _align(n: int, to: int = 64) -> int:
    return (n + to - 1) // to * to


class _Ring:
    def __init__(self, shm: shared_memory.SharedMemory, slot_count: int, slot_bytes: int) -> None:
        self._shm = shm
        self.name = shm.name
        self.slot_count = slot_count
        self.slot_bytes = slot_bytes
        self._stride = HEADER_BYTES + _align(slot_bytes)
        self._buf = memoryview(shm.buf)  # type: ignore[arg-type]

    def _slot_offset(self, slot: int) -> int:
        return HEADER_BYTES + slot * self._stride

    def slot_for(self, seq: int) -> int:
        return seq % self.slot_count

    @property
    def latest_seq(self) -> int:
        return int(_GEN.unpack_from(self._buf, _LATEST_OFFSET)[0])

    def _release(self) -> None:
        try:
            self._buf.release()
            self._shm.close()
        except BufferError:
            # A view is still exported (a caller kept one past its callback); the mapping goes
            # with the process, and the writer still unlinks the name.
            log.warning("ring %s still has views in use at close", self.name)


class SlotWrite:
    """A slot being written: fill :attr:`data`, then :meth:`commit` or :meth:`abort` once."""

    __slots__ = ("_ring", "data", "seq", "slot")

    def __init__(self, ring: RingWriter, slot: int, seq: int, data: memoryview) -> None:
        self._ring = ring
        self.slot = slot
        self.seq = seq
        self.data = data

    def commit(self, capture_ns: int, length: int, width: int, height: int, pix_fmt: str) -> None:
        if not 0 < length <= self._ring.slot_bytes:
            self.abort()
            raise RingError(
                f"frame of {length} bytes does not fit a {self._ring.slot_bytes}-byte slot"
            )
        self.data.release()
        self._ring._finish(self, capture_ns, length, width, height, pix_fmt)

    def abort(self) -> None:
        self.data.release()
        self._ring._finish(self, 0, 0, 0, 0, "")


class RingWriter(_Ring):
    """The single writer of a ring (ingest)."""

    @classmethod
    def create(cls, name: str, slot_bytes: int, slot_count: int = DEFAULT_SLOT_COUNT) -> RingWriter:
        """Create the ring, replacing a stale one of the same name left by a crashed writer."""
        stride = HEADER_BYTES + _align(slot_bytes)
        size = HEADER_BYTES + slot_count * stride
        try:
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        except FileExistsError:
            stale = shared_memory.SharedMemory(name=name)
            stale.close()
            stale.unlink()
            shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        ring = cls(shm, slot_count, slot_bytes)
        RING_HEADER.pack_into(ring._buf, 0, MAGIC, VERSION, 0, slot_count, slot_bytes, 0)
        return ring

    def write(
        self,
        seq: int,
        capture_ns: int,
        width: int,
        height: int,
        pix_fmt: str,
        fill: Callable[[memoryview], int],
    ) -> int:
        """Write frame ``seq``: ``fill`` writes the frame into the view it gets, returns its length.

        Returns the slot written. The frame is produced straight into shared memory: no copy.
        """
        pending = self.begin(seq)
        try:
            length = fill(pending.data)
        except BaseException:
            pending.abort()
            raise
        pending.commit(capture_ns, length, width, height, pix_fmt)
        return pending.slot

    def begin(self, seq: int) -> SlotWrite:
        """Start writing frame ``seq`` into its slot, for a writer that fills it over time.

        An RTP receiver reassembles a frame packet by packet straight into the slot; it then
        commits the frame, or aborts it (a packet was lost) so no reader ever sees it.
        """
        slot = self.slot_for(seq)
        off = self._slot_offset(slot)
        (gen,) = _GEN.unpack_from(self._buf, off)
        _GEN.pack_into(self._buf, off, gen + 1 if gen % 2 == 0 else gen + 2)  # odd: writing
        _SEQ.pack_into(self._buf, off + 8, NO_FRAME)  # the old frame is being overwritten
        data = self._buf[off + HEADER_BYTES : off + HEADER_BYTES + self.slot_bytes]
        return SlotWrite(self, slot, seq, data)

    def _finish(
        self,
        pending: SlotWrite,
        capture_ns: int,
        length: int,
        width: int,
        height: int,
        pix_fmt: str,
    ) -> None:
        off = self._slot_offset(pending.slot)
        (gen,) = _GEN.unpack_from(self._buf, off)
        if length <= 0:  # aborted: stable again, holding no frame
            SLOT_HEADER.pack_into(self._buf, off, gen, NO_FRAME, 0, 0, 0, 0, b"")
            _GEN.pack_into(self._buf, off, gen + 1)
            return
        if length > self.slot_bytes:
            raise RingError(f"frame of {length} bytes does not fit a {self.slot_bytes}-byte slot")
        SLOT_HEADER.pack_into(
            self._buf, off, gen, pending.seq, capture_ns, length, width, height, pix_fmt.encode()
        )
        _GEN.pack_into(self._buf, off, gen + 1)  # even: stable
        _GEN.pack_into(self._buf, _LATEST_OFFSET, pending.seq)

    def close(self, unlink: bool = True) -> None:
        self._release()
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()


class RingReader(_Ring):
    """A reader of a ring (an encoder worker); never writes, never unlinks."""

    @classmethod
    def attach(cls, name: str) -> RingReader:
        try:
            shm = shared_memory.SharedMemory(name=name)
        except FileNotFoundError as exc:
            raise RingError(f"ring {name!r} does not exist") from exc
        # Python < 3.13 registers attached segments with the resource tracker, which would
        # unlink the writer's ring when this reader exits; a reader must leave it alone.
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        assert shm.buf is not None
        magic, version, _, slot_count, slot_bytes, _ = RING_HEADER.unpack_from(shm.buf, 0)
        if magic != MAGIC or version != VERSION:
            shm.close()
            raise RingError(f"ring {name!r} is not an orstream ring v{VERSION}")
        return cls(shm, slot_count, slot_bytes)

    def read(self, seq: int, consume: Callable[[memoryview, SlotInfo], T]) -> T | None:
        """Hand frame ``seq`` to ``consume`` and return its result, or ``None`` if it is gone.

        ``consume`` gets a view into shared memory valid only during the call; it must copy
        what it keeps (e.g. into an ``av.VideoFrame``). ``None`` means the writer lapped this
        reader during the read (or before it): the frame is dropped, never returned torn.
        """
        off = self._slot_offset(self.slot_for(seq))
        gen, slot_seq, capture_ns, length, width, height, pix_fmt = SLOT_HEADER.unpack_from(
            self._buf, off
        )
        if gen % 2 or slot_seq != seq or not 0 < length <= self.slot_bytes:
            return None
        info = SlotInfo(seq, capture_ns, length, width, height, pix_fmt.rstrip(b"\0").decode())
        data = self._buf[off + HEADER_BYTES : off + HEADER_BYTES + length]
        try:
            result = consume(data, info)
        finally:
            data.release()
        (gen_after,) = _GEN.unpack_from(self._buf, off)
        return result if gen_after == gen else None

    def close(self) -> None:
        self._release()


def unlink_ring(name: str) -> bool:
    """Unlink the ring ``name`` if a killed writer left it behind; True if there was one."""
    try:
        (SHM_DIR / name).unlink()
    except FileNotFoundError:
        return False
    return True
