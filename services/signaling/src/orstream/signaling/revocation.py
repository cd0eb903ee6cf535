"""Tokens and subjects revoked before their tokens expire, heard on ``auth.revoke``.

A bearer token stays valid until ``exp``; when a user leaves, or a token leaks, an identity
admin publishes ``{"sub": …, "jti": …, "reason": …}`` (at least one of ``sub``/``jti``) and
every edge refuses it at once and tells its listeners, so open sessions end now too.

- a token id is refused until that token would have expired (``exp`` in the message, else
  ``retain_s``, the longest a token lives);
- a subject is refused for tokens issued at or before the revocation; logging in again works.

Both tables are bounded (``max_entries``): the oldest entries go first. Revocations live in
memory: an edge started later does not know earlier ones.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from orstream.common.bus import Bus
from orstream.common.subjects import AUTH_REVOKE
from orstream.common.telemetry import Counters
from orstream.common.tokens import DEFAULT_TOKEN_TTL_S

log = logging.getLogger(__name__)

#: How long a revocation is kept when the message does not say when the token expires: the
#: longest life of a token (development tokens live 12 h; providers issue shorter ones).
DEFAULT_RETAIN_S = 2.0 * DEFAULT_TOKEN_TTL_S
DEFAULT_MAX_ENTRIES = 100_000
#: A revocation message larger than this is malformed.
MAX_MESSAGE_BYTES = 4096

#: ``on_revoke(subject, token_id, reason)``; may be a coroutine function; its result is ignored.
RevokeCallback = Callable[[str | None, str | None, str], object]


class Revocations:
    """Revoked token ids and subjects, fed by ``auth.revoke``, asked by the token verifier."""

    def __init__(
        self,
        counters: Counters | None = None,
        *,
        retain_s: float = DEFAULT_RETAIN_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.counters = counters or Counters("orstream.edge")
        self._retain_s = retain_s
        self._max_entries = max_entries
        self._clock = clock  # wall clock: compared with the tokens' iat
        self._tokens: dict[str, tuple[float, str]] = {}  # jti -> (forget at, reason)
        self._subjects: dict[str, tuple[float, float, str]] = {}  # sub -> (at, forget at, why)
        self._listeners: list[RevokeCallback] = []
        self._subscription: Subscription | None = None

    def add_listener(self, callback: RevokeCallback) -> None:
        """Call ``callback(subject, token_id, reason)`` on every revocation (e.g. end sessions)."""
        self._listeners.append(callback)

    async def start(self, bus: Bus) -> None:
        self._subscription = await bus.subscribe(AUTH_REVOKE, self._on_message)

    async def stop(self) -> None:
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # a closed connection has no subscriptions left anyway
                log.debug("unsubscribing from %s: %s", AUTH_REVOKE, exc)

    def refusal(self, subject: str, token_id: str, issued_at: int) -> str | None:
        """Why a token must be refused, or ``None`` if it is not revoked."""
        now = self._clock()
        if token_id and (entry := self._tokens.get(token_id)) and entry[0] > now:
            return f"token revoked ({entry[1] or 'no reason given'})"
        if (entry2 := self._subjects.get(subject)) and entry2[1] > now and issued_at <= entry2[0]:
            return f"sessions of {subject!r} revoked ({entry2[2] or 'no reason given'})"
        return None

    async def revoke(
        self,
        *,
        sub: str | None = None,
        jti: str | None = None,
        reason: str = "",
        exp: float | None = None,
    ) -> None:
        """Record a revocation, then tell the listeners (one failing listener stops no other)."""
        if not sub and not jti:
            raise ValueError("a revocation names a subject (sub), a token id (jti) or both")
        now = self._clock()
        if jti:
            until = min(exp, now + self._retain_s) if exp is not None else now + self._retain_s
            self._tokens[jti] = (until, reason)
            self._bound(self._tokens, now, lambda entry: entry[0])
        if sub:
            earlier = self._subjects.get(sub)
            at = max(now, earlier[0]) if earlier else now
            self._subjects[sub] = (at, now + self._retain_s, reason)
            self._bound(self._subjects, now, lambda entry: entry[1])
        self.counters.add("revocations")
        log.info("revoked: sub=%s jti=%s (%s)", sub, jti, reason or "no reason given")
        for callback in list(self._listeners):
            try:
                result = callback(sub or None, jti or None, reason)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self.counters.add("revocation_listener_errors")
                log.exception("revocation listener %r failed", callback)

    async def _on_message(self, msg: Msg) -> None:
        try:
            fields = parse_revocation(msg.data)
        except ValueError as exc:
            self.counters.add("revocations_malformed")
            log.warning("malformed %s message dropped: %s", AUTH_REVOKE, exc)
            return
        await self.revoke(**fields)

    def _bound(self, table: dict[str, Any], now: float, forget_at: Callable[[Any], float]) -> None:
        if len(table) <= self._max_entries:
            return
        for key in [k for k, entry in table.items() if forget_at(entry) <= now]:
            del table[key]
        while len(table) > self._max_entries:  # still full of live entries: oldest first
            del table[next(iter(table))]
            self.counters.add("revocations_evicted")


def parse_revocation(data: bytes) -> dict[str, Any]:
    """``{"sub", "jti", "reason", "exp"}`` of an ``auth.revoke`` body; ``ValueError`` if bad."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    sub, jti, reason, exp = (body.get(k) for k in ("sub", "jti", "reason", "exp"))
    for name, value in (("sub", sub), ("jti", jti), ("reason", reason)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
    if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)):
        raise ValueError("exp must be a number (seconds since the epoch)")
    if not sub and not jti:
        raise ValueError("names neither sub nor jti")
    return {"sub": sub or None, "jti": jti or None, "reason": reason or "", "exp": exp}


async def publish_revocation(
    bus: Bus,
    *,
    sub: str | None = None,
    jti: str | None = None,
    reason: str = "",
    exp: int | None = None,
) -> None:
    """Revoke a subject's tokens and/or one token on every edge (``exp``: when it expires)."""
    if not sub and not jti:
        raise ValueError("a revocation names a subject (sub), a token id (jti) or both")
    body: dict[str, Any] = {"reason": reason}
    if sub:
        body["sub"] = sub
    if jti:
        body["jti"] = jti
    if exp is not None:
        body["exp"] = exp
    await bus.publish(AUTH_REVOKE, json.dumps(body).encode())
