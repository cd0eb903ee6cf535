"""The DICOM-RTV metadata flow (PS3.22): RTP grains → validated Part 10 datasets.

One grain is every packet with one RTP timestamp (the video frame's 90 kHz time, since both flows
share the PTP-locked media clock); the marker bit ends it. Its payloads, concatenated, are a Part 10
stream: 128-byte preamble, ``DICM``, RTV Meta Information, dataset in Explicit VR Little Endian.
A grain with a lost packet, an oversized grain or one pydicom cannot read completely is dropped,
logged and counted; nothing half-read is ever published.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

import pydicom
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError

from orstream.common.dicomrtv import register_tags, uuid_of
from orstream.ingest.flow import IDLE_POLL_S, MAX_DATAGRAM_BYTES, FlowReceiver
from orstream.ingest.rtp import FIXED, MARKER, RtpError, payload_offset

log = logging.getLogger(__name__)

PREAMBLE_BYTES = 128
PREFIX = b"DICM"
#: A metadata grain larger than this is refused (a frame's context is a few KiB).
MAX_GRAIN_BYTES = 4 * 1024 * 1024
#: After this long without a packet, or this many late packets in a row, follow the sender's
#: new sequence numbers (it restarted).
RESYNC_SILENCE_S = 1.0
LATE_RESYNC = 32


class RtvError(ValueError):
    """A metadata grain that is not a readable DICOM-RTV dataset."""


@dataclass(frozen=True, slots=True)
class RtvGrain:
    """One frame's metadata, read and checked."""

    dataset: FileDataset
    part10: bytes
    rtp_ts: int
    capture_ns: int
    flow: str
    source: str


def read_grain(part10: bytes) -> FileDataset:
    """Parse a grain completely (pydicom defers values; a corrupt one must fail here, not later)."""
    if len(part10) < PREAMBLE_BYTES + len(PREFIX) or part10[128:132] != PREFIX:
        raise RtvError("payload does not start with a 128-byte preamble and 'DICM'")
    try:
        ds = pydicom.dcmread(BytesIO(part10), force=False)
        for elem in ds.iterall():
            _ = elem.value
        for elem in ds.file_meta:
            _ = elem.value
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise RtvError(f"unreadable DICOM-RTV dataset: {exc}") from exc
    except Exception as exc:  # pydicom raises assorted errors on garbage; all mean the same
        raise RtvError(f"unreadable DICOM-RTV dataset: {exc!r}") from exc
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        raise RtvError("RTV Meta Information lacks Transfer Syntax UID (0002,0010)")
    if "RTVFlowIdentifier" not in meta and "RTVSourceIdentifier" not in meta:
        raise RtvError("RTV Meta Information lacks the RTV Source/Flow Identifiers (0002,0035/36)")
    return ds


GrainCallback = Callable[[RtvGrain], None]


class RtvMetadataReceiver(FlowReceiver):
    """Receives one DICOM-RTV metadata flow; :meth:`run` is a thread's body."""

    name = "dicom-rtv metadata"

    def __init__(
        self,
        sock: socket.socket,
        payload_type: int,
        on_grain: GrainCallback,
        sources: tuple[str, ...] = (),
    ) -> None:
        register_tags()
        super().__init__(sock, payload_type, sources)
        self.on_grain = on_grain
        self.grains_invalid = 0

    def _receive(self, stop: threading.Event) -> None:
        stats = self.stats
        pkt = bytearray(MAX_DATAGRAM_BYTES)
        parts: list[bytes] = []
        size = 0
        grain_ts = -1
        capture_ns = 0
        expected = -1
        damaged = False
        late_run = 0
        last_packet_s = 0.0
        while not stop.is_set():
            try:
                n, addr = self.sock.recvfrom_into(pkt)
            except BlockingIOError:
                select.select([self.sock], [], [], IDLE_POLL_S)
                continue
            except OSError as exc:
                if stop.is_set():
                    break
                self._warn(f"receive failed: {exc}")
                time.sleep(IDLE_POLL_S)
                continue
            stats.packets += 1
            stats.bytes += n
            if self.sources and addr[0] not in self.sources:
                stats.packets_foreign += 1
                continue
            try:
                start, end = payload_offset(pkt, n)
            except RtpError as exc:
                stats.packets_malformed += 1
                self._warn(f"dropped a malformed packet ({exc})")
                continue
            _, b1, seq, ts, _ = FIXED.unpack_from(pkt, 0)
            if b1 & 0x7F != self.payload_type:
                stats.packets_foreign += 1
                continue
            now = time.monotonic()
            if now - last_packet_s > RESYNC_SILENCE_S:
                expected = -1  # after a silence the sender may have restarted its sequence
            last_packet_s = now
            if expected != -1 and (seq - expected) & 0xFFFF >= 0x8000:
                stats.packets_late += 1  # late or duplicated: never starts a grain
                late_run += 1
                if late_run < LATE_RESYNC:
                    continue
                expected = -1
            late_run = 0
            if ts != grain_ts:
                # A gap before a grain's first packet may have taken that grain's start: such a
                # grain could still parse (cut at an element boundary), so it is not published.
                gap = expected != -1 and seq != expected
                if gap:
                    stats.packets_lost += (seq - expected) & 0xFFFF
                if parts or damaged:
                    stats.frames_dropped += 1  # the previous grain never saw its marker
                    self._warn("a grain ended without its marker packet; dropped")
                parts, size, damaged = [], 0, gap
                grain_ts = ts
                capture_ns = time.time_ns()
            elif expected != -1 and seq != expected:
                stats.packets_lost += (seq - expected) & 0xFFFF
                damaged = True
            expected = (seq + 1) & 0xFFFF
            size += end - start
            if size > MAX_GRAIN_BYTES:
                damaged = True
            elif not damaged:
                parts.append(bytes(pkt[start:end]))
            if b1 & MARKER:
                if damaged:
                    stats.frames_dropped += 1
                    self._warn(
                        "dropped a grain with lost packets"
                        if size <= MAX_GRAIN_BYTES
                        else f"dropped a {size}-byte grain (limit {MAX_GRAIN_BYTES})"
                    )
                else:
                    self._deliver(b"".join(parts), ts, capture_ns)
                parts, size, damaged, grain_ts = [], 0, False, -1

    def _deliver(self, part10: bytes, ts: int, capture_ns: int) -> None:
        try:
            ds = read_grain(part10)
            flow = uuid_of(ds.file_meta.get("RTVFlowIdentifier"))
            source = uuid_of(ds.file_meta.get("RTVSourceIdentifier"))
        except RtvError as exc:
            self.grains_invalid += 1
            self.stats.frames_dropped += 1
            self._warn(f"dropped a grain: {exc}")
            return
        except Exception as exc:  # a value pydicom read but cannot convert
            self.grains_invalid += 1
            self.stats.frames_dropped += 1
            self._warn(f"dropped a grain: unreadable RTV Meta Information ({exc!r})")
            return
        self.stats.frames_complete += 1
        grain = RtvGrain(
            dataset=ds, part10=part10, rtp_ts=ts, capture_ns=capture_ns, flow=flow, source=source
        )
        try:
            self.on_grain(grain)
        except Exception:
            log.exception("dicom-rtv metadata: handling a grain failed")
