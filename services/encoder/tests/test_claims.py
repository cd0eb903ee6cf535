"""Leases in the encoder bucket on a real nats-server: one holder per stream, take-over when a
holder stops renewing, immediate hand-back, and a renewal that notices it lost the stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from orstream.common.bus import Bus
from orstream.common.messages import EncoderClaim, ReplicaPresence
from orstream.common.subjects import ENCODER_BUCKET, StreamId
from orstream.encoder.claims import ClaimBook

pytestmark = pytest.mark.integration

LEASE_S = 0.6


@pytest.fixture
async def books(nats_url: str) -> AsyncIterator[tuple[ClaimBook, ClaimBook, str]]:
    site = f"c{uuid.uuid4().hex[:8]}"
    bus = await Bus.connect(nats_url, "claims-test")
    kv = await bus.key_value(ENCODER_BUCKET, history=1)
    a = ClaimBook(kv, site, "replica-a", LEASE_S)
    b = ClaimBook(kv, site, "replica-b", LEASE_S)
    await a.start()
    await b.start()
    yield a, b, site
    await a.stop()
    await b.stop()
    await bus.close()


async def _until(predicate: object, timeout_s: float = 3.0) -> None:
    assert callable(predicate)
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_one_replica_wins_a_stream_and_the_other_sees_it(
    books: tuple[ClaimBook, ClaimBook, str],
) -> None:
    a, b, site = books
    stream = StreamId(site, "or1", "endo")
    won = await asyncio.gather(
        a.claim(stream, EncoderClaim(replica="replica-a")),
        b.claim(stream, EncoderClaim(replica="replica-b")),
    )
    assert sorted(won) == [False, True], "exactly one of two racing replicas gets the stream"
    winner, loser = (a, b) if won[0] else (b, a)
    await _until(lambda: loser.holder(stream) == winner.replica)
    assert await winner.renew(stream, EncoderClaim(replica=winner.replica))
    assert not await loser.claim(stream, EncoderClaim(replica=loser.replica))


async def test_a_claim_not_renewed_for_the_lease_is_taken_over_and_the_old_holder_learns_it(
    books: tuple[ClaimBook, ClaimBook, str],
) -> None:
    a, b, site = books
    stream = StreamId(site, "or1", "endo")
    assert await a.claim(stream, EncoderClaim(replica="replica-a"))
    await _until(lambda: b.holder(stream) == "replica-a")
    for _ in range(3):  # renewed: stays with a
        await asyncio.sleep(LEASE_S / 3)
        assert await a.renew(stream, EncoderClaim(replica="replica-a"))
    assert b.holder(stream) == "replica-a"
    await asyncio.sleep(LEASE_S * 1.2)  # a stops renewing (as if dead)
    assert b.holder(stream) is None
    assert await b.claim(stream, EncoderClaim(replica="replica-b"))
    assert not await a.renew(stream, EncoderClaim(replica="replica-a")), "a lost it"
    assert a.mine() == set() and b.mine() == {stream}


async def test_a_released_stream_is_free_at_once(books: tuple[ClaimBook, ClaimBook, str]) -> None:
    a, b, site = books
    stream = StreamId(site, "or2", "cam")
    assert await a.claim(stream, EncoderClaim(replica="replica-a"))
    await _until(lambda: b.holder(stream) == "replica-a")
    revision = a.relinquish(stream)
    assert revision is not None
    await a.delete(stream, revision)
    await _until(lambda: b.holder(stream) is None, timeout_s=LEASE_S / 2)
    assert await b.claim(stream, EncoderClaim(replica="replica-b"))


async def test_presence_tells_each_replica_how_many_share_the_work(
    books: tuple[ClaimBook, ClaimBook, str],
) -> None:
    a, b, site = books
    await a.announce(ReplicaPresence(replica="replica-a"))
    await b.announce(ReplicaPresence(replica="replica-b"))
    await _until(lambda: set(b.live_replicas()) == {"replica-a", "replica-b"})
    await a.announce(ReplicaPresence(replica="replica-a", streams=3, rooms=["or1"]))
    await _until(lambda: b.live_replicas()["replica-a"].streams == 3)
    assert b.live_replicas()["replica-a"].rooms == ["or1"]
    await b.withdraw()
    await _until(lambda: set(a.live_replicas()) == {"replica-a"})
