"""RFC 4175 raw video over RTP (SMPTE ST 2110-20): line segments reassembled into ring slots.

Each RTP payload is a 2-byte extended sequence number, then one or more segment headers, then
the segments' pixel data in the same order::

    | ext seq (16) | length (16) | F | line (15) | C | offset (15) | ...more headers if C... |
    | data of segment 1 | data of segment 2 | ...

A frame is every packet with one RTP timestamp; the marker bit ends it. Packets are written
straight into the ring slot of the frame being received (no intermediate frame buffer). A frame
is committed only if its packets came in sequence, their segments covered the picture in raster
order up to its last byte and the marker was seen; otherwise the slot is aborted and the frame
counted as dropped, so a torn frame never reaches a reader.

The loop below is the per-packet hot path of the whole system (~80 k packets/s at 720p50
10-bit): it keeps work per packet to a few struct unpacks and one slice copy, and never touches
the event loop except once per completed frame.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from orstream.common.shm import RingWriter, SlotWrite
from orstream.ingest.flow import IDLE_POLL_S, MAX_DATAGRAM_BYTES, FlowReceiver
from orstream.ingest.rtp import FIXED, FIXED_BYTES, MARKER, SEQ_MOD
from orstream.ingest.sdp import RawVideo

log = logging.getLogger(__name__)

SEGMENT = struct.Struct("!HHH")  # length, F|line, C|offset
HALF_SEQ = SEQ_MOD // 2
#: A new SSRC is accepted after the current one has been silent this long (sender restarted).
SSRC_TAKEOVER_NS = 1_000_000_000
#: This many late packets in a row means the sender's sequence jumped back: resynchronise.
LATE_RESYNC = 32

#: Called from the receive thread for each committed frame: seq, capture_ns, slot, rtp_ts.
FrameCallback = Callable[[int, int, int, int], None]


class Rfc4175Receiver(FlowReceiver):
    """Receives one RFC 4175 flow on ``sock`` into ``ring``; :meth:`run` is a thread's body."""

    name = "rfc4175"

    def __init__(
        self,
        sock: socket.socket,
        video: RawVideo,
        payload_type: int,
        ring: RingWriter,
        on_frame: FrameCallback,
        sources: tuple[str, ...] = (),
    ) -> None:
        super().__init__(sock, payload_type, sources)
        self.video = video
        self.ring = ring
        self.on_frame = on_frame

    def _complain(self, why: str) -> None:
        self.stats.packets_malformed += 1
        self._warn(f"dropped a malformed packet ({why}); {self.stats.packets_malformed} so far")

    def _receive(self, stop: threading.Event) -> None:
        video = self.video
        stats = self.stats
        ring = self.ring
        width, height = video.width, video.height
        pix_fmt = video.pix_fmt
        line_bytes = video.line_bytes
        frame_bytes = video.frame_bytes
        pg_bytes, pg_pixels = video.pgroup_bytes, video.pgroup_pixels
        pt = self.payload_type
        sources = self.sources
        sock = self.sock
        pkt = bytearray(MAX_DATAGRAM_BYTES)
        mv = memoryview(pkt)
        unpack_fixed = FIXED.unpack_from
        unpack_segment = SEGMENT.unpack_from
        recv_into = sock.recv_into
        recvfrom_into = sock.recvfrom_into

        seq = 0  # frame seq of this stream (gaps where frames were dropped)
        pending: SlotWrite | None = None
        slot_mv: memoryview | None = None
        frame_ts = -1
        received = 0
        damaged = True
        capture_ns = 0
        ssrc = -1
        ssrc_seen_ns = 0
        expected = -1  # next RTP sequence number; -1 until (re)joined
        late_run = 0

        def drop() -> None:
            """The open frame cannot be completed: free its slot, count it."""
            nonlocal pending, slot_mv
            if pending is not None:
                stats.frames_dropped += 1
                slot_mv = None
                pending.abort()
                pending = None

        try:
            while not stop.is_set():
                try:
                    if sources:
                        n, addr = recvfrom_into(pkt)
                        if addr[0] not in sources:
                            stats.packets_foreign += 1
                            continue
                    else:
                        n = recv_into(pkt)
                except BlockingIOError:
                    select.select([sock], [], [], IDLE_POLL_S)
                    continue
                except OSError as exc:
                    if stop.is_set():
                        break
                    log.warning("rfc4175: receive failed: %s", exc)
                    time.sleep(IDLE_POLL_S)
                    continue
                stats.packets += 1
                stats.bytes += n
                if n < FIXED_BYTES + 8:
                    self._complain(f"{n}-byte datagram")
                    continue
                b0, b1, rtp_seq, ts, pkt_ssrc = unpack_fixed(pkt, 0)
                if b0 & 0xC0 != 0x80:
                    self._complain(f"RTP version {b0 >> 6}")
                    continue
                if b1 & 0x7F != pt:
                    stats.packets_foreign += 1
                    continue
                now_ns = time.monotonic_ns()
                if pkt_ssrc != ssrc:
                    if ssrc != -1 and now_ns - ssrc_seen_ns < SSRC_TAKEOVER_NS:
                        stats.packets_foreign += 1  # a second sender on our port
                        continue
                    if ssrc != -1:
                        log.info("rfc4175: sender changed SSRC %08x -> %08x", ssrc, pkt_ssrc)
                    ssrc = pkt_ssrc
                    drop()
                    expected = -1
                    frame_ts = -1
                elif now_ns - ssrc_seen_ns > SSRC_TAKEOVER_NS:
                    # The sender was silent: it may have restarted with new sequence numbers.
                    drop()
                    expected = -1
                    frame_ts = -1
                ssrc_seen_ns = now_ns
                off = FIXED_BYTES + 4 * (b0 & 0x0F)
                if b0 & 0x10:
                    if off + 4 > n:
                        self._complain("truncated header extension")
                        continue
                    off += 4 + 4 * ((pkt[off + 2] << 8) | pkt[off + 3])
                end = n - pkt[n - 1] if b0 & 0x20 else n
                if off + 8 > end:
                    self._complain("no room for the payload header")
                    continue
                # Loss is judged on the 16-bit RTP sequence number: some senders step the extended
                # sequence number out of phase with the wrap, and at 100 k packets/s 16 bits still
                # span over half a second.
                off += 2
                # Find the end of the segment headers (continuation bit clear on the last).
                data = off + 6
                while data <= end and pkt[data - 2] & 0x80:
                    data += 6
                if data > end:
                    self._complain("segment headers run past the packet")
                    if ts == frame_ts:
                        damaged = True
                    continue
                if expected != -1 and (rtp_seq - expected) & 0xFFFF >= HALF_SEQ:
                    # Late or duplicated: already counted as lost (or already used); it must
                    # not start a "new frame" that would abort the one being received. A long
                    # run of them means the sender jumped back: follow it.
                    stats.packets_late += 1
                    late_run += 1
                    if late_run < LATE_RESYNC:
                        continue
                    drop()
                    expected = -1
                    frame_ts = -1
                late_run = 0
                if ts != frame_ts:
                    _, line0, offset0 = unpack_segment(pkt, off)
                    line0 &= 0x7FFF
                    if line0 >= height or (offset0 & 0x7FFF) // pg_pixels * pg_bytes >= line_bytes:
                        self._complain(f"segment line {line0} outside the picture")
                        continue  # garbage, not the start of a frame: the open frame goes on
                    # A new frame: the previous one, if still open, lost its marker packet.
                    drop()
                    joined = expected == -1
                    if not joined and rtp_seq != expected:
                        gap = (rtp_seq - expected) & 0xFFFF
                        stats.packets_lost += gap if gap < HALF_SEQ else 0
                    frame_ts = ts
                    received = 0
                    if line0 or offset0 & 0x7FFF:
                        # The frame's first packet is missing (or we joined mid-frame).
                        damaged = True
                        if not joined:
                            stats.frames_dropped += 1
                    else:
                        damaged = False
                        capture_ns = time.time_ns()
                        pending = ring.begin(seq)
                        seq += 1
                        slot_mv = pending.data
                elif rtp_seq != expected:
                    gap = (rtp_seq - expected) & 0xFFFF
                    stats.packets_lost += gap if gap < HALF_SEQ else 0  # else late or duplicate
                    damaged = True
                expected = (rtp_seq + 1) & 0xFFFF
                if not damaged and slot_mv is not None:
                    headers_end = data
                    while off < headers_end:
                        length, line, offset = unpack_segment(pkt, off)
                        off += 6
                        line &= 0x7FFF
                        offset &= 0x7FFF
                        start = offset // pg_pixels * pg_bytes
                        if (
                            line >= height
                            or offset % pg_pixels
                            or length % pg_bytes
                            or start + length > line_bytes
                            or data + length > end
                        ):
                            self._complain(f"segment line {line} offset {offset} length {length}")
                            damaged = True
                            break
                        dst = line * line_bytes + start
                        if dst != received:
                            # Out of raster order, overlapping or repeated: the byte count
                            # could no longer prove the picture complete.
                            damaged = True
                            break
                        slot_mv[dst : dst + length] = mv[data : data + length]
                        data += length
                        received += length
                if b1 & MARKER:
                    if not damaged and received == frame_bytes and pending is not None:
                        done = pending
                        slot_mv = None
                        pending = None
                        done.commit(capture_ns, frame_bytes, width, height, pix_fmt)
                        stats.frames_complete += 1
                        self.on_frame(done.seq, capture_ns, done.slot, ts)
                    else:
                        drop()
                    frame_ts = -1
                    damaged = True
        finally:
            if pending is not None:
                slot_mv = None
                pending.abort()
            mv.release()
