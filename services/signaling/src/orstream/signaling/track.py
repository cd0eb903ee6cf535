"""A peer's video track fed with already-encoded access units, so aiortc only packetizes.

Every peer of a fan-out gets the same :class:`AccessUnit` object: one ``av.Packet``, and once the
first peer's sender has split it into RTP payloads, those payloads too (``remb.py``), so an AU is
packetized once however many peers watch. The AU also counts its deliveries, which times the
edge's budget hop "AU received → last RTP packet sent to the 10th peer" and the edge hop (to the
last peer), once per AU: what the edge spends per peer and AU stays with aiortc's sender.

Each peer has a bounded queue of AUs. A peer that cannot keep up (its queue fills) loses what is
queued and skips ahead to the next keyframe, so it recovers with a clean picture and never holds
back the other peers. A new peer, or one moved to another rendition, starts at a keyframe too.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from orstream.common.messages import AccessUnitMeta
from orstream.common.telemetry import Counters, FrameCounts, HopLatency

if TYPE_CHECKING:
    from orstream.signaling.tracing import FrameTrace

#: Each AU's delivery is timed to this many peers (the budget's "10th peer").
DELIVERY_RANK = 10

#: An AU as aiortc's H.264 packetizer returns it: RTP payloads and the 90 kHz timestamp.
RtpPayloads = tuple[list[bytes], int]


@dataclass(frozen=True, slots=True)
class DeliveryLatency:
    """Per AU: received by the edge → its last RTP packet sent to the ``rank``-th peer, and to
    the last of its peers (peers that dropped it are not waited for; with one peer, to that
    one). Each is recorded once per AU, however many peers it has."""

    rank: int
    ranked: HopLatency
    last: HopLatency
    #: Called once per AU when every peer is done with it (``peers_sent`` may be 0).
    delivered: Callable[[AccessUnit], None] | None = None


class AccessUnit:
    """One encoded AU as the edge received it, shared by every peer of its fan-out."""

    __slots__ = (
        "_dropped",
        "_last_sent_ns",
        "_pending",
        "_sent",
        "delivery",
        "meta",
        "packet",
        "received_ns",
        "rtp",
        "trace",
    )

    def __init__(
        self,
        packet: av.Packet[Any],
        meta: AccessUnitMeta,
        received_ns: int,
        delivery: DeliveryLatency | None = None,
        trace: FrameTrace | None = None,
    ) -> None:
        self.packet = packet
        self.meta = meta
        self.received_ns = received_ns
        self.delivery = delivery
        #: The spans of a sampled frame (``edge.send`` stays open until every peer is done).
        self.trace = trace
        #: The RTP payloads of this AU, set by the first peer's packetizer for the others.
        self.rtp: RtpPayloads | None = None
        self._pending = 0  # peers that queued it and have neither sent nor dropped it
        self._sent = 0
        self._dropped = 0
        self._last_sent_ns = 0

    @property
    def pending(self) -> int:
        """Peers that queued this AU and have neither sent nor dropped it."""
        return self._pending

    @property
    def peers_sent(self) -> int:
        return self._sent

    @property
    def last_sent_ns(self) -> int:
        return self._last_sent_ns

    def queued(self) -> None:
        self._pending += 1

    def dropped(self) -> None:
        self._pending -= 1
        self._dropped += 1
        if not self._pending:
            self.settle()

    def sent(self, done_ns: int) -> None:
        """A peer's sender has sent this AU's last RTP packet at ``done_ns``."""
        self._pending -= 1
        self._sent += 1
        self._last_sent_ns = done_ns
        delivery = self.delivery
        if delivery is not None and self._sent == delivery.rank:
            delivery.ranked.record((done_ns - self.received_ns) / 1e6, self.meta.capture_ns)
        if not self._pending:
            self.settle()

    def settle(self) -> None:
        """Every peer that queued this AU has sent or dropped it (or none queued it)."""
        if self.trace is not None:
            self.trace.sent(self._last_sent_ns or time.time_ns(), self._sent, self._dropped)
        delivery = self.delivery
        if delivery is None:
            return
        if self._sent:
            delivery.last.record(
                (self._last_sent_ns - self.received_ns) / 1e6, self.meta.capture_ns
            )
        if delivery.delivered is not None:
            delivery.delivered(self)


class AccessUnitTrack(MediaStreamTrack):
    kind = "video"

    def __init__(
        self,
        queue_limit: int,
        request_keyframe: Callable[[], None],
        counters: Counters,
    ) -> None:
        super().__init__()
        self._queue: deque[AccessUnit] = deque()
        self._limit = queue_limit
        self._ready = asyncio.Event()
        self._need_keyframe = True
        self._request_keyframe = request_keyframe
        self._counters = counters
        #: The AU aiortc is sending now (returned by the last ``recv``).
        self.in_flight: AccessUnit | None = None
        #: The peer's receiver estimated maximum bitrate (REMB), bit/s; 0 until it says.
        self.remb_bps = 0
        #: Told when this peer has been sent a sampled (traced) AU, with when.
        self.on_traced: Callable[[AccessUnit, int], None] | None = None
        #: The feeding fan-out's frame counts, where this peer's drops are counted.
        self.frames: FrameCounts | None = None

    @property
    def queued(self) -> int:
        """AUs waiting for this peer's sender."""
        return len(self._queue)

    def rebind(self, request_keyframe: Callable[[], None]) -> None:
        """Another fan-out feeds this track from now on: start again at its next keyframe.

        What is queued still goes out, so the picture holds until the new rendition's IDR.
        """
        self._request_keyframe = request_keyframe
        self._need_keyframe = True

    def push(self, unit: AccessUnit) -> None:
        """Queue an AU (called by the fan-out for every AU of the stream)."""
        if self.readyState != "live":
            return
        if self._need_keyframe:
            if not unit.meta.key:
                self._counters.add("aus_skipped_waiting_keyframe")
                self._count_dropped("awaiting_keyframe", 1)
                return
            self._need_keyframe = False
        if len(self._queue) >= self._limit:
            dropped = self._drop_queue()
            self._counters.add("aus_dropped_slow_peer", dropped)
            self._count_dropped("slow_peer", dropped)
            if not unit.meta.key:
                self._need_keyframe = True
                self._request_keyframe()
                self._counters.add("aus_skipped_waiting_keyframe")
                self._count_dropped("awaiting_keyframe", 1)
                return
        unit.queued()
        self._queue.append(unit)
        self._ready.set()

    def _count_dropped(self, reason: str, count: int) -> None:
        if self.frames is not None and count:
            self.frames.dropped(reason, count)

    def keyframe_needed(self) -> None:
        """The peer lost the picture (PLI/FIR): ask the encoder for an IDR."""
        self._request_keyframe()

    async def recv(self) -> av.Packet[Any]:
        # aiortc calls recv() again right after the previous AU's last RTP packet went out:
        # that moment is when this peer has had the previous AU.
        if self.in_flight is not None:
            done_ns = time.time_ns()
            self.in_flight.sent(done_ns)
            if self.in_flight.trace is not None and self.on_traced is not None:
                self.on_traced(self.in_flight, done_ns)
            self.in_flight = None
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        unit = self._queue.popleft()
        self.in_flight = unit
        return unit.packet

    def stop(self) -> None:
        if self.readyState == "live":
            self._drop_queue()
            if self.in_flight is not None:  # its sender stops before it can say it is done
                self.in_flight.dropped()
                self.in_flight = None
        super().stop()
        self._ready.set()

    def _drop_queue(self) -> int:
        dropped = len(self._queue)
        for unit in self._queue:
            unit.dropped()
        self._queue.clear()
        return dropped
