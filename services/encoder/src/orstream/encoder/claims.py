"""Leases on streams in the encoder bucket (JetStream KV), so replicas share a host's streams.

A lease is a key whose revision keeps moving: the owner rewrites its claim every heartbeat
(compare-and-set on the revision it holds), and every replica watches the bucket. A claim whose
revision has not moved for ``lease_s`` *as observed locally* is expired, whatever any clock says,
so clock skew between hosts does not matter. Taking a claim over is again a compare-and-set on
the revision seen, so of two replicas racing for a stream exactly one wins. Replicas announce
their presence the same way, so each knows how many share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from orstream.common.messages import EncoderClaim, MessageError, ReplicaPresence
from orstream.common.runner import cancel_and_wait
from orstream.common.subjects import StreamId, replica_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Seen:
    """A key's latest revision and when this replica saw it appear."""

    holder: str
    revision: int
    seen_s: float


class ClaimBook:
    """This replica's view of who encodes what, and the moves it may make."""

    def __init__(self, kv: KeyValue, site: str, replica: str, lease_s: float) -> None:
        self.kv = kv
        self.site = site
        self.replica = replica
        self.lease_s = lease_s
        self._claims: dict[StreamId, Seen] = {}
        self._replicas: dict[str, tuple[Seen, ReplicaPresence]] = {}
        #: Revisions of this replica's own claims (what the next renewal must match).
        self._mine: dict[StreamId, int] = {}
        self._watch: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    async def start(self) -> None:
        watcher = await self.kv.watch(f"*.{self.site}.>")
        self._watch = asyncio.create_task(self._follow(watcher))
        await self._synced.wait()

    async def stop(self) -> None:
        await cancel_and_wait(self._watch)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the initial values are all in
                self._synced.set()
                continue
            now = time.monotonic()
            kind, _, rest = entry.key.partition(".")
            deleted = entry.operation in (KV_DEL, KV_PURGE) or not entry.value
            if kind == "claim":
                try:
                    stream = StreamId.parse(rest)
                except ValueError:
                    continue
                if deleted:
                    self._claims.pop(stream, None)
                    continue
                try:
                    holder = EncoderClaim.decode(entry.value).replica
                except MessageError as exc:
                    log.warning("encoder bucket %s: %s", entry.key, exc)
                    holder = ""
                self._claims[stream] = Seen(holder, entry.revision or 0, now)
            elif kind == "replica":
                name = rest.partition(".")[2]
                if deleted:
                    self._replicas.pop(name, None)
                    continue
                try:
                    presence = ReplicaPresence.decode(entry.value)
                except MessageError as exc:
                    log.warning("encoder bucket %s: %s", entry.key, exc)
                    continue
                self._replicas[name] = (Seen(name, entry.revision or 0, now), presence)

    # -- what this replica sees -----------------------------------------------------------

    def _live(self, seen: Seen, now: float) -> bool:
        return now - seen.seen_s < self.lease_s

    def live_replicas(self) -> dict[str, ReplicaPresence]:
        """Every replica whose presence is renewed, as it last described itself."""
        now = time.monotonic()
        return {
            name: presence
            for name, (seen, presence) in self._replicas.items()
            if self._live(seen, now)
        }

    def holder(self, stream: StreamId) -> str | None:
        """The replica holding a live claim on ``stream`` (None: free for the taking)."""
        if stream in self._mine:
            return self.replica
        seen = self._claims.get(stream)
        if seen is None or not self._live(seen, time.monotonic()):
            return None
        return seen.holder

    def mine(self) -> set[StreamId]:
        return set(self._mine)

    # -- moves ----------------------------------------------------------------------------

    async def announce(self, presence: ReplicaPresence) -> None:
        presence.renewed_ns = time.time_ns()
        await self.kv.put(replica_key(self.site, self.replica), presence.encode())

    async def withdraw(self) -> None:
        with contextlib.suppress(Exception):
            await self.kv.delete(replica_key(self.site, self.replica))

    async def claim(self, stream: StreamId, claim: EncoderClaim) -> bool:
        """Take ``stream`` if nobody holds a live claim on it; False if another replica won."""
        if self.holder(stream) is not None:
            return False
        claim.renewed_ns = time.time_ns()
        seen = self._claims.get(stream)
        try:
            if seen is None:
                revision = await self.kv.create(stream.claim_key, claim.encode())
            else:
                revision = await self.kv.update(
                    stream.claim_key, claim.encode(), last=seen.revision
                )
        except KeyWrongLastSequenceError:
            landed = await self._still_mine(stream)
            if landed is None:
                return False
            revision = landed
        self._mine[stream] = revision
        if seen is not None and seen.holder != self.replica:
            log.warning(
                "took over %s from %s (claim not renewed for %.1f s)",
                stream,
                seen.holder or "?",
                time.monotonic() - seen.seen_s,
            )
        return True

    async def renew(self, stream: StreamId, claim: EncoderClaim) -> bool:
        """Extend this replica's lease; False when another replica has taken the stream.

        Raises what NATS raises when the bucket cannot be reached (the caller fences itself).
        """
        revision = self._mine.get(stream)
        if revision is None:
            return False
        claim.renewed_ns = time.time_ns()
        try:
            self._mine[stream] = await self.kv.update(
                stream.claim_key, claim.encode(), last=revision
            )
        except KeyWrongLastSequenceError:
            current = await self._still_mine(stream)
            if current is None:
                del self._mine[stream]
                return False
            self._mine[stream] = current
        return True

    async def _still_mine(self, stream: StreamId) -> int | None:
        """After a revision mismatch: a write of ours that timed out may still have landed.
        Returns the current revision if the claim names this replica."""
        try:
            entry = await self.kv.get(stream.claim_key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            holder = EncoderClaim.decode(entry.value).replica
        except MessageError:
            return None
        return entry.revision if holder == self.replica else None

    def relinquish(self, stream: StreamId) -> int | None:
        """Stop renewing ``stream``; returns the revision to :meth:`delete` once its worker is
        gone (until then, or if that never comes, the lease runs out by itself)."""
        return self._mine.pop(stream, None)

    async def delete(self, stream: StreamId, revision: int) -> None:
        """Give ``stream`` back at once, unless someone took it meanwhile."""
        with contextlib.suppress(Exception):
            await self.kv.delete(stream.claim_key, last=revision)

    def forget(self) -> set[StreamId]:
        """Drop every claim without touching the bucket (this replica lost contact)."""
        lost = set(self._mine)
        self._mine.clear()
        return lost
