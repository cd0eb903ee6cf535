"""The encoder service: one :class:`StreamEncoder` per live stream of its site.

Streams are found in the registry (watched, so a new stream starts encoding at once); raw-frame
notifications and keyframe requests arrive on one wildcard subscription each and are routed to
the stream's encoder. Claiming streams across replicas is a later step; here one replica serves
every stream of the site.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.msg import Msg

from orstream.common.messages import FrameReady, MessageError, StreamDescriptor, StreamState
from orstream.common.registry import Registry
from orstream.common.runner import ServiceContext
from orstream.common.subjects import StreamId, all_frames, all_keyframe_requests
from orstream.common.telemetry import Counters
from orstream.encoder.settings import EncoderSettings
from orstream.encoder.worker import StreamEncoder

log = logging.getLogger(__name__)


class EncoderService:
    name = "encoder"
    uses_bus = True
    uses_health_port = True

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        self.counters = Counters("orstream.encoder")
        self.encoders: dict[StreamId, StreamEncoder] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._ready = False

    async def start(self, ctx: ServiceContext) -> None:
        bus = ctx.require_bus()
        loop = asyncio.get_running_loop()
        registry = await Registry.open(bus)

        async def on_frame(msg: Msg) -> None:
            stream = StreamId.from_subject(msg.subject)
            encoder = self.encoders.get(stream) if stream else None
            if encoder is None:
                self.counters.add("frames_unclaimed")
                return
            try:
                note = FrameReady.decode(msg.data)
            except MessageError as exc:
                self.counters.add("notifications_malformed")
                log.warning("%s: %s", msg.subject, exc)
                return
            encoder.offer(note, msg.headers)

        async def on_keyframe(msg: Msg) -> None:
            stream = StreamId.from_subject(msg.subject)
            encoder = self.encoders.get(stream) if stream else None
            if encoder is not None:
                encoder.request_keyframe()

        def apply(descriptor: StreamDescriptor) -> None:
            stream = StreamId(descriptor.site, descriptor.room, descriptor.stream)
            running = self.encoders.get(stream)
            if descriptor.state in (StreamState.LIVE, StreamState.STARTING) and running is None:
                encoder = StreamEncoder(
                    stream, descriptor.fps, self.settings, bus, loop, self.counters
                )
                encoder.start()
                self.encoders[stream] = encoder
                log.info(
                    "encoding %s (%dx%d@%g)",
                    stream,
                    descriptor.width,
                    descriptor.height,
                    descriptor.fps,
                )
            elif descriptor.state == StreamState.STOPPED and running is not None:
                del self.encoders[stream]
                task = loop.create_task(running.stop())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
                log.info("stopped encoding %s", stream)

        for descriptor in await registry.all():
            if descriptor.site == self.settings.site:
                apply(descriptor)

        async def watch() -> None:
            watcher = await registry.kv.watchall()
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue
                try:
                    descriptor = StreamDescriptor.decode(entry.value)
                except MessageError as exc:
                    log.warning("registry %s: %s", entry.key, exc)
                    continue
                if descriptor.site == self.settings.site:
                    apply(descriptor)

        self._watch_task = asyncio.create_task(watch())
        await bus.subscribe(all_frames(self.settings.site), on_frame)
        await bus.subscribe(all_keyframe_requests(self.settings.site), on_keyframe)
        ctx.stack.push_async_callback(self._stop)
        self._ready = True

    async def _stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await asyncio.gather(
            *(encoder.stop() for encoder in self.encoders.values()), *self._retiring
        )
        self.encoders.clear()

    def ready(self) -> bool:
        return self._ready

    def stats(self, since_ns: int) -> dict[str, Any]:
        hops: dict[str, Any] = {}
        for stream, encoder in self.encoders.items():
            hops[str(stream)] = {
                "encoder": encoder.latency.summary(since_ns),
                "encode": encoder.encode_ms.summary(since_ns),
            }
        return {"streams": hops, "counters": self.counters.snapshot()}
