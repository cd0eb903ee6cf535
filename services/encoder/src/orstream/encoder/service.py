"""The encoder service: a replica that claims a fair share of its host's streams and runs one
worker process per claimed stream.

Every heartbeat the replica renews its presence and its claims, gives back streams that stopped,
claims free ones up to its fair share (streams ÷ live replicas), and hands one stream per
rebalance interval to a less busy replica when it holds more than its share. A replica only
claims streams of its site and rooms whose ring it can see (the ring is on this host). When it
cannot renew for most of a lease it stops its workers itself, so two replicas never encode the
same stream for long. On shutdown it stops its workers and deletes its claims, so others take
over at once; if it dies, they take over when its leases run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import math
import socket
import time
from typing import Any

from orstream.common.messages import (
    EncoderClaim,
    MessageError,
    ReplicaPresence,
    StreamDescriptor,
    StreamState,
)
from orstream.common.registry import Registry
from orstream.common.runner import ServiceContext, cancel_and_wait
from orstream.common.shm import SHM_DIR
from orstream.common.subjects import ENCODER_BUCKET, StreamId
from orstream.common.telemetry import Counters, merge_prometheus_texts, prometheus_text
from orstream.encoder.claims import ClaimBook
from orstream.encoder.processes import WorkerProcess
from orstream.encoder.settings import EncoderSettings

log = logging.getLogger(__name__)

#: Share of the lease after which a replica that could not renew stops its workers.
FENCE_SHARE = 0.8


class EncoderService:
    name = "encoder"
    uses_bus = True
    uses_health_port = True

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self.counters = Counters("orstream.encoder")
        self.streams: dict[StreamId, StreamDescriptor] = {}
        self.workers: dict[StreamId, WorkerProcess] = {}
        self.book: ClaimBook | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Workers being stopped (and their claims deleted) without holding up the heartbeat.
        self._stopping: set[asyncio.Task[None]] = set()
        self._last_renewed_s = time.monotonic()
        self._last_rebalance_s = time.monotonic()
        self._ticks = 0
        #: When each eligible stream was first seen without a holder.
        self._free_since: dict[StreamId, float] = {}

    async def start(self, ctx: ServiceContext) -> None:
        bus = ctx.require_bus()
        registry = await Registry.open(bus)
        self.book = ClaimBook(
            await bus.key_value(ENCODER_BUCKET, history=1),
            self.settings.site,
            self.settings.replica,
            self.settings.lease_s,
        )
        await self.book.start()
        for descriptor in await registry.all():
            self._note(descriptor)
        self._tasks = [
            asyncio.create_task(self._follow_registry(registry)),
            asyncio.create_task(self._heartbeat()),
        ]
        ctx.stack.push_async_callback(self._stop)
        log.info(
            "replica %s on %s: rooms %s, renditions %s",
            self.settings.replica,
            self.host,
            ",".join(self.settings.rooms),
            ", ".join(r.name for r in self.settings.renditions),
        )

    def _note(self, descriptor: StreamDescriptor) -> None:
        if descriptor.site != self.settings.site:
            return
        try:
            stream = StreamId(descriptor.site, descriptor.room, descriptor.stream)
        except ValueError:
            return
        self.streams[stream] = descriptor

    async def _follow_registry(self, registry: Registry) -> None:
        watcher = await registry.kv.watchall(include_history=False)
        async for entry in watcher:
            if entry is None:
                continue
            if not entry.value:
                with contextlib.suppress(ValueError):
                    self.streams.pop(StreamId.parse(entry.key), None)
                continue
            try:
                self._note(StreamDescriptor.decode(entry.value))
            except MessageError as exc:
                self.counters.add("registry_malformed")
                log.warning("registry %s: %s", entry.key, exc)

    # -- the heartbeat --------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            try:
                # bounded, so a bucket that stops answering is noticed before the lease runs out
                await asyncio.wait_for(self._tick(), self.settings.lease_s * FENCE_SHARE)
            except Exception as exc:  # NATS away or slow: keep trying; fencing covers the gap
                self.counters.add("heartbeat_errors")
                log.warning("heartbeat: %s", exc or type(exc).__name__)
            self._fence_if_stale()
            await asyncio.sleep(self.settings.heartbeat_s)

    def eligible(self) -> list[StreamId]:
        """Streams this replica may encode: live, in its rooms, with their ring on this host."""
        return sorted(
            (
                stream
                for stream, d in self.streams.items()
                if d.state != StreamState.STOPPED
                and any(fnmatch.fnmatchcase(stream.room, glob) for glob in self.settings.rooms)
                and (SHM_DIR / d.ring).exists()
            ),
            key=str,
        )

    def _claim_record(self, stream: StreamId) -> EncoderClaim:
        worker = self.workers.get(stream)
        return EncoderClaim(
            replica=self.settings.replica,
            host=self.host,
            codecs={r.name: r.codec for r in self.settings.renditions},
            bitrates={r.name: r.bitrate_bps for r in self.settings.renditions},
            reason=worker.refusal if worker is not None else "",
        )

    def _presence(self) -> ReplicaPresence:
        return ReplicaPresence(
            replica=self.settings.replica,
            host=self.host,
            rooms=self.settings.rooms,
            max_streams=self.settings.max_streams,
            streams=len(self.workers),
        )

    async def _tick(self) -> None:
        book = self.book
        assert book is not None
        self._ticks += 1
        me = self._presence()
        await book.announce(me)
        for stream in sorted(book.mine(), key=str):
            if not await book.renew(stream, self._claim_record(stream)):
                self.counters.add("claims_lost")
                log.warning("%s: claim lost to another replica; stopping its worker", stream)
                self._release(stream)
        self._last_renewed_s = time.monotonic()
        eligible = self.eligible()
        for stream in book.mine() - set(eligible):
            log.info("%s: stream stopped or gone; releasing it", stream)
            self._release(stream)
        if self._ticks < 2:
            return  # one heartbeat to hear the other replicas before claiming
        # Replicas on this host with the same rooms compete for the same streams: share evenly.
        peers = {n: p for n, p in book.live_replicas().items() if p.scope == me.scope}
        peers[me.replica] = me
        fair = math.ceil(len(eligible) / len(peers))
        now = time.monotonic()
        for stream in [s for s in self._free_since if s not in eligible]:
            del self._free_since[stream]
        for stream in eligible:
            if book.holder(stream) is not None:
                self._free_since.pop(stream, None)
                continue
            free_s = now - self._free_since.setdefault(stream, now)
            # Beyond the fair share only for a stream nobody else has taken for a lease (a
            # replica that cannot take it: other rooms, another host, at its limit).
            share = fair if free_s < self.settings.lease_s + self.settings.heartbeat_s else None
            mine = len(book.mine())
            if (share is not None and mine >= share) or not me.has_room():
                continue
            if await book.claim(stream, self._claim_record(stream)):
                self.counters.add("claims_taken")
                self._free_since.pop(stream, None)
                self._start_worker(stream)
                me = self._presence()
        self._rebalance(peers, fair)

    def _rebalance(self, peers: dict[str, ReplicaPresence], fair: int) -> None:
        """Hand one stream to a less busy replica when this one holds more than its share."""
        assert self.book is not None
        now = time.monotonic()
        mine = self.book.mine()
        if (
            len(mine) <= fair
            or now - self._last_rebalance_s < self.settings.rebalance_s
            or not any(
                p.streams < fair and p.has_room()
                for name, p in peers.items()
                if name != self.settings.replica
            )
        ):
            return
        self._last_rebalance_s = now
        stream = max(mine, key=str)
        log.info(
            "%s: handing over to a less busy replica (%d > fair share %d)", stream, len(mine), fair
        )
        self.counters.add("claims_handed_over")
        self._release(stream)

    def _fence_if_stale(self) -> None:
        """Could not renew for most of a lease: others may take over, so stop encoding now."""
        if self.book is None or not self.workers:
            return
        if time.monotonic() - self._last_renewed_s < self.settings.lease_s * FENCE_SHARE:
            return
        lost = self.book.forget()
        log.error("cannot renew claims; stopping %d worker(s) before others take over", len(lost))
        self.counters.add("claims_fenced", len(lost))
        for stream in lost:
            self._release(stream)

    # -- workers --------------------------------------------------------------------------

    def _start_worker(self, stream: StreamId) -> None:
        worker = WorkerProcess(stream, self.settings, self.counters)
        self.workers[stream] = worker
        worker.start()
        log.info("%s: claimed by %s", stream, self.settings.replica)

    def _release(self, stream: StreamId) -> None:
        """Stop the stream's worker, then delete the claim (if still ours) so another replica
        can take it at once; in the background, so other claims are renewed meanwhile."""
        assert self.book is not None
        revision = self.book.relinquish(stream)
        worker = self.workers.pop(stream, None)
        task = asyncio.create_task(self._finish_release(stream, worker, revision))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def _finish_release(
        self, stream: StreamId, worker: WorkerProcess | None, revision: int | None
    ) -> None:
        if worker is not None:
            await worker.stop()
        if revision is not None and self.book is not None:
            await self.book.delete(stream, revision)

    async def _stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        if self.book is not None:
            for stream in list(self.workers):
                self._release(stream)
            await asyncio.gather(*self._stopping, return_exceptions=True)
            await self.book.withdraw()
            await self.book.stop()

    # -- health ---------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.book is not None

    async def metrics(self) -> bytes:
        """The replica's own metrics and every worker's, as one Prometheus exposition."""
        texts = await asyncio.gather(*(w.metrics() for w in self.workers.values()))
        return merge_prometheus_texts(
            [prometheus_text().decode(), *(text for text in texts if text is not None)]
        )

    async def stats(self, since_ns: int) -> dict[str, Any]:
        streams = list(self.workers.items())
        replies = await asyncio.gather(*(w.stats(since_ns) for _, w in streams))
        counters = self.counters.snapshot()
        out: dict[str, Any] = {}
        for (stream, worker), reply in zip(streams, replies, strict=True):
            entry: dict[str, Any] = {"pid": worker.pid, "starts": worker.starts, "up": worker.up}
            if worker.refusal:
                entry["refused"] = worker.refusal
            if reply:
                entry.update(reply.get("stream", {}))
                for name, value in reply.get("counters", {}).items():
                    counters[name] = counters.get(name, 0) + value
            out[str(stream)] = entry
        return {
            "replica": self.settings.replica,
            "streams": out,
            "replicas": {
                name: presence.streams
                for name, presence in (self.book.live_replicas() if self.book else {}).items()
            },
            "counters": counters,
        }
