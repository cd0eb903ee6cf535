"""The annotations DataChannel between real aiortc peers, through a real NATS, on two edges."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from nats.aio.msg import Msg

from orstream.common.bus import Bus
from orstream.common.policy import Policy
from orstream.common.subjects import annotation
from orstream.common.telemetry import Counters
from orstream.signaling.annotations import (
    ANNOTATIONS_CHANNEL,
    MAX_MESSAGE_BYTES,
    AnnotationSender,
    RoomAnnotations,
    origin_of,
)
from orstream.signaling.ice import advertise_only

pytestmark = pytest.mark.integration

SITE = "annsite"
WAIT_S = 10.0
#: How long "nothing else arrives" is watched for, after a sentinel that did arrive.
QUIET_S = 0.3

POLICY = Policy.load()  # the shipped defaults: students chat but do not draw, ops do neither


def sender_of(session_id: str, subject: str, role: str) -> AnnotationSender:
    grant = POLICY.grant(role)
    assert grant is not None
    return AnnotationSender.of(session_id, subject, role, grant)


EXPERT = sender_of("session-expert", "dr-mentor", "expert")
SURGEON = sender_of("session-surgeon", "dr-lead", "surgeon")
STUDENT = sender_of("session-student", "student-7", "student")
OPS = sender_of("session-ops", "biomed-2", "ops")


def stroke(stroke_id: str | None = "s1", stream: str = "endo", **fields: Any) -> str:
    message: dict[str, Any] = {
        "type": "stroke",
        "stream": stream,
        "points": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]],
        "color": "#ff8800",
        "width": 0.01,
    }
    if stroke_id is not None:
        message["id"] = stroke_id
    return json.dumps(message | fields)


def chat(text: str) -> str:
    return json.dumps({"type": "chat", "text": text})


class Inbox:
    """Messages a channel receives, in order, read with a bounded wait."""

    def __init__(self, channel: Any) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        channel.on("message", self.queue.put_nowait)

    async def next(self) -> dict[str, Any]:
        data = await asyncio.wait_for(self.queue.get(), WAIT_S)
        return json.loads(data)

    async def quiet(self) -> None:
        """Nothing (more) arrives within QUIET_S."""
        await asyncio.sleep(QUIET_S)
        assert self.queue.empty(), f"unexpected: {self.queue.get_nowait()!r}"


class Peer:
    """A viewer and its session on an edge, joined by a real DataChannel over loopback."""

    def __init__(self, viewer_pc: Any, edge_pc: Any, viewer: Any, edge: Any) -> None:
        self.viewer_pc, self.edge_pc = viewer_pc, edge_pc
        self.viewer, self.edge = viewer, edge
        self.inbox = Inbox(viewer)

    def send(self, message: str | bytes) -> None:
        self.viewer.send(message)

    async def close(self) -> None:
        await self.viewer_pc.close()
        await self.edge_pc.close()


async def connect_peer(stack: AsyncExitStack, label: str = ANNOTATIONS_CHANNEL) -> Peer:
    viewer_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    edge_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    accepted: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @edge_pc.on("datachannel")
    def on_datachannel(channel: Any) -> None:
        if not accepted.done():
            accepted.set_result(channel)

    viewer = viewer_pc.createDataChannel(label)
    opened = asyncio.Event()
    viewer.on("open", opened.set)
    await viewer_pc.setLocalDescription(await viewer_pc.createOffer())
    await edge_pc.setRemoteDescription(viewer_pc.localDescription)
    await edge_pc.setLocalDescription(await edge_pc.createAnswer())
    await viewer_pc.setRemoteDescription(edge_pc.localDescription)
    edge = await asyncio.wait_for(accepted, WAIT_S)
    await asyncio.wait_for(opened.wait(), WAIT_S)
    peer = Peer(viewer_pc, edge_pc, viewer, edge)
    stack.push_async_callback(peer.close)
    return peer


def join(room: RoomAnnotations, peer: Peer, sender: AnnotationSender) -> None:
    """What the edge does with a session's annotations channel."""
    room.attach(peer.edge, sender)
    peer.edge.on("message", lambda data: room.on_message(peer.edge, sender, data))


