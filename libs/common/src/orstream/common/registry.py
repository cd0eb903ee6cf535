"""The stream registry: a JetStream KV bucket, key ``<site>.<room>.<stream>`` → descriptor.

Ingest announces its streams here; encoders and the edge discover them here.
"""

from __future__ import annotations

import time

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from orstream.common.bus import Bus
from orstream.common.messages import MessageError, StreamDescriptor
from orstream.common.subjects import REGISTRY_BUCKET, StreamId


class Registry:
    """Typed access to the stream registry."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, bus: Bus) -> Registry:
        return cls(await bus.key_value(REGISTRY_BUCKET, history=1))

    async def announce(self, descriptor: StreamDescriptor) -> None:
        descriptor.updated_ns = time.time_ns()
        key = StreamId(descriptor.site, descriptor.room, descriptor.stream).key
        await self.kv.put(key, descriptor.encode())

    async def get(self, stream: StreamId) -> StreamDescriptor | None:
        try:
            entry = await self.kv.get(stream.key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return StreamDescriptor.decode(entry.value)

    async def all(self) -> list[StreamDescriptor]:
        """Every stream in the registry; malformed entries are skipped."""
        try:
            keys = await self.kv.keys()
        except Exception:  # nats raises NoKeysError on an empty bucket
            return []
        out = []
        for key in keys:
            try:
                descriptor = await self.get(StreamId.parse(key))
            except (MessageError, ValueError):
                continue
            if descriptor is not None:
                out.append(descriptor)
        return out
