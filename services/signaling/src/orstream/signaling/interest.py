"""Telling the encoders what this edge's peers watch, so they encode only that (``.interest``).

Every interval, and at once when a stream gains its first peer or loses its last, the edge sends
each stream's watched renditions with the highest bitrate its peers report they can take (REMB;
0 when any peer has not said, which leaves the encoder at its configured rate). A stream that
lost its last peer gets one withdrawal (an empty map), so its encoder stops without waiting for
the entry to lapse.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from orstream.common.bus import Bus
from orstream.common.messages import Interest
from orstream.common.runner import cancel_and_wait
from orstream.common.subjects import StreamId
from orstream.common.telemetry import Counters
from orstream.signaling.fanout import StreamFanout

log = logging.getLogger(__name__)

#: Watchers' entries lapse at the encoder after this many silent intervals.
TTL_INTERVALS = 4


def peers_can_take(fanout: StreamFanout) -> int:
    """The best REMB among the fan-out's peers, or 0 when any has not reported one."""
    estimates = [track.remb_bps for track in fanout.tracks]
    if not estimates or min(estimates) <= 0:
        return 0
    return max(estimates)


class InterestReporter:
    def __init__(
        self,
        bus: Bus,
        edge_id: str,
        fanouts: Callable[[], Iterable[StreamFanout]],
        interval_s: float,
        counters: Counters,
    ) -> None:
        self.bus = bus
        self.edge_id = edge_id
        self.fanouts = fanouts
        self.interval_s = interval_s
        self.counters = counters
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    def _interest(self) -> dict[StreamId, dict[str, int]]:
        out: dict[StreamId, dict[str, int]] = {}
        for fanout in self.fanouts():
            if fanout.tracks:
                out.setdefault(fanout.stream, {})[fanout.rendition] = peers_can_take(fanout)
        return out

    async def _publish(self, stream: StreamId, renditions: dict[str, int]) -> None:
        message = Interest(
            self.edge_id, renditions, ttl_ms=round(self.interval_s * TTL_INTERVALS * 1000)
        )
        try:
            await self.bus.publish(stream.interest(), message.encode())
        except Exception as exc:  # NATS away: the next interval tries again
            self.counters.add("interest_publish_errors")
            log.warning("%s: interest not sent: %s", stream, exc)

    def changed(self, stream: StreamId) -> None:
        """A stream gained its first peer or lost its last: tell its encoder now."""
        renditions = self._interest().get(stream, {})
        task = asyncio.get_running_loop().create_task(self._publish(stream, renditions))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _run(self) -> None:
        while True:
            for stream, renditions in self._interest().items():
                await self._publish(stream, renditions)
            await asyncio.sleep(self.interval_s)
