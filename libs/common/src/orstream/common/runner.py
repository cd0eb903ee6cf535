"""Runs one service: logging, telemetry, NATS, health port, signals → graceful drain.

A service's ``__main__`` builds its settings and calls :func:`run`. The runner owns the order:
connect NATS, serve health, start the service; on SIGTERM/SIGINT, close the same things in
reverse (``AsyncExitStack``), so in-flight messages drain and shared memory is unlinked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from orstream.common.bus import Bus
from orstream.common.config import CommonSettings
from orstream.common.health import HttpServer, health_app
from orstream.common.telemetry import prometheus_text, setup_telemetry, shutdown_telemetry

log = logging.getLogger(__name__)

CONNECT_RETRY_S = 0.5


@dataclass
class ServiceContext:
    """What the runner hands a service: its bus, an exit stack for cleanups, the stop event."""

    settings: CommonSettings
    bus: Bus | None
    stack: AsyncExitStack
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def require_bus(self) -> Bus:
        if self.bus is None:
            raise RuntimeError("this service was started without a bus")
        return self.bus


class Service(Protocol):
    """What the runner needs of a service."""

    name: str
    #: False for services that need no NATS (the viewer's static server).
    uses_bus: bool
    #: False when the service serves ``/livez`` ``/readyz`` on its own HTTP app.
    uses_health_port: bool

    async def start(self, ctx: ServiceContext) -> None:
        """Start work; register cleanups on ``ctx.stack``; return once running."""

    def ready(self) -> bool: ...

    def stats(self, since_ns: int) -> dict[str, Any] | Awaitable[dict[str, Any]]: ...


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel background tasks and wait until each has finished (their errors die with them)."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    await asyncio.gather(*live, return_exceptions=True)


def configure_logging(service: str, level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )


async def connect_bus(settings: CommonSettings, name: str, stopping: asyncio.Event) -> Bus | None:
    """Connect, retrying until NATS answers or the service is asked to stop."""
    while not stopping.is_set():
        try:
            return await Bus.connect(settings.nats_url, name)
        except Exception as exc:
            log.warning("nats at %s not reachable (%s); retrying", settings.nats_url, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), CONNECT_RETRY_S)
    return None


async def serve(service: Service, settings: CommonSettings) -> None:
    """Run ``service`` until SIGTERM or SIGINT, then shut it down in order."""
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        ctx = ServiceContext(settings=settings, bus=None, stack=stack)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ctx.stopping.set)
        if service.uses_bus:
            ctx.bus = await connect_bus(settings, f"orstream-{service.name}", ctx.stopping)
            if ctx.bus is None:
                return
            stack.push_async_callback(ctx.bus.close)
        if service.uses_health_port:
            # A service whose metrics live in child processes (the encoder) merges theirs.
            metrics = getattr(service, "metrics", prometheus_text)
            health = HttpServer(
                health_app(service.ready, service.stats, metrics),
                settings.health_host,
                settings.health_port,
            )
            await health.start()
            stack.push_async_callback(health.stop)
            log.info("health on http://%s:%d", settings.health_host, health.port)
        await service.start(ctx)
        log.info("%s started", service.name)
        await ctx.stopping.wait()
        log.info("%s stopping", service.name)
    log.info("%s stopped", service.name)


def run(service: Service, settings: CommonSettings) -> None:
    """Entry point for a service's ``__main__``."""
    configure_logging(service.name, settings.log_level)
    setup_telemetry(service.name, settings.trace_sample_ratio)
    try:
        asyncio.run(serve(service, settings))
    finally:
        shutdown_telemetry()
