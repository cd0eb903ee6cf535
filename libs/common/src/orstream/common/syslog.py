"""Audit records to a hospital's syslog collector (ATNA audit record repository), RFC 5424.

One message per record, as IHE ATNA sends them::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM<AuditMessage …>
    <85>1 2026-11-21T09:30:47.123456Z edge-7 orstream-signaling 12 IHE+RFC-3881 - \\ufeff<?xml …

- PRI: facility authpriv (10); severity notice (5), or warning (4) when the audited event failed.
- TIMESTAMP: RFC 3339 in UTC with microseconds; STRUCTURED-DATA: none (``-``); MSG: a UTF-8
  byte order mark, then the record's XML.

Transports, chosen by the setting's scheme (``ORSTREAM_AUDIT_SYSLOG``):

- ``udp://host[:514]``: one message per datagram (RFC 5426); nothing confirms delivery.
- ``tcp://host[:601]``: octet-counting framing, ``MSG-LEN SP SYSLOG-MSG`` (RFC 6587).
- ``tls://host[:6514]``: the same framing over TLS (RFC 5425), verified against the system's
  CAs unless an ``ssl_context`` is given.

:meth:`SyslogForwarder.send` never blocks and never raises: messages wait in a bounded queue
(full: the message is dropped and counted) and one background task writes them, reconnecting
with a bounded backoff. Syslog is a copy for the hospital's collector; the record of truth is
the JetStream ``AUDIT`` stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
import time
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

from orstream.common.runner import cancel_and_wait
from orstream.common.telemetry import Counters

log = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
#: MSGID of audit messages in IHE ATNA (ITI TF-2 3.20.4.2).
ATNA_MSGID = "IHE+RFC-3881"
NILVALUE = "-"
BOM = b"\xef\xbb\xbf"
DEFAULT_PORTS = {"udp": 514, "tcp": 601, "tls": 6514}
#: Largest payload of one UDP datagram over IPv4; bigger messages are dropped and counted.
MAX_DATAGRAM_BYTES = 65_507
#: Messages waiting for the collector; beyond this new ones are dropped (and counted).
QUEUE_SIZE = 1024
CONNECT_TIMEOUT_S = 3.0
WRITE_TIMEOUT_S = 3.0
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
#: Tries per message (each after a reconnect) before it is dropped.
SEND_ATTEMPTS = 3
STOP_TIMEOUT_S = 2.0
#: At most one "lost" log line per interval (the counters have every one).
LOST_LOG_INTERVAL_S = 5.0

# RFC 5424 field limits (PRINTUSASCII, no spaces).
_HOSTNAME_MAX, _APP_NAME_MAX, _PROCID_MAX, _MSGID_MAX = 255, 48, 128, 32
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _header_field(value: str, limit: int) -> str:
    cleaned = _NOT_PRINTUSASCII.sub("_", value)[:limit]
    return cleaned or NILVALUE


def format_message(
    xml: bytes,
    *,
    failure: bool,
    hostname: str,
    app_name: str,
    procid: str,
    msgid: str = ATNA_MSGID,
    timestamp: datetime | None = None,
) -> bytes:
    """One RFC 5424 syslog message carrying ``xml`` (an audit record) as its MSG."""
    severity = SEVERITY_WARNING if failure else SEVERITY_NOTICE
    when = (timestamp or datetime.now(UTC)).astimezone(UTC)
    header = " ".join(
        [
            f"<{FACILITY_AUTHPRIV * 8 + severity}>1",
            when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            _header_field(hostname, _HOSTNAME_MAX),
            _header_field(app_name, _APP_NAME_MAX),
            _header_field(procid, _PROCID_MAX),
            _header_field(msgid, _MSGID_MAX),
            NILVALUE,
        ]
    )
    return header.encode("ascii") + b" " + BOM + xml


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 octet-counting frame: ``MSG-LEN SP SYSLOG-MSG``."""
    return b"%d " % len(message) + message


class _Connection:
    """One open transport to the collector."""

    async def send(self, message: bytes) -> None:
        raise NotImplementedError

    def broken(self) -> bool:
        return False

    async def close(self) -> None:
        raise NotImplementedError


class _Datagram(_Connection, asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram transport (3.11's selector transport does not subclass the ABC).
        self.transport = cast("asyncio.DatagramTransport", transport)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the collector may come back; nothing to redo.
        log.debug("syslog: udp error %s", exc)

    async def send(self, message: bytes) -> None:
        if len(message) > MAX_DATAGRAM_BYTES:
            raise ValueError(f"{len(message)} bytes do not fit one UDP datagram")
        assert self.transport is not None
        self.transport.sendto(message)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Stream(_Connection):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def broken(self) -> bool:
        # A collector that hung up shows as EOF on our (otherwise unused) read side.
        return self.writer.is_closing() or self.reader.at_eof()

    async def send(self, message: bytes) -> None:
        self.writer.write(octet_counted(message))
        await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT_S)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), WRITE_TIMEOUT_S)


