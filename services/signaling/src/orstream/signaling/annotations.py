"""The ``annotations`` DataChannel: telestration strokes, a pointer and chat over the OR video.

::

    peer ──annotations──► on_message: size, schema, rights ─► stamp ─► outbox ─► NATS .annot
                             │ refused / malformed: {"type":"error"} back,             │
                             │ a counter, on_refused(sender, reason)                   │
    peers ◄──annotations── RoomAnnotations (one subscription per room per edge) ◄──────┘
                           every channel in the room but the sender's; strokes remembered

The edge decides who said what: a peer's message is stamped with the identity of its session
(subject, role), the room, the server time and its origin, whatever the peer wrote in those
fields. It is encoded once and published; every edge with peers in the room (and the OR wall
display) takes it from NATS, so peers on this edge and on others see the same stream of
messages. The sender does not get its own message back.

A peer's rights come from its role's grant: ``annotate`` for strokes, pointer and clear;
``chat`` for chat. A refused or malformed message never reaches NATS.

Strokes are remembered per room (bounded, in drawing order) so a peer that opens the channel
mid-procedure sees the current drawing; ``clear`` forgets the strokes of one stream or all.
A stroke is known by its origin and id: re-sending an id replaces that stroke (a stroke drawn
in pieces), and no peer can replace another's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from orstream.common.bus import Bus
from orstream.common.policy import RoleGrant
from orstream.common.runner import cancel_and_wait
from orstream.common.subjects import TOKEN_PATTERN, annotation
from orstream.common.telemetry import Counters
from orstream.signaling.channels import send_text

log = logging.getLogger(__name__)

ANNOTATIONS_CHANNEL = "annotations"
#: Larger inbound messages are refused before any decoding (a full stroke is about 50 KB).
MAX_MESSAGE_BYTES = 64 * 1024
MAX_STROKE_POINTS = 2000
MAX_CHAT_CHARS = 2000
#: Strokes remembered per room for late joiners, by count and by encoded size; oldest go first.
MAX_STROKES = 500
MAX_STROKE_BYTES = 4 * 1024 * 1024
#: Accepted messages waiting to be published; beyond it a message is refused ("edge busy").
OUTBOX_MESSAGES = 256

Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
Point = tuple[Unit, Unit]
StreamName = Annotated[str, Meta(pattern=TOKEN_PATTERN, max_length=64)]
AnnotationId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Color = Annotated[str, Meta(pattern=r"^#[0-9A-Fa-f]{6}$")]


class Annotation(msgspec.Struct, tag_field="type", kw_only=True, frozen=True):
    """Fields every message carries; all but ``id`` are set by the edge, never by the peer."""

    #: The peer's own id for the message (a stroke's, to extend or replace it); made if absent.
    id: AnnotationId | None = None
    site: str = ""
    room: str = ""
    subject: str = ""
    role: str = ""
    #: Server wall clock when the edge accepted the message.
    ts_ns: int = 0
    #: ``<edge id>/<session tag>``: which edge and session the message came from.
    origin: str = ""


class Stroke(Annotation, tag="stroke", kw_only=True, frozen=True):
    """A line drawn on a stream; points normalised to the picture, (0, 0) top left."""

    stream: StreamName
    points: Annotated[list[Point], Meta(min_length=1, max_length=MAX_STROKE_POINTS)]
    color: Color
    #: Line width as a fraction of the picture's width.
    width: Unit


class Pointer(Annotation, tag="pointer", kw_only=True, frozen=True):
    """Where the peer points on a stream now; not remembered."""

    stream: StreamName
    x: Unit
    y: Unit


class Clear(Annotation, tag="clear", kw_only=True, frozen=True):
    """Wipe the strokes of one stream, or of every stream in the room when ``stream`` is null."""

    stream: StreamName | None = None


class Chat(Annotation, tag="chat", kw_only=True, frozen=True):
    text: Annotated[str, Meta(min_length=1, max_length=MAX_CHAT_CHARS)]


AnyAnnotation = Stroke | Pointer | Clear | Chat


class AnnotationError(msgspec.Struct, tag="error", tag_field="type", frozen=True):
    """Sent back to the one peer whose message was refused."""

    reason: str
    #: The refused message's id, when it could be read.
    id: str | None = None


_DECODER: msgspec.json.Decoder[AnyAnnotation] = msgspec.json.Decoder(AnyAnnotation)
_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class AnnotationSender:
    """Who is behind a channel, from its session: the only source of sender fields."""

    session_id: str
    subject: str
    role: str
    may_annotate: bool
    may_chat: bool

    @classmethod
    def of(cls, session_id: str, subject: str, role: str, grant: RoleGrant) -> AnnotationSender:
        return cls(session_id, subject, role, grant.annotate, grant.chat)


def origin_of(edge_id: str, session_id: str) -> str:
    """A session's origin tag. The session id itself stays secret: it is the key to DELETE."""
    tag = hashlib.blake2s(session_id.encode(), digest_size=8).hexdigest()
    return f"{edge_id}/{tag}"


