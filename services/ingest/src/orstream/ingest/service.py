"""The ingest service: one source → one ring + ``.frame`` notifications + a registry entry."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from opentelemetry import propagate, trace

from orstream.common.messages import FrameReady, StreamDescriptor, StreamState
from orstream.common.registry import Registry
from orstream.common.runner import ServiceContext
from orstream.common.shm import RingWriter
from orstream.common.subjects import StreamId
from orstream.common.telemetry import Counters, HopLatency
from orstream.ingest.settings import IngestSettings
from orstream.ingest.source import FrameSource, RawFrame
from orstream.ingest.sources import open_source

log = logging.getLogger(__name__)
tracer = trace.get_tracer("orstream.ingest")

HOP = "ingest"


class IngestService:
    name = "ingest"
    uses_bus = True
    uses_health_port = True

    def __init__(self, settings: IngestSettings, source: FrameSource | None = None) -> None:
        self.settings = settings
        self.stream = StreamId(settings.site, settings.room, settings.stream)
        self.source = source or open_source(settings.source)
        attrs = {"site": settings.site, "room": settings.room, "stream": settings.stream}
        self.latency = HopLatency(HOP, attrs)
        self.counters = Counters("orstream.ingest")
        self._live = False
        self._task: asyncio.Task[None] | None = None
        #: One thread renders/writes frames, so a stop can wait for the frame in flight.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-write")

    async def start(self, ctx: ServiceContext) -> None:
        bus = ctx.require_bus()
        fmt = self.source.format
        ring = RingWriter.create(self.stream.ring_name, fmt.frame_bytes, self.settings.ring_slots)
        ctx.stack.callback(ring.close)
        registry = await Registry.open(bus)
        descriptor = StreamDescriptor(
            site=self.stream.site,
            room=self.stream.room,
            stream=self.stream.stream,
            source=self.settings.source,
            label=self.settings.label,
            width=fmt.width,
            height=fmt.height,
            fps=fmt.fps,
            pix_fmt=fmt.pix_fmt,
            ring=ring.name,
        )
        await registry.announce(descriptor)

        async def withdraw() -> None:
            descriptor.state = StreamState.STOPPED
            with contextlib.suppress(Exception):
                await registry.announce(descriptor)

        ctx.stack.push_async_callback(withdraw)
        self._task = asyncio.create_task(self._pump(ctx, ring, registry, descriptor))
        ctx.stack.push_async_callback(self._stop)
        log.info("ingest %s from %s into ring %s", self.stream, self.source.description, ring.name)

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Cancelling the task does not stop a write already running in the thread; the ring
        # may only be closed once it is done.
        await asyncio.to_thread(self._writer.shutdown, True)

    async def _pump(
        self,
        ctx: ServiceContext,
        ring: RingWriter,
        registry: Registry,
        descriptor: StreamDescriptor,
    ) -> None:
        bus = ctx.require_bus()
        fmt = self.source.format
        subject = self.stream.frame()
        async for frame in self.source.frames():
            with tracer.start_as_current_span("ingest.capture") as span:
                slot = await asyncio.get_running_loop().run_in_executor(
                    self._writer, self._write, ring, frame
                )
                headers: dict[str, str] = {}
                if span.is_recording():
                    span.set_attribute("orstream.seq", frame.seq)
                    propagate.inject(headers)
                notified_ns = time.time_ns()
                note = FrameReady(
                    ring.name,
                    slot,
                    frame.seq,
                    fmt.width,
                    fmt.height,
                    fmt.pix_fmt,
                    frame.capture_ns,
                    notified_ns,
                )
                with tracer.start_as_current_span("ingest.publish"):
                    await bus.publish(subject, note.encode(), headers or None)
            self.latency.record((notified_ns - frame.capture_ns) / 1e6, frame.capture_ns)
            self.counters.add("frames_out")
            if not self._live:
                self._live = True
                descriptor.state = StreamState.LIVE
                await registry.announce(descriptor)

    def _write(self, ring: RingWriter, frame: RawFrame) -> int:
        fmt = self.source.format
        return ring.write(
            frame.seq, frame.capture_ns, fmt.width, fmt.height, fmt.pix_fmt, frame.fill
        )

    def ready(self) -> bool:
        return self._live

    def stats(self, since_ns: int) -> dict[str, Any]:
        return {
            "stream": self.stream.key,
            "hops": {HOP: self.latency.summary(since_ns)},
            "counters": self.counters.snapshot(),
        }
