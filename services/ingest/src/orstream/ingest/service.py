"""The ingest service: one source → one ring + ``.frame`` notifications + a registry entry.

The stream's state in the registry follows its source: ``starting`` until the first frame,
``live`` while frames come, ``stalled`` when they stop (the source keeps trying, and the stream is
``live`` again with the next frame), ``stopped`` when the source ends or ingest exits. DICOM
context from the source goes to ``meta.in``; its study/series facts go into the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nats.errors import Error as NatsError
from opentelemetry import propagate, trace

from orstream.common.bus import Bus
from orstream.common.messages import ContextMeta, FrameReady, StreamDescriptor, StreamState
from orstream.common.observability import HOP_INGEST_CAPTURE, HOP_INGEST_PUBLISH
from orstream.common.registry import Registry
from orstream.common.runner import ServiceContext, cancel_and_wait
from orstream.common.shm import RingError, RingWriter
from orstream.common.subjects import StreamId, meta_in
from orstream.common.telemetry import Counters, FrameCounts, HopLatency
from orstream.ingest.settings import IngestSettings
from orstream.ingest.source import (
    Context,
    FrameInRing,
    FrameSource,
    RawFrame,
    SourceEvent,
    Stalled,
)
from orstream.ingest.sources import open_source

log = logging.getLogger(__name__)
tracer = trace.get_tracer("orstream.ingest")

#: A stream is stalled after this many frame intervals without a frame (at least
#: ``stall_after_s``).
STALL_FRAMES = 5
STALL_CHECK_S = 0.25


class IngestService:
    name = "ingest"
    uses_bus = True
    uses_health_port = True

    def __init__(self, settings: IngestSettings, source: FrameSource | None = None) -> None:
        self.settings = settings
        self.stream = StreamId(settings.site, settings.room, settings.stream)
        self.source = source or open_source(settings.source)
        attrs = {"site": settings.site, "room": settings.room, "stream": settings.stream}
        #: Captured → in the ring, and in the ring → notified (the path's first two hops).
        self.capture_latency = HopLatency(HOP_INGEST_CAPTURE, attrs)
        self.latency = HopLatency(HOP_INGEST_PUBLISH, attrs)
        self.frames = FrameCounts("ingest", attrs)
        self.counters = Counters("orstream.ingest")
        self.descriptor: StreamDescriptor | None = None
        self._registry: Registry | None = None
        self._started = False
        self._last_frame_ns = 0
        self._tasks: list[asyncio.Task[None]] = []
        #: One thread renders/writes frames, so a stop can wait for the frame in flight.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-write")

    async def start(self, ctx: ServiceContext) -> None:
        bus = ctx.require_bus()
        fmt = self.source.format
        ring = RingWriter.create(self.stream.ring_name, fmt.frame_bytes, self.settings.ring_slots)
        ctx.stack.callback(ring.close)
        self._registry = await Registry.open(bus)
        self.descriptor = StreamDescriptor(
            site=self.stream.site,
            room=self.stream.room,
            stream=self.stream.stream,
            source=self.settings.source,
            label=self.settings.label,
            width=fmt.width,
            height=fmt.height,
            fps=fmt.fps,
            pix_fmt=fmt.pix_fmt,
            bit_depth=fmt.bit_depth,
            colorimetry=fmt.colorimetry,
            ring=ring.name,
        )
        await self._registry.announce(self.descriptor)  # starting

        async def withdraw() -> None:
            with contextlib.suppress(Exception):
                await self._announce(StreamState.STOPPED, "ingest stopped")

        ctx.stack.push_async_callback(withdraw)
        self._tasks = [
            asyncio.create_task(self._pump(ctx, ring)),
            asyncio.create_task(self._watch_stall()),
        ]
        ctx.stack.push_async_callback(self._stop)
        self._started = True
        log.info("ingest %s from %s into ring %s", self.stream, self.source.description, ring.name)

    async def _announce(self, state: StreamState, reason: str = "") -> None:
        """Record the stream's state in the registry; a registry hiccup is logged, not fatal
        (the next change, or the next frame after a stall, announces again)."""
        assert self.descriptor is not None
        if state != self.descriptor.state or reason != self.descriptor.reason:
            if state != self.descriptor.state:
                log.info("%s is %s%s", self.stream, state.value, f": {reason}" if reason else "")
            self.descriptor.state = state
            self.descriptor.reason = reason
            await self._publish_descriptor()

    async def _publish_descriptor(self) -> None:
        assert self.descriptor is not None
        assert self._registry is not None
        try:
            await self._registry.announce(self.descriptor)
        except Exception as exc:
            self.counters.add("registry_errors")
            log.warning("%s: registry update failed (%s)", self.stream, exc)

    async def _stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        # Cancelling the task does not stop a write already running in the thread; the ring
        # may only be closed once it is done.
        await asyncio.to_thread(self._writer.shutdown, True)

    @property
    def stall_after_s(self) -> float:
        return max(self.settings.stall_after_s, STALL_FRAMES / max(self.source.format.fps, 1.0))

    async def _watch_stall(self) -> None:
        """A source that stops delivering frames makes the stream ``stalled`` (not stopped)."""
        while True:
            await asyncio.sleep(STALL_CHECK_S)
            assert self.descriptor is not None
            if self.descriptor.state != StreamState.LIVE:
                continue
            silent_s = (time.monotonic_ns() - self._last_frame_ns) / 1e9
            if silent_s > self.stall_after_s:
                self.counters.add("stalls")
                await self._announce(StreamState.STALLED, f"no frame for {silent_s:.1f} s")

    async def _pump(self, ctx: ServiceContext, ring: RingWriter) -> None:
        bus = ctx.require_bus()
        loop = asyncio.get_running_loop()
        try:
            # aclosing: on stop the source's own cleanup (threads, sockets, decoders) runs now,
            # before the ring is closed under it, not whenever the generator is collected.
            async with contextlib.aclosing(self.source.frames(ring)) as events:
                async for event in events:
                    try:
                        await self._handle(bus, ring, loop, event)
                    except (RingError, OSError, NatsError) as exc:
                        self.counters.add("event_errors")
                        log.warning(
                            "%s: %s not handled (%s)", self.stream, type(event).__name__, exc
                        )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: source failed", self.stream)
            self.counters.add("source_failures")
            await self._announce(StreamState.STOPPED, f"source failed: {exc}")
            return
        await self._announce(StreamState.STOPPED, "source ended")

    async def _handle(
        self, bus: Bus, ring: RingWriter, loop: asyncio.AbstractEventLoop, event: SourceEvent
    ) -> None:
        if isinstance(event, RawFrame | FrameInRing):
            self.frames.received()
            # The frame's trace starts when it was captured, not when this loop got to it.
            span = tracer.start_span(HOP_INGEST_CAPTURE, start_time=event.capture_ns)
            if span.is_recording():  # no attribute dict for the frames not sampled
                span.set_attribute("orstream.seq", event.seq)
            try:
                if isinstance(event, RawFrame):
                    slot = await loop.run_in_executor(self._writer, self._write, ring, event)
                else:
                    slot = event.slot
            except Exception:
                self.frames.dropped("ring_write")
                span.end()
                raise
            written_ns = time.time_ns()
            span.end(written_ns)
            await self._notify(bus, ring, event.seq, slot, event.capture_ns, written_ns, span)
        elif isinstance(event, Context):
            await self._publish_context(bus, event)
        elif isinstance(event, Stalled):
            self.counters.add("source_stalls")
            await self._announce(StreamState.STALLED, event.reason)

    async def _notify(
        self,
        bus: Bus,
        ring: RingWriter,
        seq: int,
        slot: int,
        capture_ns: int,
        written_ns: int,
        capture_span: trace.Span,
    ) -> None:
        fmt = self.source.format
        headers: dict[str, str] = {}
        parent = trace.set_span_in_context(capture_span)
        with tracer.start_as_current_span(
            HOP_INGEST_PUBLISH, context=parent, start_time=written_ns
        ) as span:
            if span.is_recording():
                span.set_attribute("orstream.seq", seq)
                propagate.inject(headers)  # the encoder's spans are children of this one
            notified_ns = time.time_ns()
            note = FrameReady(
                ring.name, slot, seq, fmt.width, fmt.height, fmt.pix_fmt, capture_ns, notified_ns
            )
            try:
                await bus.publish(self.stream.frame(), note.encode(), headers or None)
            except Exception:
                self.frames.dropped("publish")
                raise
        self.capture_latency.record((written_ns - capture_ns) / 1e6, capture_ns)
        self.latency.record((notified_ns - written_ns) / 1e6, capture_ns)
        self.frames.sent()
        self.counters.add("frames_out")
        self._last_frame_ns = time.monotonic_ns()
        assert self.descriptor is not None
        if self.descriptor.state != StreamState.LIVE:
            await self._announce(StreamState.LIVE)

    async def _publish_context(self, bus: Bus, context: Context) -> None:
        """The stream's DICOM context goes to ``meta.in`` (metadata service only) as it came."""
        meta = ContextMeta(
            stream=self.stream.key,
            capture_ns=context.capture_ns,
            rtp_ts=context.rtp_ts,
            seq=context.seq,
            flow=context.flow,
        )
        headers = meta.to_headers()
        with tracer.start_as_current_span("ingest.context") as span:
            if span.is_recording():
                propagate.inject(headers)  # metadata.deidentify continues this trace
            await bus.publish(meta_in(self.stream.site, self.stream.room), context.part10, headers)
        self.counters.add("contexts_out")
        descriptor = self.descriptor
        assert descriptor is not None
        assert self._registry is not None
        facts = (context.study_uid, context.series_uid, context.modality)
        if facts != (descriptor.study_uid, descriptor.series_uid, descriptor.modality):
            descriptor.study_uid, descriptor.series_uid, descriptor.modality = facts
            await self._publish_descriptor()

    def _write(self, ring: RingWriter, frame: RawFrame) -> int:
        fmt = self.source.format
        return ring.write(
            frame.seq, frame.capture_ns, fmt.width, fmt.height, fmt.pix_fmt, frame.fill
        )

    def ready(self) -> bool:
        return self._started

    def stats(self, since_ns: int) -> dict[str, Any]:
        return {
            "stream": self.stream.key,
            "state": self.descriptor.state.value if self.descriptor else "",
            "fps": self.source.format.fps,
            "hops": {
                HOP_INGEST_CAPTURE: self.capture_latency.summary(since_ns),
                HOP_INGEST_PUBLISH: self.latency.summary(since_ns),
            },
            "counters": {**self.counters.snapshot(), **self.source.counters()},
        }
