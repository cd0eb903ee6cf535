"""One stream's worker process: ``python -m orstream.encoder.worker <site>.<room>.<stream>``.

The supervisor (:mod:`orstream.encoder.service`) starts one per stream it has claimed, so a
codec crash or a leak takes down one stream, never the replica. The worker reads the stream's
descriptor from the registry and follows it, subscribes to the stream's own subjects only
(``.frame``, ``.keyframe``, ``.interest``), and encodes with a :class:`StreamPipeline`. It
stops on SIGTERM, and when its control pipe closes (the supervisor died).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

from nats.aio.msg import Msg

from orstream.common.messages import FrameReady, Interest, MessageError, StreamDescriptor
from orstream.common.registry import Registry
from orstream.common.runner import ServiceContext, cancel_and_wait, run
from orstream.common.subjects import StreamId
from orstream.common.telemetry import Counters, prometheus_text
from orstream.encoder.control import EXIT_REFUSED, WorkerControl
from orstream.encoder.convert import ENCODABLE_FORMATS
from orstream.encoder.interest import InterestTable
from orstream.encoder.pipeline import StreamPipeline
from orstream.encoder.settings import EncoderSettings

log = logging.getLogger(__name__)


class StreamWorker:
    name = "encoder-worker"
    uses_bus = True
    uses_health_port = False  # the supervisor relays /stats

    def __init__(self, settings: EncoderSettings, stream: StreamId, control: WorkerControl) -> None:
        self.settings = settings
        self.stream = stream
        self.control = control
        self.counters = Counters("orstream.encoder")
        self.interest = InterestTable()
        self.pipeline: StreamPipeline | None = None
        self.exit_code = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._ctx: ServiceContext | None = None

    def refuse(self, reason: str, exit_code: int = EXIT_REFUSED) -> None:
        """Stop with a reason the supervisor records on the stream's claim."""
        if self.exit_code == 0:
            self.exit_code = exit_code
            self.control.send({"event": "refused", "reason": reason, "exit": exit_code})
        if self._ctx is not None:
            self._ctx.stopping.set()

    async def start(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        bus = ctx.require_bus()
        registry = await Registry.open(bus)
        descriptor = await registry.get(self.stream)
        if descriptor is None:
            self.refuse("the stream is not in the registry")
            return
        if descriptor.pix_fmt not in ENCODABLE_FORMATS:
            self.refuse(f"pixel format {descriptor.pix_fmt!r} cannot be encoded")
            return
        loop = asyncio.get_running_loop()
        pipeline = StreamPipeline(
            self.stream,
            descriptor,
            self.settings,
            bus,
            loop,
            self.counters,
            self.interest,
            self.refuse,
        )
        self.pipeline = pipeline

        async def on_frame(msg: Msg) -> None:
            try:
                note = FrameReady.decode(msg.data)
            except MessageError as exc:
                self.counters.add("notifications_malformed")
                log.warning("%s: %s", msg.subject, exc)
                return
            pipeline.offer(note, msg.headers)

        async def on_keyframe(_: Msg) -> None:
            pipeline.request_keyframe()

        async def on_interest(msg: Msg) -> None:
            try:
                interest = Interest.decode(msg.data)
            except MessageError as exc:
                self.counters.add("interest_malformed")
                log.warning("%s: %s", msg.subject, exc)
                return
            self.interest.update(interest, time.monotonic())

        async def follow_registry() -> None:
            watcher = await registry.kv.watch(self.stream.key, include_history=False)
            async for entry in watcher:
                if entry is None or not entry.value:
                    continue
                try:
                    pipeline.update_descriptor(StreamDescriptor.decode(entry.value))
                except MessageError as exc:
                    log.warning("registry %s: %s", entry.key, exc)

        pipeline.start()
        ctx.stack.push_async_callback(pipeline.stop)
        await bus.subscribe(self.stream.interest(), on_interest)
        await bus.subscribe(self.stream.keyframe(), on_keyframe)
        await bus.subscribe(self.stream.frame(), on_frame)
        self._tasks = [
            asyncio.create_task(follow_registry()),
            asyncio.create_task(self._serve_control(ctx)),
        ]
        ctx.stack.push_async_callback(cancel_and_wait, *self._tasks)
        self.control.send({"event": "up"})
        renditions = ", ".join(r.name for r in self.settings.renditions)
        log.info("%s: worker up (renditions %s)", self.stream, renditions)

    async def _serve_control(self, ctx: ServiceContext) -> None:
        requests = await self.control.requests()
        while line := await requests.readline():
            try:
                request = json.loads(line)
                since_ns = int(request.get("since_ns", 0))
                reply_to = request["id"]
                wants_metrics = bool(request.get("metrics", False))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("control: malformed request %r: %s", line[:80], exc)
                continue
            if wants_metrics:  # the supervisor's /metrics serves every worker's too
                self.control.send({"id": reply_to, "metrics": prometheus_text().decode()})
            else:
                self.control.send({"id": reply_to, "stats": self.stats(since_ns)})
        log.info("%s: supervisor gone; stopping", self.stream)
        ctx.stopping.set()

    def ready(self) -> bool:
        return self.pipeline is not None

    def stats(self, since_ns: int) -> dict[str, Any]:
        stream = self.pipeline.stats(since_ns) if self.pipeline else {}
        return {"stream": stream, "counters": self.counters.snapshot()}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m orstream.encoder.worker <site>.<room>.<stream>")
    stream = StreamId.parse(sys.argv[1])
    control = WorkerControl.from_stdio()
    settings = EncoderSettings()
    worker = StreamWorker(settings, stream, control)
    run(worker, settings)
    sys.exit(worker.exit_code)


if __name__ == "__main__":
    main()
