"""A peer's video track fed with already-encoded access units, so aiortc only packetizes.

Each peer has a bounded queue of AUs. A peer that cannot keep up (its queue fills) loses what is
queued and skips ahead to the next keyframe, so it recovers with a clean picture and never holds
back the other peers. A new peer starts at a keyframe too.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from orstream.common.messages import AccessUnitMeta
from orstream.common.telemetry import Counters, HopLatency


@dataclass(frozen=True, slots=True)
class AccessUnit:
    """One encoded AU as the edge received it; ``packet`` is shared by every peer."""

    packet: av.Packet[Any]
    meta: AccessUnitMeta
    received_ns: int


class AccessUnitTrack(MediaStreamTrack):
    kind = "video"

    def __init__(
        self,
        queue_limit: int,
        request_keyframe: Callable[[], None],
        send_latency: HopLatency,
        counters: Counters,
    ) -> None:
        super().__init__()
        self._queue: deque[AccessUnit] = deque()
        self._limit = queue_limit
        self._ready = asyncio.Event()
        self._need_keyframe = True
        self._request_keyframe = request_keyframe
        self._in_flight: AccessUnit | None = None
        self._send_latency = send_latency
        self._counters = counters
        #: The peer's receiver estimated maximum bitrate (REMB), bit/s; 0 until it says.
        self.remb_bps = 0

    def push(self, unit: AccessUnit) -> None:
        """Queue an AU (called by the fan-out for every AU of the stream)."""
        if self.readyState != "live":
            return
        if self._need_keyframe:
            if not unit.meta.key:
                self._counters.add("aus_skipped_waiting_keyframe")
                return
            self._need_keyframe = False
        if len(self._queue) >= self._limit:
            dropped = len(self._queue)
            self._queue.clear()
            self._counters.add("aus_dropped_slow_peer", dropped)
            if not unit.meta.key:
                self._need_keyframe = True
                self._request_keyframe()
                self._counters.add("aus_skipped_waiting_keyframe")
                return
        self._queue.append(unit)
        self._ready.set()

    def keyframe_needed(self) -> None:
        """The peer lost the picture (PLI/FIR): ask the encoder for an IDR."""
        self._request_keyframe()

    async def recv(self) -> av.Packet[Any]:
        # aiortc calls recv() again right after the previous AU's last RTP packet went out:
        # that moment closes the edge hop of the previous AU.
        if self._in_flight is not None:
            done_ns = time.time_ns()
            self._send_latency.record(
                (done_ns - self._in_flight.received_ns) / 1e6, self._in_flight.meta.capture_ns
            )
            self._in_flight = None
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        unit = self._queue.popleft()
        self._in_flight = unit
        return unit.packet

    def stop(self) -> None:
        super().stop()
        self._ready.set()
