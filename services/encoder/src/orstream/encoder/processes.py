"""A stream's worker process, seen from the supervisor: started, watched, restarted, stopped.

A worker that dies is restarted after a backoff that doubles while it keeps dying (and resets
once it has run a while); one that refuses its stream (an encoder that will not open) is retried
only after the longest backoff, with its reason kept for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import sys
import time
from typing import Any

from orstream.common.process import die_with_parent
from orstream.common.subjects import StreamId
from orstream.common.telemetry import Counters
from orstream.encoder.control import EXIT_REFUSED
from orstream.encoder.settings import EncoderSettings

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
STATS_TIMEOUT_S = 2.0
#: A control line may carry the worker's whole Prometheus text (tens of kB per rendition).
CONTROL_LINE_LIMIT = 8 * 1024 * 1024
#: A worker that ran this long before dying starts the backoff afresh.
HEALTHY_RUN_S = 10.0


class WorkerProcess:
    def __init__(
        self,
        stream: StreamId,
        settings: EncoderSettings,
        counters: Counters,
    ) -> None:
        self.stream = stream
        self.settings = settings
        self.counters = counters
        #: Why the worker last refused or failed; cleared once a worker is up again.
        self.refusal = ""
        self.starts = 0
        #: The running worker has started (it answers stats requests from then on).
        self.up = False
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"worker-{self.stream}")

    async def _supervise(self) -> None:
        backoff = self.settings.restart_backoff_s
        while not self._stopping.is_set():
            started = time.monotonic()
            code = await self._run_once()
            if self._stopping.is_set():
                return
            ran_s = time.monotonic() - started
            if code == EXIT_REFUSED:
                self.counters.add("workers_refused")
                delay = self.settings.restart_backoff_max_s
                log.error(
                    "%s: worker refused (%s); retrying in %g s", self.stream, self.refusal, delay
                )
            else:
                if ran_s >= HEALTHY_RUN_S:
                    backoff = self.settings.restart_backoff_s
                self.counters.add("worker_restarts")
                delay = backoff
                backoff = min(backoff * 2, self.settings.restart_backoff_max_s)
                log.error(
                    "%s: worker exited with %s after %.1f s%s; restarting in %g s",
                    self.stream,
                    code,
                    ran_s,
                    f" ({self.refusal})" if self.refusal else "",
                    delay,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self) -> int | None:
        self.up = False
        self.starts += 1
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "orstream.encoder.worker",
                self.stream.key,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                preexec_fn=die_with_parent,
                limit=CONTROL_LINE_LIMIT,
            )
        except OSError as exc:
            log.error("%s: cannot start a worker: %s", self.stream, exc)
            return None
        if self._stopping.is_set():  # stop() came while the process was being created
            self._proc.terminate()
        log.info("%s: worker pid %d started", self.stream, self._proc.pid)
        assert self._proc.stdout is not None
        while True:
            try:
                line = await self._proc.stdout.readline()
            except ValueError:  # a line past the limit: skip it, keep supervising
                self.counters.add("worker_lines_too_long")
                log.warning(
                    "%s: worker wrote a line over %d bytes", self.stream, CONTROL_LINE_LIMIT
                )
                continue
            if not line:
                break
            self._on_line(line)
        code = await self._proc.wait()
        self.up = False
        for future in self._replies.values():
            if not future.done():
                future.set_result({})
        self._replies.clear()
        return code

    def _on_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            log.warning("%s: worker wrote %r", self.stream, line[:120])
            return
        event = message.get("event")
        if event == "up":
            self.up = True
            self.refusal = ""
            return
        if event == "refused":
            self.refusal = str(message.get("reason", ""))
            return
        future = self._replies.pop(message.get("id", -1), None)
        if future is not None and not future.done():
            future.set_result(message)

    async def stats(self, since_ns: int) -> dict[str, Any] | None:
        """The worker's own stats, or None if it does not answer in time."""
        reply = await self._ask({"since_ns": since_ns})
        return None if reply is None else (reply.get("stats") or {})

    async def metrics(self) -> str | None:
        """The worker's metrics (Prometheus text), or None if it does not answer in time."""
        reply = await self._ask({"metrics": True})
        text = None if reply is None else reply.get("metrics")
        return text if isinstance(text, str) else None

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any] | None:
        proc = self._proc
        if not self.up or proc is None or proc.returncode is not None or proc.stdin is None:
            return None
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        stdin = proc.stdin

        async def ask() -> dict[str, Any]:
            stdin.write(json.dumps({"id": request_id, **request}).encode() + b"\n")
            await stdin.drain()
            return await future

        try:
            return await asyncio.wait_for(ask(), STATS_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            self.counters.add("worker_stats_timeouts")
            return None
        finally:
            self._replies.pop(request_id, None)

    async def stop(self) -> None:
        """SIGTERM, a grace period to drain, then SIGKILL."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_S)
        except TimeoutError:
            log.warning("%s: worker did not stop in %g s; killing it", self.stream, STOP_GRACE_S)
            if self._proc is not None and self._proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
            await self._task