class SyslogForwarder:
    """Forwards audit records to ``url`` (``udp://``, ``tcp://`` or ``tls://host:port``)."""

    def __init__(
        self,
        url: str,
        *,
        app_name: str = "orstream",
        hostname: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        counters: Counters | None = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"syslog target {url!r}: expected udp://, tcp:// or tls://host:port")
        self.url = url
        self.transport = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or DEFAULT_PORTS[parts.scheme]
        self.app_name = app_name
        self.hostname = hostname or socket.gethostname()
        self.procid = str(os.getpid())
        self._ssl = ssl_context
        if self.transport == "tls" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        self._counters = counters or Counters("orstream")
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._connection: _Connection | None = None
        self._stopped = False
        self._last_lost_log = -LOST_LOG_INTERVAL_S
        self._lost_unlogged = 0
        self.sent = self.errors = self.dropped = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"syslog {self.url}")

    def send(self, xml: bytes, *, failure: bool = False) -> bool:
        """Queue one audit record's XML; ``False`` if it had to be dropped. Never raises."""
        if self._stopped:
            self._lost("dropped", "forwarder stopped")
            return False
        try:
            message = format_message(
                xml,
                failure=failure,
                hostname=self.hostname,
                app_name=self.app_name,
                procid=self.procid,
            )
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._lost("dropped", "queue full")
            return False
        except Exception as exc:  # a formatting bug must not reach the audited request
            self._lost("errors", f"cannot format a message: {exc!r}")
            return False
        return True

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Send what is queued (for up to ``timeout_s``), then close; later sends are dropped."""
        self._stopped = True
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout_s)
        await cancel_and_wait(self._task)
        self._task = None
        while not self._queue.empty():
            self._queue.get_nowait()
            self._lost("dropped", "not sent before stop")
        await self._disconnect()

    def stats(self) -> dict[str, Any]:
        return {
            "target": self.url,
            "sent": self.sent,
            "errors": self.errors,
            "dropped": self.dropped,
            "queued": self._queue.qsize(),
        }

    async def _run(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self._deliver(message)
            except asyncio.CancelledError:
                self._lost("dropped", "send cut short by stop")
                raise
            finally:
                self._queue.task_done()

    async def _deliver(self, message: bytes) -> None:
        """Send one message, reconnecting between tries; it ends sent or counted an error."""
        backoff_s = RECONNECT_MIN_S
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                connection = await self._connect()
                await connection.send(message)
            except ValueError as exc:  # can never be sent (too big for a datagram)
                self._lost("errors", str(exc))
                return
            except Exception as exc:  # refused, reset, timed out, TLS: try again
                await self._disconnect()
                if attempt == SEND_ATTEMPTS:
                    self._lost("errors", repr(exc))
                    return
                log.debug("syslog: %s: %r; reconnecting", self.url, exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)
            else:
                self.sent += 1
                self._counters.add("audit_syslog_sent")
                return

    async def _connect(self) -> _Connection:
        if self._connection is not None and not self._connection.broken():
            return self._connection
        await self._disconnect()
        loop = asyncio.get_running_loop()
        connection: _Connection
        if self.transport == "udp":
            _, connection = await loop.create_datagram_endpoint(
                _Datagram, remote_addr=(self.host, self.port)
            )
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self._ssl if self.transport == "tls" else None,
                    server_hostname=self.host if self.transport == "tls" else None,
                ),
                CONNECT_TIMEOUT_S,
            )
            connection = _Stream(reader, writer)
        self._connection = connection
        return connection

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    def _lost(self, how: str, why: str) -> None:
        """Count a message that will not reach the collector (``dropped`` before a send was
        tried, ``errors`` when sending failed); log at most one line per interval."""
        if how == "dropped":
            self.dropped += 1
        else:
            self.errors += 1
        self._counters.add(f"audit_syslog_{how}")
        self._lost_unlogged += 1
        now = time.monotonic()
        if now - self._last_lost_log >= LOST_LOG_INTERVAL_S:
            log.error(
                "syslog: %d audit message(s) for %s lost (last: %s, %s)",
                self._lost_unlogged,
                self.url,
                how,
                why,
            )
            self._last_lost_log = now
            self._lost_unlogged = 0