def _text(data: object, limit: int) -> str:
    """The message as text, refusing oversized ones before any decoding (ValueError)."""
    if isinstance(data, str):
        if len(data) > limit or len(data.encode("utf-8")) > limit:
            raise ValueError(f"message larger than {limit} bytes")
        return data
    if isinstance(data, bytes):
        if len(data) > limit:
            raise ValueError(f"message larger than {limit} bytes")
        return data.decode("utf-8")
    raise ValueError(f"unsupported message data {type(data).__name__}")


def _refusal(message: AnyAnnotation, sender: AnnotationSender) -> str | None:
    """Why ``sender`` may not send ``message``, or None when it may."""
    if isinstance(message, Chat):
        return None if sender.may_chat else f"role {sender.role!r} may not chat"
    if not sender.may_annotate:
        return f"role {sender.role!r} may not annotate"
    return None


class RoomAnnotations:
    """The annotations of one room on this edge: one NATS subscription for all its channels.

    Wiring, per ``annotations`` channel of a session::

        room.attach(channel, sender)
        channel.on("message", lambda data: room.on_message(channel, sender, data))
        channel.on("close", lambda: room.detach(channel))

    ``on_message`` is synchronous and never raises; accepted messages wait in a bounded outbox
    that one task publishes in order.
    """

    def __init__(
        self,
        bus: Bus,
        site: str,
        room: str,
        edge_id: str,
        counters: Counters,
        *,
        on_refused: Callable[[AnnotationSender, str], None] | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_strokes: int = MAX_STROKES,
        max_stroke_bytes: int = MAX_STROKE_BYTES,
    ) -> None:
        self.subject = annotation(site, room)
        self.site = site
        self.room = room
        self.edge_id = edge_id
        self.bus = bus
        self.counters = counters
        #: Called for every refusal (not for malformed input), so the edge can audit it.
        self.on_refused = on_refused
        self.max_message_bytes = max_message_bytes
        self.max_strokes = max_strokes
        self.max_stroke_bytes = max_stroke_bytes
        #: Attached channels and the origin of the session each belongs to.
        self.channels: dict[Any, str] = {}
        #: (origin, id) → (stream, message as published), oldest first.
        self.strokes: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        self._stroke_bytes = 0
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(OUTBOX_MESSAGES)
        self._sub: Subscription | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(self.subject, self._on_msg)
        self._publisher = asyncio.get_running_loop().create_task(
            self._publish_outbox(), name=f"annotations {self.subject}"
        )

    async def stop(self) -> None:
        self._stopped = True
        await cancel_and_wait(self._publisher)
        self._publisher = None
        while not self._outbox.empty():  # what was accepted still goes out, once
            await self._publish(self._outbox.get_nowait())
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may already be closing
                log.debug("unsubscribe %s: %s", self.subject, exc)

    def attach(self, channel: Any, sender: AnnotationSender) -> None:
        """Deliver the room's messages to ``channel``, starting with the current strokes."""
        self.channels[channel] = origin_of(self.edge_id, sender.session_id)
        if channel.readyState == "connecting":
            channel.once("open", lambda: self._replay(channel))
        else:
            self._replay(channel)

    def detach(self, channel: Any) -> None:
        self.channels.pop(channel, None)

    def on_message(self, channel: Any, sender: AnnotationSender, data: object) -> None:
        """A message from ``sender``'s peer on ``channel``: refuse it, or stamp and publish it."""
        try:
            message = _DECODER.decode(_text(data, self.max_message_bytes))
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            # msgspec's errors are ValueErrors; UnicodeDecodeError too.
            self.counters.add("annotations_malformed")
            log.info("annotations from %s: malformed: %s", sender.subject, exc)
            self._send(channel, _ENCODER.encode(AnnotationError(f"malformed: {exc}")).decode())
            return
        reason = _refusal(message, sender)
        if reason is not None:
            self._refuse(channel, sender, message, reason)
            return
        if self._stopped:
            self._drop(channel, message, "annotations of this room have stopped")
            return
        stamped = msgspec.structs.replace(
            message,
            id=message.id or secrets.token_urlsafe(12),
            site=self.site,
            room=self.room,
            subject=sender.subject,
            role=sender.role,
            ts_ns=time.time_ns(),
            origin=origin_of(self.edge_id, sender.session_id),
        )
        try:
            self._outbox.put_nowait(_ENCODER.encode(stamped))
        except asyncio.QueueFull:
            self._drop(channel, stamped, "edge busy")

    def _drop(self, channel: Any, message: AnyAnnotation, reason: str) -> None:
        self.counters.add("annotations_dropped")
        self._send(channel, _ENCODER.encode(AnnotationError(reason, message.id)).decode())

    def _refuse(
        self, channel: Any, sender: AnnotationSender, message: AnyAnnotation, reason: str
    ) -> None:
        self.counters.add("annotations_refused")
        log.info(
            "annotations: refused %s from %s (%s): %s",
            type(message).__name__,
            sender.subject,
            sender.role,
            reason,
        )
        self._send(channel, _ENCODER.encode(AnnotationError(reason, message.id)).decode())
        if self.on_refused is not None:
            try:
                self.on_refused(sender, reason)
            except Exception:  # an auditing hook must not break the channel
                log.exception("annotations: on_refused hook failed")

    async def _publish_outbox(self) -> None:
        while True:
            await self._publish(await self._outbox.get())

    async def _publish(self, payload: bytes) -> None:
        try:
            await self.bus.publish(self.subject, payload)
            self.counters.add("annotations_published")
        except Exception as exc:  # NATS down: the message is lost, like any live message
            self.counters.add("annotations_publish_errors")
            log.warning("annotations: publish on %s failed: %s", self.subject, exc)

    async def _on_msg(self, msg: Msg) -> None:
        try:
            text = _text(msg.data, self.max_message_bytes)
            message = _DECODER.decode(text)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.counters.add("annotations_bus_malformed")
            log.warning("%s: dropped a malformed annotation: %s", self.subject, exc)
            return
        if isinstance(message, Stroke):
            self._remember(message, text)
        elif isinstance(message, Clear):
            self._forget(message.stream)
        for channel, origin in list(self.channels.items()):
            if origin != message.origin:
                self._send(channel, text)

    def _remember(self, stroke: Stroke, text: str) -> None:
        key = (stroke.origin, stroke.id or "")
        old = self.strokes.pop(key, None)
        if old is not None:
            self._stroke_bytes -= len(old[1])
        self.strokes[key] = (stroke.stream, text)
        self._stroke_bytes += len(text)
        while self.strokes and (
            len(self.strokes) > self.max_strokes or self._stroke_bytes > self.max_stroke_bytes
        ):
            _, (_, dropped) = self.strokes.popitem(last=False)
            self._stroke_bytes -= len(dropped)

    def _forget(self, stream: str | None) -> None:
        for key, (drawn_on, text) in list(self.strokes.items()):
            if stream is None or drawn_on == stream:
                del self.strokes[key]
                self._stroke_bytes -= len(text)

    def _replay(self, channel: Any) -> None:
        if channel not in self.channels:
            return
        for _, text in list(self.strokes.values()):
            self._send(channel, text)

    def _send(self, channel: Any, message: str) -> None:
        send_text(channel, message, self.counters, "annotations_sent", "annotations_send_errors")
