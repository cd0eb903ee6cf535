"""The metadata service, for now only its intake: it subscribes to every room's ``meta.in``.

Until the de-identification engine lands it publishes nothing on the role subjects: failing
closed, no role sees any patient data, which is the safe side of "not built yet".
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.msg import Msg

from orstream.common.runner import ServiceContext
from orstream.common.subjects import all_meta_in
from orstream.common.telemetry import Counters
from orstream.metadata.settings import MetadataSettings

log = logging.getLogger(__name__)


class MetadataService:
    name = "metadata"
    uses_bus = True
    uses_health_port = True

    def __init__(self, settings: MetadataSettings) -> None:
        self.settings = settings
        self.counters = Counters("orstream.metadata")
        self._ready = False

    async def start(self, ctx: ServiceContext) -> None:
        bus = ctx.require_bus()

        async def on_meta(msg: Msg) -> None:
            self.counters.add("datasets_in")
            log.debug(
                "%s: %d bytes of context (not yet de-identified; withheld)",
                msg.subject,
                len(msg.data),
            )

        await bus.subscribe(all_meta_in(self.settings.site), on_meta)
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    def stats(self, since_ns: int) -> dict[str, Any]:
        return {"counters": self.counters.snapshot()}
