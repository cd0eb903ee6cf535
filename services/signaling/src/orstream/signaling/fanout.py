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
from collections import deque
from fractions import Fraction

import av
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import metrics

from orstream.common.bus import Bus
from orstream.common.messages import AccessUnitMeta, MessageError
from orstream.common.observability import (
    EDGE_SENT,
    HOP_EDGE_RECEIVE,
    HOP_EDGE_SEND,
    HOP_EDGE_SEND_PEER10,
    HOP_VIEWER,
    KEYFRAME_REQUESTS,
)
from orstream.common.subjects import SOURCE_RENDITION, StreamId
from orstream.common.telemetry import HOP_WINDOW, Counters, FrameCounts, HopLatency
from orstream.signaling.tracing import FrameTrace
from orstream.signaling.track import DELIVERY_RANK, AccessUnit, AccessUnitTrack, DeliveryLatency

log = logging.getLogger(__name__)


class StreamLatency:
    """The edge's hops and counts for one stream rendition; outlives fan-outs so ``/stats``
    keeps its history."""

    def __init__(self, stream: StreamId, rendition: str = SOURCE_RENDITION) -> None:
        attrs = {
            "site": stream.site,
            "room": stream.room,
            "stream": stream.stream,
            "rendition": rendition,
        }
        self.attributes = attrs
        #: AU published by the encoder → received by the edge.
        self.bus = HopLatency(HOP_EDGE_RECEIVE, attrs)
        #: AU received by the edge → its last RTP packet sent to its last peer (once per AU).
        self.send = HopLatency(HOP_EDGE_SEND, attrs)
        #: … and to its 10th peer (the budget's figure), beside the last one.
        self.delivery = DeliveryLatency(
            DELIVERY_RANK, HopLatency(HOP_EDGE_SEND_PEER10, attrs), self.send, self._delivered
        )
        #: Sent to a peer → the peer presented it (sampled frames whose receipt came back).
        self.viewer = HopLatency(HOP_VIEWER, attrs)
        #: Per AU: in, out (reached a peer) and dropped (reached none).
        self.frames = FrameCounts("edge", attrs)
        #: Per peer and AU: what a peer was not sent (slow, or waiting for a keyframe).
        self.peer_frames = FrameCounts("edge.peer", attrs)
        self._sent_bytes = metrics.get_meter("orstream").create_counter(
            EDGE_SENT, unit="By", description="Media bytes sent to peers (AU payloads)"
        )
        #: (capture_ns, last RTP packet to the last peer) per AU, for per-frame joins.
        self._delivered_at: deque[tuple[int, int]] = deque(maxlen=HOP_WINDOW)

    def _delivered(self, unit: AccessUnit) -> None:
        if not unit.peers_sent:
            self.frames.dropped("no_peer_sent")
            return
        self.frames.sent()
        self._sent_bytes.add(unit.packet.size * unit.peers_sent, self.attributes)
        self._delivered_at.append((unit.meta.capture_ns, unit.last_sent_ns))

    def delivered_at(self, since_ns: int = 0) -> list[tuple[int, int]]:
        """``(capture_ns, sent_ns)`` of each AU captured since ``since_ns`` that reached a peer."""
        return [(c, d) for c, d in list(self._delivered_at) if c >= since_ns]

    def hops(self, since_ns: int = 0) -> dict[str, dict[str, float]]:
        return {
            HOP_EDGE_RECEIVE: self.bus.summary(since_ns),
            HOP_EDGE_SEND: self.send.summary(since_ns),
            HOP_EDGE_SEND_PEER10: self.delivery.ranked.summary(since_ns),
            HOP_VIEWER: self.viewer.summary(since_ns),
        }


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
        self.latency = latency
        self.bus_latency = latency.bus
        self.send_latency = latency.send
        self.delivery = latency.delivery
        self._keyframe_requests = metrics.get_meter("orstream").create_counter(
            KEYFRAME_REQUESTS, description="Keyframe requests, by stage and outcome"
        )
        self._keyframe_attributes = {
            "site": stream.site,
            "room": stream.room,
            "stream": stream.stream,
            "stage": "edge",
        }
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
        track.frames = self.latency.peer_frames
        self.tracks.add(track)
        self.request_keyframe()  # a new peer needs an IDR to start
        return track

    def adopt(self, track: AccessUnitTrack) -> None:
        """Feed a track that another fan-out fed until now (a rendition switch), from an IDR."""
        track.rebind(self.request_keyframe)
        track.frames = self.latency.peer_frames
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
        self._keyframe_requests.add(1, {**self._keyframe_attributes, "outcome": "coalesced"})
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
        self._keyframe_requests.add(1, {**self._keyframe_attributes, "outcome": "sent"})
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
            self.latency.frames.dropped("malformed")
            log.warning("%s: %s", msg.subject, exc)
            return
        self.bus_latency.record((received_ns - meta.published_ns) / 1e6, meta.capture_ns)
        self.counters.add("aus_in")
        self.latency.frames.received()
        if meta.key:
            self._keyframe_arrived()
        if not self.tracks:
            self.latency.frames.dropped("no_peers")
            return
        packet = av.Packet(msg.data)
        packet.pts = meta.pts
        packet.dts = meta.pts
        packet.time_base = VIDEO_TIME_BASE
        if meta.key:
            packet.is_keyframe = True
        trace = FrameTrace.of(meta, received_ns, self.latency.attributes)
        unit = AccessUnit(packet, meta, received_ns, self.delivery, trace)
        for track in self.tracks:
            track.push(unit)
        if unit.pending == 0:  # no peer took it (all waiting for a keyframe): settled already
            unit.settle()
