"""Until de-identification lands, the metadata service takes context in and gives no role anything."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from orstream.common.bus import Bus
from orstream.common.runner import ServiceContext
from orstream.common.subjects import meta_in
from orstream.metadata.service import MetadataService
from orstream.metadata.settings import MetadataSettings

pytestmark = pytest.mark.integration


async def test_context_is_taken_in_and_withheld_from_every_role(nats_url: str) -> None:
    settings = MetadataSettings(nats_url=nats_url, site="metasite")
    service = MetadataService(settings)
    observer = await Bus.connect(nats_url, "observer")
    try:
        await _check_intake(nats_url, settings, service, observer)
    finally:
        await observer.close()


async def _check_intake(
    nats_url: str, settings: MetadataSettings, service: MetadataService, observer: Bus
) -> None:
    leaked: list[str] = []

    async def on_role(msg) -> None:  # type: ignore[no-untyped-def]
        leaked.append(msg.subject)

    await observer.subscribe("or.metasite.*.meta.role.>", on_role)
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(nats_url, "metadata")
        stack.push_async_callback(bus.close)
        await service.start(ServiceContext(settings=settings, bus=bus, stack=stack))
        assert service.ready()
        for _ in range(3):
            await observer.publish(meta_in("metasite", "or1"), b'{"00100010": {"vr": "PN"}}')
        await observer.nc.flush()
        for _ in range(50):
            if service.stats(0)["counters"].get("datasets_in") == 3:
                break
            await asyncio.sleep(0.05)
        assert service.stats(0)["counters"]["datasets_in"] == 3
    await asyncio.sleep(0.2)
    assert leaked == []
