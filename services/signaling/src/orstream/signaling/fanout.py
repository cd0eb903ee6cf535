"""Encode-once fan-out: one NATS subscription per watched stream rendition, every AU to every peer.

::

    NATS .enc.<rendition> ──► StreamFanout._on_au ──► one AccessUnit (av.Packet, RTP payloads once)
                                                         ├─► AccessUnitTrack (peer 1, bounded queue)
                                                         ├─► AccessUnitTrack (peer 2) ...
    PLI/FIR, joins, slow peers ──► request_keyframe ──► at most one .keyframe per interval

Keyframe requests from any number of peers (PLI/FIR, a joining peer, a slow peer skipping ahead)
become at most one ``.keyframe`` message per interval. While a request is still unanswered
(no IDR arrived since it went out) later ones are already served by it; a request that comes
within the interval after its IDR arrived is deferred to the end of the interval, not dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from fractions import Fraction

import av
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from orstream.common.bus import Bus
from orstream.common.messages import AccessUnitMeta, MessageError
from orstream.common.subjects import SOURCE_RENDITION, StreamId
from orstream.common.telemetry import Counters, HopLatency
from orstream.signaling.track import DELIVERY_RANK, AccessUnit, AccessUnitTrack, DeliveryLatency

log = logging.getLogger(__name__)


class StreamLatency:
    """The edge's hops for one stream; outlives fan-outs so ``/stats`` keeps its history."""

    def __init__(self, stream: StreamId) -> None:
        attrs = {"site": stream.site, "room": stream.room, "stream": stream.stream}
        #: AU published by the encoder → received by the edge.
        self.bus = HopLatency("nats", attrs)
        #: AU received by the edge → its last RTP packet sent to its last peer (once per AU).
        self.send = HopLatency("edge", attrs)
        #: … and to its 10th peer (the budget's figure), beside the last one.
        self.delivery = DeliveryLatency(
            DELIVERY_RANK, HopLatency(f"edge_peer{DELIVERY_RANK}", attrs), self.send
        )


VIDEO_TIME_BASE = Fraction(1, 90_000)


class StreamFanout:
    """The edge's end of one stream rendition: a subscription and the tracks it feeds."""

    def __init__(
        self,
        stream: StreamId,
        bus: Bus,
        counters: Counters,
        keyframe_interval_s: float,
        latency: StreamLatency,
        rendition: str = SOURCE_RENDITION,
    ) -> None:
        self.stream = stream
        self.rendition = rendition
        self.bus = bus
        self.counters = counters
        self.bus_latency = latency.bus
        self.send_latency = latency.send
        self.delivery = latency.delivery
        self.tracks: set[AccessUnitTrack] = set()
        self._sub: Subscription | None = None
        self._keyframe_interval_ns = int(keyframe_interval_s * 1e9)
        self._last_keyframe_request_ns = 0
        #: The last request sent has not been answered by an IDR yet.
        self._keyframe_outstanding = False
        self._deferred_request: asyncio.TimerHandle | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(self.stream.encoded(self.rendition), self._on_au)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        if self._deferred_request is not None:
            self._deferred_request.cancel()
            self._deferred_request = None
        for track in list(self.tracks):
            track.stop()
        self.tracks.clear()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def attach(self, queue_limit: int) -> AccessUnitTrack:
        track = AccessUnitTrack(queue_limit, self.request_keyframe, self.counters)
        self.tracks.add(track)
        self.request_keyframe()  # a new peer needs an IDR to start
        return track

    def adopt(self, track: AccessUnitTrack) -> None:
        """Feed a track that another fan-out fed until now (a rendition switch), from an IDR."""
        track.rebind(self.request_keyframe)
        self.tracks.add(track)
        self.request_keyframe()

    def detach(self, track: AccessUnitTrack, stop: bool = True) -> None:
        """Stop feeding ``track``; ``stop=False`` leaves it live for the fan-out adopting it."""
        self.tracks.discard(track)
        if stop:
            track.stop()

    def request_keyframe(self) -> None:
        now = time.monotonic_ns()
        wait_ns = self._last_keyframe_request_ns + self._keyframe_interval_ns - now
        if wait_ns <= 0:
            self._send_keyframe_request()
            return
        self.counters.add("keyframe_requests_coalesced")
        if self._keyframe_outstanding or self._deferred_request is not None:
            return  # the IDR asked for (or about to be asked for) serves this one too
        self._deferred_request = asyncio.get_running_loop().call_later(
            wait_ns / 1e9, self._send_deferred_request
        )

    def _send_deferred_request(self) -> None:
        self._deferred_request = None
        self._send_keyframe_request()

    def _send_keyframe_request(self) -> None:
        if self._deferred_request is not None:
            self._deferred_request.cancel()
            self._deferred_request = None
        self._last_keyframe_request_ns = time.monotonic_ns()
        self._keyframe_outstanding = True
        self.counters.add("keyframe_requests")
        task = asyncio.get_running_loop().create_task(self.bus.publish(self.stream.keyframe()))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _keyframe_arrived(self) -> None:
        self._keyframe_outstanding = False
        if self._deferred_request is not None:  # every peer waiting gets this IDR
            self._deferred_request.cancel()
            self._deferred_request = None

    async def _on_au(self, msg: Msg) -> None:
        received_ns = time.time_ns()
        try:
            meta = AccessUnitMeta.from_headers(msg.headers)
        except MessageError as exc:
            self.counters.add("aus_malformed")
            log.warning("%s: %s", msg.subject, exc)
            return
        self.bus_latency.record((received_ns - meta.published_ns) / 1e6, meta.capture_ns)
        self.counters.add("aus_in")
        if meta.key:
            self._keyframe_arrived()
        if not self.tracks:
            return
        packet = av.Packet(msg.data)
        packet.pts = meta.pts
        packet.dts = meta.pts
        packet.time_base = VIDEO_TIME_BASE
        if meta.key:
            packet.is_keyframe = True
        unit = AccessUnit(packet, meta, received_ns, self.delivery)
        for track in self.tracks:
            track.push(unit)
