"""The NATS connection every service shares: reconnects by itself, drains on stop.

Trace context travels in message headers (W3C ``traceparent``), so one trace can follow one frame
from hop to hop across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue
from opentelemetry import propagate

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.5
CONNECT_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 5
FLUSH_TIMEOUT_S = 2
#: Slow consumers drop rather than grow memory without bound: at most this many pending msgs.
PENDING_MSGS_LIMIT = 4096

Handler = Callable[[Msg], Awaitable[None]]


class Bus:
    """A service's NATS connection with the project's defaults."""

    def __init__(self, nc: Client, name: str) -> None:
        self.nc = nc
        self.name = name
        self.js: JetStreamContext = nc.jetstream()

    @classmethod
    async def connect(cls, url: str, name: str) -> Bus:
        async def on_error(exc: Exception) -> None:
            log.warning("nats: %s", exc)

        async def on_disconnected() -> None:
            log.info("nats: disconnected")

        async def on_reconnected() -> None:
            log.info(
                "nats: reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?"
            )

        nc = await nats.connect(
            servers=[u.strip() for u in url.split(",")],
            name=name,
            connect_timeout=CONNECT_TIMEOUT_S,
            reconnect_time_wait=RECONNECT_WAIT_S,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            drain_timeout=DRAIN_TIMEOUT_S,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
        return cls(nc, name)

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def publish(
        self, subject: str, payload: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        await self.nc.publish(subject, payload, headers=headers)

    async def publish_traced(
        self, subject: str, payload: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        """Publish with the current span's context injected into the headers."""
        carrier: dict[str, str] = dict(headers or {})
        propagate.inject(carrier)
        await self.nc.publish(subject, payload, headers=carrier or None)

    async def subscribe(self, subject: str, handler: Handler, queue: str = "") -> Subscription:
        """Subscribe and wait until the server has the interest registered.

        Without the flush, a message published on another connection right after this returns
        could reach the server before the SUB and be lost: "ready" would not mean ready.
        nats-py writes a flush's PING straight to the socket, possibly ahead of the SUB still in
        its pending buffer; by the first PONG its flusher has written the SUB, so the second
        PING follows it and its PONG means the server has the interest.
        """
        sub = await self.nc.subscribe(
            subject, queue=queue, cb=handler, pending_msgs_limit=PENDING_MSGS_LIMIT
        )
        if self.nc.is_connected:
            try:
                for _ in range(2):
                    await self.nc.flush(timeout=FLUSH_TIMEOUT_S)
            except Exception as exc:  # reconnecting: the SUB is replayed on reconnect anyway
                log.warning("nats: flush after subscribing to %s failed (%s)", subject, exc)
        return sub

    async def key_value(self, bucket: str, **config: Any) -> KeyValue:
        """Open a KV bucket, creating it with ``config`` if it does not exist yet."""
        try:
            return await self.js.key_value(bucket)
        except BucketNotFoundError:
            return await self.js.create_key_value(bucket=bucket, **config)

    async def close(self) -> None:
        """Drain: deliver what is in flight, then close."""
        if self.nc.is_closed:
            return
        try:
            await self.nc.drain()
        except Exception as exc:  # a dead server must not block shutdown
            log.warning("nats: drain failed (%s); closing", exc)
            await self.nc.close()
