"""``/livez``, ``/readyz`` and ``/stats`` for every service, on its own small HTTP port.

Kubernetes probes ``/livez`` (the event loop answers) and ``/readyz`` (the service says it can do
its job, e.g. NATS connected). ``/stats`` gives hop latencies and counters as JSON for people and
for ``orstream bench``; ``/metrics`` gives the OpenTelemetry metrics to Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from orstream.common.telemetry import prometheus_text

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], bool]
#: The Prometheus text of the service (a service whose metrics live in child processes merges
#: theirs, so it answers async).
MetricsSource = Callable[[], bytes | Awaitable[bytes]]
#: Stats since a capture time; a service whose figures live in child processes answers async.
StatsSource = Callable[[int], dict[str, Any] | Awaitable[dict[str, Any]]]


def health_routes(
    ready: ReadyCheck, stats: StatsSource, metrics: MetricsSource = prometheus_text
) -> list[Route]:
    """The four routes; a FastAPI/Starlette service mounts them on its own app."""

    async def livez(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> PlainTextResponse:
        if ready():
            return PlainTextResponse("ready")
        return PlainTextResponse("not ready", status_code=503)

    async def stats_route(request: Request) -> JSONResponse:
        try:
            since_ns = int(request.query_params.get("since_ns", "0"))
        except ValueError:
            return JSONResponse({"error": "since_ns must be an integer"}, status_code=400)
        if request.query_params.get("frames") == "1":
            if "frames" not in inspect.signature(stats).parameters:
                return JSONResponse(
                    {"error": "this service has no per-frame figures"}, status_code=400
                )
            result = stats(since_ns, frames=True)  # type: ignore[call-arg]
        else:
            result = stats(since_ns)
        if inspect.isawaitable(result):
            result = await result
        return JSONResponse(result)

    async def metrics_route(_: Request) -> Response:
        text = metrics()
        if inspect.isawaitable(text):
            text = await text
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/livez", livez),
        Route("/readyz", readyz),
        Route("/stats", stats_route),
        Route("/metrics", metrics_route),
    ]


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind now (port 0 → a free port), so the port is known before the server starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the service runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """A uvicorn server run as a task of the current event loop."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.sock = bind_socket(host, port)
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()


def health_app(
    ready: ReadyCheck, stats: StatsSource, metrics: MetricsSource = prometheus_text
) -> Starlette:
    return Starlette(routes=health_routes(ready, stats, metrics))
