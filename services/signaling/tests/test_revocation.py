"""Revocation over a real NATS: ``auth.revoke`` reaches the edge, listeners hear it, tokens are
refused from then on, a later login works, and malformed messages are counted, never fatal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from orstream.common.bus import Bus
from orstream.common.policy import Policy
from orstream.common.subjects import AUTH_REVOKE
from orstream.signaling.auth import AccessDenied, TokenVerifier
from orstream.signaling.jwks import StaticKeys, VerificationKey
from orstream.signaling.revocation import Revocations, parse_revocation, publish_revocation

from .conftest import AUDIENCE

if TYPE_CHECKING:  # the root conftest's provider and keys
    from conftest import Idp, SigningKey

pytestmark = pytest.mark.integration

Event = tuple[str | None, str | None, str]


@pytest.fixture
async def buses(nats_url: str) -> AsyncIterator[tuple[Bus, Bus]]:
    edge = await Bus.connect(nats_url, "test-edge-revocations")
    admin = await Bus.connect(nats_url, "test-identity-admin")
    yield edge, admin
    await admin.close()
    await edge.close()


@pytest.fixture
async def revocations(buses: tuple[Bus, Bus]) -> AsyncIterator[Revocations]:
    revocations = Revocations()
    await revocations.start(buses[0])
    # nats-py writes flush()'s PING straight to the socket, ahead of a SUB still queued for its
    # flusher, so Bus.subscribe's flush alone can return before the server has the interest;
    # by this second one the SUB is on the wire.
    await buses[0].nc.flush()
    yield revocations
    await revocations.stop()


def _listen(revocations: Revocations) -> asyncio.Queue[Event]:
    heard: asyncio.Queue[Event] = asyncio.Queue()

    async def on_revoke(subject: str | None, token_id: str | None, reason: str) -> None:
        await heard.put((subject, token_id, reason))

    revocations.add_listener(on_revoke)
    return heard


def _verifier(idp: Idp, key: SigningKey, revocations: Revocations) -> TokenVerifier:
    keys = StaticKeys([VerificationKey.from_jwk(key.jwk())])
    return TokenVerifier(keys, idp.issuer, AUDIENCE, [key.alg], Policy.load(), revocations)


async def test_revoking_a_subject_ends_its_tokens_until_it_logs_in_again(
    idp: Idp,
    signing_keys: dict[str, SigningKey],
    buses: tuple[Bus, Bus],
    revocations: Revocations,
) -> None:
    key = signing_keys["ES256"]
    verifier = _verifier(idp, key, revocations)
    heard = _listen(revocations)
    earlier = int(time.time()) - 60
    before = idp.token(key, sub="alice", iat=earlier, nbf=earlier)
    bob = idp.token(key, sub="bob", iat=earlier, nbf=earlier)
    assert (await verifier.verify(before)).subject == "alice"
    await publish_revocation(buses[1], sub="alice", reason="left the hospital")
    assert await asyncio.wait_for(heard.get(), timeout=5) == ("alice", None, "left the hospital")
    with pytest.raises(AccessDenied) as denied:
        await verifier.verify(before)
    assert (
        denied.value.status == 401 and "'alice' revoked (left the hospital)" in denied.value.reason
    )
    assert (await verifier.verify(bob)).subject == "bob", "other subjects are untouched"
    later = int(time.time()) + 1  # a login after the revocation
    assert (await verifier.verify(idp.token(key, sub="alice", iat=later))).subject == "alice"


async def test_revoking_one_token_id_leaves_the_subjects_other_tokens(
    idp: Idp,
    signing_keys: dict[str, SigningKey],
    buses: tuple[Bus, Bus],
    revocations: Revocations,
) -> None:
    key = signing_keys["EdDSA"]
    verifier = _verifier(idp, key, revocations)
    heard = _listen(revocations)
    leaked = idp.token(key, jti="leaked-7")
    await publish_revocation(buses[1], jti="leaked-7", reason="leaked", exp=int(time.time()) + 300)
    assert await asyncio.wait_for(heard.get(), timeout=5) == (None, "leaked-7", "leaked")
    with pytest.raises(AccessDenied, match="token revoked"):
        await verifier.verify(leaked)
    assert (await verifier.verify(idp.token(key, jti="fresh-8"))).token_id == "fresh-8"


async def test_malformed_messages_are_counted_and_the_next_one_still_works(
    buses: tuple[Bus, Bus], revocations: Revocations
) -> None:
    heard = _listen(revocations)
    bad: list[bytes] = [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"reason": "neither sub nor jti"}',
        b'{"sub": 42}',
        b'{"jti": "x", "exp": "tomorrow"}',
        b'{"sub": "' + b"a" * 5000 + b'"}',
    ]
    for body in bad:
        await buses[1].publish(AUTH_REVOKE, body)
    await publish_revocation(buses[1], sub="zoe", jti="t-9")
    assert await asyncio.wait_for(heard.get(), timeout=5) == ("zoe", "t-9", "")
    assert heard.empty()
    counts = revocations.counters.snapshot()
    assert (counts["revocations_malformed"], counts["revocations"]) == (len(bad), 1)


async def test_a_failing_listener_does_not_stop_the_others(
    buses: tuple[Bus, Bus], revocations: Revocations
) -> None:
    def broken(subject: str | None, token_id: str | None, reason: str) -> None:
        raise RuntimeError("session manager bug")

    revocations.add_listener(broken)
    heard = _listen(revocations)
    await publish_revocation(buses[1], sub="yan", reason="test")
    assert await asyncio.wait_for(heard.get(), timeout=5) == ("yan", None, "test")
    assert revocations.counters.snapshot()["revocation_listener_errors"] == 1
    assert revocations.refusal("yan", "", int(time.time()) - 5) is not None


async def test_revocations_are_bounded_and_expire() -> None:
    now = [1_000_000.0]
    revocations = Revocations(retain_s=100, max_entries=3, clock=lambda: now[0])
    for i in range(5):
        await revocations.revoke(jti=f"t{i}", reason="bulk")
    refused = [revocations.refusal("s", f"t{i}", 0) is not None for i in range(5)]
    assert refused == [False, False, True, True, True], "the oldest were evicted"
    await revocations.revoke(jti="short", exp=now[0] + 10)
    await revocations.revoke(sub="sam")
    assert revocations.refusal("x", "short", 0) and revocations.refusal("sam", "", int(now[0]))
    now[0] += 11
    assert revocations.refusal("x", "short", 0) is None, "kept only until the token's exp"
    now[0] += 100
    assert revocations.refusal("sam", "", 0) is None, "forgotten once its tokens are dead"
    assert not revocations.refusal("", "", 0), "an empty jti or subject matches nothing"


def test_revocation_bodies_are_parsed_strictly() -> None:
    assert parse_revocation(b'{"sub": "a", "reason": "r"}') == {
        "sub": "a",
        "jti": None,
        "reason": "r",
        "exp": None,
    }
    for body, why in [
        (b'{"sub": ""}', "neither"),
        (b'{"jti": null}', "neither"),
        (b'{"sub": "a", "exp": true}', "exp must be a number"),
        (b'{"jti": ["a"]}', "jti must be a string"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_revocation(body)


async def test_publishing_needs_a_subject_or_a_token_id(buses: tuple[Bus, Bus]) -> None:
    with pytest.raises(ValueError, match="sub"):
        await publish_revocation(buses[1], reason="nobody")
    revocations = Revocations()
    with pytest.raises(ValueError, match="sub"):
        await revocations.revoke(reason="nobody")
