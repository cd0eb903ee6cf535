"""The ``metadata`` DataChannel: a peer receives its own role's view of its room's context.

One NATS subscription per (room, role) serves every peer of that role in that room; the edge
subscribes only to the subject of the peer's role, so a peer can never be handed another
role's view. The latest dataset per source and stream is kept, so a peer that opens the
channel mid-procedure gets the current context at once. The DICOM JSON is spliced into the
message unparsed: one envelope per dataset, the same string to every peer.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from orstream.common.bus import Bus
from orstream.common.messages import MessageError, RoleMeta
from orstream.common.subjects import meta_role
from orstream.common.telemetry import Counters
from orstream.signaling.channels import send_text

log = logging.getLogger(__name__)

METADATA_CHANNEL = "metadata"
#: (source, stream) pairs remembered per room; more than an OR has.
MAX_LATEST = 64


def envelope(room: str, meta: RoleMeta, dataset: bytes) -> str:
    """The message a peer receives: who, where from, when, and the role's DICOM JSON."""
    head = json.dumps(
        {
            "type": "metadata",
            "room": room,
            "source": meta.source,
            "stream": meta.stream,
            "view": meta.view,
            "capture_ns": meta.capture_ns,
            "published_ns": meta.published_ns,
        }
    )
    return head[:-1] + ',"dataset":' + dataset.decode("utf-8") + "}"


class RoleMetadata:
    """The metadata of one room for one role, fanned out to that role's channels there."""

    def __init__(self, bus: Bus, site: str, room: str, role: str, counters: Counters) -> None:
        self.subject = meta_role(site, room, role)
        self.room = room
        self.bus = bus
        self.counters = counters
        self.channels: set[Any] = set()
        self.latest: dict[tuple[str, str], str] = {}
        #: The room's patient by pseudonym (from the newest dataset), for audit records.
        self.patient = ""
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(self.subject, self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may already be closing
                log.debug("unsubscribe %s: %s", self.subject, exc)

    def attach(self, channel: Any) -> None:
        self.channels.add(channel)
        for message in self.latest.values():
            self._send(channel, message)

    def detach(self, channel: Any) -> None:
        self.channels.discard(channel)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            meta = RoleMeta.from_headers(msg.headers)
            message = envelope(self.room, meta, msg.data)
        except (MessageError, UnicodeDecodeError) as exc:
            self.counters.add("metadata_malformed")
            log.warning("%s: dropped malformed role metadata: %s", self.subject, exc)
            return
        if meta.patient:
            self.patient = meta.patient
        key = (meta.source, meta.stream)
        if key not in self.latest and len(self.latest) >= MAX_LATEST:
            self.latest.pop(next(iter(self.latest)))
        self.latest[key] = message
        for channel in list(self.channels):
            self._send(channel, message)

    def _send(self, channel: Any, message: str) -> None:
        send_text(channel, message, self.counters, "metadata_sent", "metadata_send_errors")
