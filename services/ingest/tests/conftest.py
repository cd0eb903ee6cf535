"""Run the real ingest service against a real NATS and watch what it publishes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from orstream.common.bus import Bus
from orstream.common.messages import FrameReady, StreamDescriptor
from orstream.common.registry import Registry
from orstream.common.runner import ServiceContext
from orstream.common.shm import RingReader, SlotInfo
from orstream.common.subjects import StreamId, meta_in
from orstream.ingest.service import IngestService
from orstream.ingest.settings import IngestSettings

Consume = Callable[[memoryview, SlotInfo], Any]


def frame_index(view: memoryview, info: SlotInfo) -> int:
    """The index burned into a sample picture's top row (8 blocks of 16 px, black/white)."""
    data = np.frombuffer(view, dtype=np.uint8)
    if info.pix_fmt == "rgb24":
        top = data[: 16 * info.width * 3].reshape(16, info.width, 3)[..., 0]
    else:  # yuv420p / gray: the luma plane comes first
        top = data[: 16 * info.width].reshape(16, info.width)
    return sum(1 << bit for bit in range(8) if top[4:12, bit * 16 + 4 : bit * 16 + 12].mean() > 128)


@dataclass
class IngestRun:
    service: IngestService
    stream: StreamId
    registry: Registry
    frames: list[tuple[FrameReady, Any]] = field(default_factory=list)
    contexts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def descriptor(self) -> StreamDescriptor | None:
        return await self.registry.get(self.stream)

    async def until(
        self, check: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    async def state(self) -> str:
        d = await self.descriptor()
        return d.state.value if d else ""


@pytest.fixture
def run_ingest(nats_url: str) -> Callable[..., contextlib.AbstractAsyncContextManager[IngestRun]]:
    @contextlib.asynccontextmanager
    async def run(
        source: str,
        consume: Consume | None = None,
        stream: str = "cam",
        site: str = "ingsite",
        **extra: Any,
    ) -> AsyncIterator[IngestRun]:
        settings = IngestSettings(
            nats_url=nats_url, site=site, room="or1", stream=stream, source=source, **extra
        )
        service = IngestService(settings)
        observer = await Bus.connect(nats_url, "observer")
        registry = await Registry.open(observer)
        run = IngestRun(service, service.stream, registry)
        readers: dict[str, RingReader] = {}

        async def on_frame(msg: Any) -> None:
            note = FrameReady.decode(msg.data)
            value = None
            if consume is not None:
                reader = readers.get(note.ring) or readers.setdefault(
                    note.ring, RingReader.attach(note.ring)
                )
                value = reader.read(note.seq, consume)
            run.frames.append((note, value))

        async def on_context(msg: Any) -> None:
            run.contexts.append((dict(msg.headers or {}), msg.data))

        await observer.subscribe(service.stream.frame(), on_frame)
        await observer.subscribe(meta_in(site, "or1"), on_context)
        try:
            async with contextlib.AsyncExitStack() as stack:
                bus = await Bus.connect(nats_url, "ingest")
                stack.push_async_callback(bus.close)
                await service.start(ServiceContext(settings=settings, bus=bus, stack=stack))
                yield run
        finally:
            await observer.close()
            for reader in readers.values():
                reader.close()

    return run


@pytest.fixture
def read_index() -> Consume:
    """Reads the index a sample picture carries (see the root conftest's ``moving_picture``)."""
    return frame_index