class Edge:
    """One edge's annotations of one room, on its own NATS connection."""

    def __init__(self, bus: Bus, room: RoomAnnotations, counters: Counters) -> None:
        self.bus, self.room, self.counters = bus, room, counters
        self.refused: list[tuple[AnnotationSender, str]] = []


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    advertise_only(["127.0.0.1"])  # aioice never offers loopback on its own
    async with AsyncExitStack() as stack:
        yield stack


async def start_edge(
    stack: AsyncExitStack, nats_url: str, edge_id: str, room: str = "or1", **options: Any
) -> Edge:
    bus = await Bus.connect(nats_url, f"test-{edge_id}")
    stack.push_async_callback(bus.close)
    counters = Counters(f"test.{edge_id}")
    feed = RoomAnnotations(bus, SITE, room, edge_id, counters, **options)
    edge = Edge(bus, feed, counters)
    feed.on_refused = lambda sender, reason: edge.refused.append((sender, reason))
    await feed.start()
    stack.push_async_callback(feed.stop)
    return edge


class Tap:
    """A plain NATS subscriber on the room's subject: what the OR wall display would see."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def next(self) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.queue.get(), WAIT_S)
        return json.loads(msg.data)

    async def quiet(self) -> None:
        await asyncio.sleep(QUIET_S)
        assert self.queue.empty(), f"unexpected on NATS: {self.queue.get_nowait().data!r}"


async def tap(stack: AsyncExitStack, nats_url: str, room: str = "or1") -> Tap:
    bus = await Bus.connect(nats_url, "test-tap")
    stack.push_async_callback(bus.close)
    listener = Tap()

    async def on_msg(msg: Msg) -> None:
        listener.queue.put_nowait(msg)

    await bus.subscribe(annotation(SITE, room), on_msg)
    return listener


async def test_a_stroke_reaches_the_room_on_every_edge_stamped_but_not_its_sender(
    stack: AsyncExitStack, nats_url: str
) -> None:
    edge_a = await start_edge(stack, nats_url, "edge-a")
    edge_b = await start_edge(stack, nats_url, "edge-b")
    other_room = await start_edge(stack, nats_url, "edge-a2", room="or2")
    wall = await tap(stack, nats_url)
    expert, surgeon, remote, elsewhere = [await connect_peer(stack) for _ in range(4)]
    join(edge_a.room, expert, EXPERT)
    join(edge_a.room, surgeon, SURGEON)
    join(edge_b.room, remote, STUDENT)
    join(other_room.room, elsewhere, OPS)

    forged = {
        "subject": "mallory",
        "role": "surgeon",
        "site": "elsewhere",
        "room": "or9",
        "ts_ns": 1,
        "origin": "edge-b/forged",
        "sender": {"subject": "mallory"},
    }
    before = time.time_ns()
    expert.send(stroke("s1", **forged))

    on_nats = await wall.next()
    after = time.time_ns()
    seen_here, seen_there = await surgeon.inbox.next(), await remote.inbox.next()
    assert seen_here == on_nats and seen_there == on_nats, "one encoding, the same everywhere"
    assert on_nats["type"] == "stroke" and on_nats["id"] == "s1"
    assert on_nats["points"] == [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]
    assert (on_nats["subject"], on_nats["role"]) == ("dr-mentor", "expert")
    assert (on_nats["site"], on_nats["room"]) == (SITE, "or1")
    assert before <= on_nats["ts_ns"] <= after
    assert on_nats["origin"] == origin_of("edge-a", EXPERT.session_id)
    assert EXPERT.session_id not in on_nats["origin"], "the session id is the key to DELETE"
    assert "sender" not in on_nats

    # The sender gets no echo: the next thing it sees is a later chat from another peer.
    surgeon.send(chat("clamp now"))
    said = await expert.inbox.next()
    assert said["type"] == "chat" and said["text"] == "clamp now"
    assert said["subject"] == "dr-lead" and said["id"], "an id is made when the peer gives none"
    assert (await remote.inbox.next())["text"] == "clamp now"
    await surgeon.inbox.quiet()
    await elsewhere.inbox.quiet()
    assert edge_a.counters.snapshot().get("annotations_published") == 2


async def test_a_student_may_chat_but_not_draw(stack: AsyncExitStack, nats_url: str) -> None:
    edge = await start_edge(stack, nats_url, "edge-s")
    wall = await tap(stack, nats_url)
    student, ops, expert = [await connect_peer(stack) for _ in range(3)]
    join(edge.room, student, STUDENT)
    join(edge.room, ops, OPS)
    join(edge.room, expert, EXPERT)

    student.send(stroke("sketch"))
    student.send(json.dumps({"type": "pointer", "stream": "endo", "x": 0.5, "y": 0.5}))
    student.send(json.dumps({"type": "clear"}))
    errors = [await student.inbox.next() for _ in range(3)]
    assert all(e["type"] == "error" and "may not annotate" in e["reason"] for e in errors)
    assert errors[0]["id"] == "sketch"
    ops.send(chat("anyone?"))
    ops_error = await ops.inbox.next()
    assert ops_error["type"] == "error" and "may not chat" in ops_error["reason"]

    student.send(chat("why that angle?"))  # the sentinel: published after all the above
    first = await wall.next()
    assert first["type"] == "chat" and first["subject"] == "student-7"
    await wall.quiet()
    assert (await expert.inbox.next()) == first
    await expert.inbox.quiet()
    assert edge.counters.snapshot()["annotations_refused"] == 4
    assert [(s.subject, "may not" in r) for s, r in edge.refused] == [
        ("student-7", True),
        ("student-7", True),
        ("student-7", True),
        ("biomed-2", True),
    ]


MALFORMED: dict[str, str | bytes] = {
    "not-json": "not json",
    "not-utf8": b"\xff\xfe",
    "missing-fields": '{"type": "stroke"}',
    "unknown-type": '{"type": "erase", "stream": "endo"}',
    "server-only-type": '{"type": "error", "reason": "x"}',
    "point-outside-picture": stroke(points=[[1.5, 0.2]]),
    "no-points": stroke(points=[]),
    "point-not-a-pair": stroke(points=[[0.1, 0.2, 0.3]]),
    "too-many-points": stroke(points=[[0.5, 0.5]] * 2001),
    "bad-color": stroke(color="red"),
    "bad-width": stroke(width=2),
    "bad-stream-name": stroke(stream="endo.>"),
    "long-id": stroke(stroke_id="a" * 65),
    "long-chat": chat("x" * 2001),
    "empty-chat": chat(""),
    "oversized": json.dumps({"type": "chat", "text": "y" * (MAX_MESSAGE_BYTES + 100)}),
}


async def test_malformed_and_oversized_messages_are_refused(
    stack: AsyncExitStack, nats_url: str
) -> None:
    edge = await start_edge(stack, nats_url, "edge-m")
    wall = await tap(stack, nats_url)
    expert = await connect_peer(stack)
    join(edge.room, expert, EXPERT)

    for case, message in MALFORMED.items():
        expert.send(message)
        error = await expert.inbox.next()
        assert error["type"] == "error" and error["reason"].startswith("malformed"), case
    assert "larger than" in error["reason"]
    assert edge.counters.snapshot()["annotations_malformed"] == len(MALFORMED)
    assert edge.refused == [], "malformed input is not a rights refusal"

    expert.send(stroke("fine"))  # the channel keeps working; the sentinel is all NATS sees
    assert (await wall.next())["id"] == "fine"
    await wall.quiet()
    assert edge.counters.snapshot()["annotations_published"] == 1


async def test_a_late_joiner_sees_the_drawing_and_clear_wipes_it(
    stack: AsyncExitStack, nats_url: str
) -> None:
    edge = await start_edge(stack, nats_url, "edge-l")
    remote_edge = await start_edge(stack, nats_url, "edge-r")
    expert = await connect_peer(stack)
    join(edge.room, expert, EXPERT)
    wall = await tap(stack, nats_url)

    expert.send(stroke("a", stream="endo"))
    expert.send(stroke("b", stream="cam"))
    expert.send(stroke("a", stream="endo", points=[[0.9, 0.9]]))  # "a" drawn further
    expert.send(stroke("c", stream="endo"))
    for _ in range(4):
        await wall.next()

    async def late_joiner(on: Edge, sender: AnnotationSender) -> Peer:
        peer = await connect_peer(stack)
        join(on.room, peer, sender)
        return peer

    for on in (edge, remote_edge):  # every edge in the room keeps the drawing
        joiner = await late_joiner(on, SURGEON)
        drawn = [await joiner.inbox.next() for _ in range(3)]
        assert [(m["id"], m["stream"]) for m in drawn] == [
            ("b", "cam"),
            ("a", "endo"),
            ("c", "endo"),
        ]
        assert drawn[1]["points"] == [[0.9, 0.9]]
        await joiner.inbox.quiet()

    expert.send(json.dumps({"type": "clear", "stream": "endo"}))
    cleared = await joiner.inbox.next()
    assert cleared["type"] == "clear" and cleared["stream"] == "endo"
    second = await late_joiner(edge, STUDENT)
    assert (await second.inbox.next())["id"] == "b"
    await second.inbox.quiet()

    expert.send(json.dumps({"type": "clear", "stream": None}))
    assert (await second.inbox.next())["type"] == "clear"
    third = await late_joiner(remote_edge, STUDENT)
    expert.send(chat("all clean"))
    assert (await third.inbox.next())["type"] == "chat", "no strokes left to replay"


async def test_remembered_strokes_are_bounded(stack: AsyncExitStack, nats_url: str) -> None:
    edge = await start_edge(stack, nats_url, "edge-b", max_strokes=2)
    wall = await tap(stack, nats_url)
    expert = await connect_peer(stack)
    join(edge.room, expert, EXPERT)
    for name in ("one", "two", "three"):
        expert.send(stroke(name))
    for _ in range(3):
        await wall.next()
    joiner = await connect_peer(stack)
    join(edge.room, joiner, SURGEON)
    assert [(await joiner.inbox.next())["id"] for _ in range(2)] == ["two", "three"]
    await joiner.inbox.quiet()


class BrokenChannel:
    """A channel that says it is open but whose transport is gone."""

    readyState = "open"

    def send(self, data: str) -> None:
        raise ConnectionError("transport closed")


async def test_closed_and_broken_channels_never_raise(stack: AsyncExitStack, nats_url: str) -> None:
    edge = await start_edge(stack, nats_url, "edge-c")
    expert, gone = await connect_peer(stack), await connect_peer(stack)
    join(edge.room, expert, EXPERT)
    join(edge.room, gone, SURGEON)
    edge.room.attach(BrokenChannel(), STUDENT)
    await gone.close()
    for _ in range(int(WAIT_S / 0.05)):
        if gone.edge.readyState == "closed":
            break
        await asyncio.sleep(0.05)
    assert gone.edge.readyState == "closed"

    expert.send(stroke("s"))
    edge.room.on_message(gone.edge, SURGEON, "not json")  # the error back goes nowhere, quietly
    edge.room.on_message(BrokenChannel(), STUDENT, stroke("x"))  # refused; the error send fails
    for _ in range(int(WAIT_S / 0.05)):
        if edge.counters.snapshot().get("annotations_send_errors", 0) >= 2:
            break
        await asyncio.sleep(0.05)
    counts = edge.counters.snapshot()
    assert counts["annotations_send_errors"] == 2, counts
    assert counts["annotations_published"] == 1


async def test_a_channel_attached_before_it_opens_gets_the_drawing_once_open(
    stack: AsyncExitStack, nats_url: str
) -> None:
    edge = await start_edge(stack, nats_url, "edge-o")
    wall = await tap(stack, nats_url)
    expert = await connect_peer(stack)
    join(edge.room, expert, EXPERT)
    expert.send(stroke("early"))
    await wall.next()

    # Here the edge opens the channel: its end is attached while still connecting.
    edge_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    viewer_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    stack.push_async_callback(viewer_pc.close)
    stack.push_async_callback(edge_pc.close)
    accepted: asyncio.Future[Inbox] = asyncio.get_running_loop().create_future()
    viewer_pc.on("datachannel", lambda channel: accepted.set_result(Inbox(channel)))
    edge_end = edge_pc.createDataChannel(ANNOTATIONS_CHANNEL)
    assert edge_end.readyState == "connecting"
    edge.room.attach(edge_end, SURGEON)
    await edge_pc.setLocalDescription(await edge_pc.createOffer())
    await viewer_pc.setRemoteDescription(edge_pc.localDescription)
    await viewer_pc.setLocalDescription(await viewer_pc.createAnswer())
    await edge_pc.setRemoteDescription(viewer_pc.localDescription)
    inbox = await asyncio.wait_for(accepted, WAIT_S)
    assert (await inbox.next())["id"] == "early"
    await inbox.quiet()
