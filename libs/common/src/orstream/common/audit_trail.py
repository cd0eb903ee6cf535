"""The audit trail every service writes to: JetStream stream ``AUDIT``, and optionally syslog.

::

    record(rec) ──► bounded queue ──► publisher task ──┐
    await write(rec) ──────────────────────────────────┴──► js.publish(audit.<site>.<kind>)
                                                             ──► AUDIT (file storage, acked)
    (both) ──► SyslogForwarder.send, if configured: a copy for the hospital's collector

- :meth:`AuditTrail.record` never blocks and never raises for want of NATS: the record waits in
  a bounded queue (full: dropped, counted ``audit_dropped``, logged as an error) and one task
  publishes it with a JetStream ack, retrying briefly (``audit_written``, or ``audit_errors``
  and the record's XML in the log, so even a lost record leaves a trace).
- :meth:`AuditTrail.write` is for a caller that must know: it returns once the stream has the
  record (``True``) or every attempt failed (``False``); it does not raise either.
- Each message carries ``Content-Type: application/xml`` and ``Nats-Msg-Id`` = the record's id,
  so a publish retried after a lost ack is stored once (within the stream's duplicate window).

The stream keeps everything (no age or size limit: retention is the hospital's policy, set by
its operators on the stream) and refuses deletes and purges through the API. In production it
has 3 replicas and the servers run with ``sync_interval: always`` (deployment config).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nats.js.api import Header, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from orstream.common.audit import AuditRecord, Outcome
from orstream.common.bus import Bus
from orstream.common.messages import HDR_CONTENT_TYPE
from orstream.common.runner import cancel_and_wait
from orstream.common.subjects import AUDIT_STREAM, AUDIT_SUBJECTS, check_token
from orstream.common.syslog import SyslogForwarder
from orstream.common.telemetry import Counters

log = logging.getLogger(__name__)

AUDIT_CONTENT_TYPE = "application/xml"
#: Records waiting to be published; beyond this new ones are dropped (and counted).
QUEUE_SIZE = 4096
#: How long one publish waits for the stream's ack.
ACK_TIMEOUT_S = 2.0
#: Publishes per record (same message id each time) before it counts as an error.
PUBLISH_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.2
#: Window in which JetStream drops a second message with the same ``Nats-Msg-Id``.
DUPLICATE_WINDOW_S = 120.0
STOP_TIMEOUT_S = 5.0
#: At most one "dropped" log line per interval (the counter has every one).
DROP_LOG_INTERVAL_S = 5.0
#: JetStream's error code for "stream name already in use" (another replica created it first).
_STREAM_NAME_IN_USE = 10058


class AuditTrail:
    """Writes :class:`AuditRecord` s of ``site`` to the ``AUDIT`` stream (and to syslog).

    ``source_id`` names this service instance (AuditSourceID of the records it builds). The trail
    owns the ``syslog`` forwarder it is given: :meth:`start` and :meth:`stop` start and stop it.
    """

    def __init__(
        self,
        bus: Bus,
        site: str,
        source_id: str,
        *,
        replicas: int = 1,
        syslog: SyslogForwarder | None = None,
        counters: Counters | None = None,
        queue_size: int = QUEUE_SIZE,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        publish_attempts: int = PUBLISH_ATTEMPTS,
    ) -> None:
        if replicas < 1:
            raise ValueError("audit stream replicas must be at least 1")
        self.bus = bus
        self.site = check_token(site, "site")
        self.source_id = source_id
        self.replicas = replicas
        self.syslog = syslog
        self._counters = counters or Counters("orstream")
        self._ack_timeout_s = ack_timeout_s
        self._attempts = max(1, publish_attempts)
        #: Each record with its XML, made once for the stream and syslog alike.
        self._queue: asyncio.Queue[tuple[AuditRecord, bytes]] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._last_drop_log = -DROP_LOG_INTERVAL_S
        self._drops_unlogged = 0
        self.written = self.errors = self.dropped = 0

    async def start(self) -> None:
        """Make sure the stream exists, then publish (records queued before now too)."""
        await self.ensure_stream()
        if self.syslog is not None:
            await self.syslog.start()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit trail")

    async def ensure_stream(self) -> None:
        """Create ``AUDIT`` if it is missing; an existing one is kept, with ``audit.>`` added
        to its subjects if need be (storage and replicas are the operators' to change)."""
        js = self.bus.js
        try:
            info = await js.stream_info(AUDIT_STREAM)
        except NotFoundError:
            config = StreamConfig(
                name=AUDIT_STREAM,
                description="orstream audit trail: DICOM PS3.15 A.5 audit messages",
                subjects=[AUDIT_SUBJECTS],
                storage=StorageType.FILE,
                num_replicas=self.replicas,
                retention=RetentionPolicy.LIMITS,
                duplicate_window=DUPLICATE_WINDOW_S,
                deny_delete=True,
                deny_purge=True,
            )
            try:
                await js.add_stream(config)
                log.info("audit: created stream %s (%d replicas)", AUDIT_STREAM, self.replicas)
                return
            except BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                info = await js.stream_info(AUDIT_STREAM)
        config = info.config
        if config.storage != StorageType.FILE:
            log.error("audit: stream %s is not on file storage (%s)", AUDIT_STREAM, config.storage)
        if config.num_replicas != self.replicas:
            log.warning(
                "audit: stream %s has %s replicas, configured %d; left as it is",
                AUDIT_STREAM,
                config.num_replicas,
                self.replicas,
            )
        subjects = list(config.subjects or [])
        if AUDIT_SUBJECTS not in subjects:
            config.subjects = [*subjects, AUDIT_SUBJECTS]
            await js.update_stream(config)
            log.info("audit: stream %s now also takes %s", AUDIT_STREAM, AUDIT_SUBJECTS)

    def record(self, rec: AuditRecord) -> bool:
        """Queue ``rec`` for the stream (and send it to syslog); never blocks. ``False`` if it
        was dropped: the queue is full or the trail stopped."""
        payload = self._serialize(rec)
        if self._stopped:
            self._drop(rec, "the audit trail is stopped")
            return False
        try:
            self._queue.put_nowait((rec, payload))
        except asyncio.QueueFull:
            self._drop(rec, "the audit queue is full")
            return False
        return True

    async def write(self, rec: AuditRecord) -> bool:
        """Publish ``rec`` now and wait for the stream's ack: ``True`` once stored, ``False``
        if every attempt failed (logged and counted)."""
        return await self._publish(rec, self._serialize(rec))

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Publish what is queued, for up to ``timeout_s``; what is left then is dropped."""
        self._stopped = True
        if self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout_s)
        await cancel_and_wait(self._task)
        self._task = None
        while not self._queue.empty():
            self._drop(self._queue.get_nowait()[0], "not published before stop")
        if self.syslog is not None:
            await self.syslog.stop()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "audit_written": self.written,
            "audit_errors": self.errors,
            "audit_dropped": self.dropped,
            "audit_queued": self._queue.qsize(),
        }
        if self.syslog is not None:
            out["audit_syslog"] = self.syslog.stats()
        return out

    async def _run(self) -> None:
        while True:
            rec, payload = await self._queue.get()
            try:
                await self._publish(rec, payload)
            except asyncio.CancelledError:
                self._drop(rec, "publish cut short by stop")
                raise
            finally:
                self._queue.task_done()

    async def _publish(self, rec: AuditRecord, payload: bytes) -> bool:
        headers = {HDR_CONTENT_TYPE: AUDIT_CONTENT_TYPE, Header.MSG_ID.value: rec.record_id}
        failure: Exception | None = None
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)
            try:
                await self.bus.js.publish(
                    rec.subject,
                    payload,
                    timeout=self._ack_timeout_s,
                    stream=AUDIT_STREAM,
                    headers=headers,
                )
            except Exception as exc:  # timeout, no responders, disconnected, closed
                failure = exc
                continue
            self.written += 1
            self._counters.add("audit_written")
            return True
        self.errors += 1
        self._counters.add("audit_errors")
        log.error(
            "audit: record %s NOT STORED on %s after %d attempts (%r); its content: %s",
            rec.record_id,
            rec.subject,
            self._attempts,
            failure,
            payload.decode("utf-8", "replace"),
        )
        return False

    def _serialize(self, rec: AuditRecord) -> bytes:
        """The record's XML, also handed to syslog. A record of another site is a bug in the
        caller (its subject would be outside this site's permissions): ``ValueError``."""
        if rec.site != self.site:
            raise ValueError(
                f"audit record of site {rec.site!r} given to the trail of {self.site!r}"
            )
        payload = rec.to_xml()
        if self.syslog is not None:
            self.syslog.send(payload, failure=rec.outcome != Outcome.SUCCESS)
        return payload

    def _drop(self, rec: AuditRecord, why: str) -> None:
        self.dropped += 1
        self._drops_unlogged += 1
        self._counters.add("audit_dropped")
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            log.error(
                "audit: %d record(s) DROPPED (%s), the last: %s on %s",
                self._drops_unlogged,
                why,
                rec.record_id,
                rec.subject,
            )
            self._last_drop_log = now
            self._drops_unlogged = 0
