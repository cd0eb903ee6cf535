"""The stats DataChannel between real aiortc peers: reports out, receipts in, ends with the channel."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, VideoStreamTrack

from orstream.common.telemetry import Counters
from orstream.signaling.ice import advertise_only
from orstream.signaling.stats import STATS_CHANNEL, SessionStats, rtcp_numbers

WAIT_S = 10.0
INTERVAL_S = 0.05
POLL_S = 0.02


class Peer:
    """A viewer and the edge's end of its stats channel, joined over loopback."""

    def __init__(self, viewer_pc: Any, edge_pc: Any, viewer: Any, edge: Any) -> None:
        self.viewer_pc, self.edge_pc = viewer_pc, edge_pc
        self.viewer, self.edge = viewer, edge
        self.received: asyncio.Queue[Any] = asyncio.Queue()
        viewer.on("message", self.received.put_nowait)

    async def next(self) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.received.get(), WAIT_S))

    async def close(self) -> None:
        await self.viewer_pc.close()
        await self.edge_pc.close()


async def negotiate(offerer: Any, answerer: Any) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    advertise_only(["127.0.0.1"])  # aioice never offers loopback on its own
    viewer_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    edge_pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    accepted: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    edge_pc.on("datachannel", accepted.set_result)
    viewer = viewer_pc.createDataChannel(STATS_CHANNEL)
    opened = asyncio.Event()
    viewer.on("open", opened.set)
    await negotiate(viewer_pc, edge_pc)
    edge = await asyncio.wait_for(accepted, WAIT_S)
    await asyncio.wait_for(opened.wait(), WAIT_S)
    result = Peer(viewer_pc, edge_pc, viewer, edge)
    yield result
    await result.close()


async def until(condition: Any, what: str) -> None:
    for _ in range(int(WAIT_S / POLL_S)):
        if condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"not within {WAIT_S} s: {what}")


async def test_the_peer_gets_a_report_every_interval(peer: Peer) -> None:
    counters = Counters("test.stats")
    ticks = iter(range(1000))

    def snapshot() -> dict[str, Any]:
        return {
            "rendition": "src",
            "aus_sent": next(ticks),
            "aus_dropped": 0,
            "queue_depth": 2,
            "rtt_ms": 1.5,
            "type": "not mine",
        }

    stats = SessionStats(peer.edge, snapshot, INTERVAL_S, counters)
    stats.start()
    try:
        reports = [await peer.next() for _ in range(4)]
    finally:
        await stats.stop()
    assert [r["seq"] for r in reports] == [0, 1, 2, 3]
    assert [r["aus_sent"] for r in reports] == [0, 1, 2, 3]
    assert all(r["type"] == "stats" for r in reports), "the edge's fields win over the snapshot's"
    assert all(r["rendition"] == "src" and r["rtt_ms"] == 1.5 for r in reports)
    stamps = [r["ts_ns"] for r in reports]
    assert stamps == sorted(stamps) and stamps[-1] - stamps[0] >= 3 * INTERVAL_S * 1e9 * 0.5
    assert counters.snapshot()["stats_sent"] >= 4
    assert not stats.running


async def test_an_async_snapshot_and_a_failing_one(peer: Peer) -> None:
    counters = Counters("test.stats")
    calls = 0

    async def snapshot() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("fan-out gone")
        return {"aus_sent": calls}

    stats = SessionStats(peer.edge, snapshot, INTERVAL_S, counters)
    stats.start()
    try:
        first = await peer.next()
    finally:
        await stats.stop()
    assert first["seq"] == 0 and first["aus_sent"] == 2, "a failed tick is skipped, not fatal"
    assert counters.snapshot()["stats_snapshot_errors"] == 1


async def test_a_receipt_is_kept_and_malformed_ones_counted(peer: Peer) -> None:
    counters = Counters("test.stats")
    stats = SessionStats(peer.edge, dict, 60.0, counters)
    stats.start()
    try:
        assert (await peer.next())["seq"] == 0
        before = time.time_ns()
        receipt = {
            "type": "receipt",
            "frames": 250,
            "decode_ms": 3.5,
            "glass_to_glass_ms": 48.0,
            "glass_to_glass_p95_ms": 61.0,
            "received_ns": 7,
        }
        peer.viewer.send(json.dumps(receipt))
        await until(lambda: stats.last_report is not None, "the receipt is stored")
        report = stats.last_report
        assert report is not None
        assert (report.frames, report.decode_ms, report.glass_to_glass_ms) == (250, 3.5, 48.0)
        assert report.glass_to_glass_p95_ms == 61.0 and report.frames_dropped is None
        assert report.received_ns >= before, "the edge stamps arrival, not the peer"
        as_dict = report.as_dict()
        assert as_dict["type"] == "receipt" and as_dict["frames"] == 250

        malformed = [
            "{not json",
            json.dumps({"type": "receipt", "frames": -1}),
            json.dumps({"type": "receipt", "frames": 1, "decode_ms": "fast"}),
            json.dumps({"type": "stats", "frames": 1}),
            json.dumps({"type": "receipt", "frames": 1, "pad": "x" * 5000}),
            b"\x00\x01",
        ]
        for message in malformed:
            peer.viewer.send(message)
            error = await peer.next()
            assert error["type"] == "error" and error["reason"].startswith("malformed"), message
        assert counters.snapshot()["stats_malformed"] == len(malformed)
        assert stats.last_report is report, "a malformed message never replaces the last report"
    finally:
        await stats.stop()


async def test_reporting_ends_when_the_channel_closes(peer: Peer) -> None:
    counters = Counters("test.stats")
    stats = SessionStats(peer.edge, lambda: {"aus_sent": 1}, INTERVAL_S, counters)
    stats.start()
    try:
        await peer.next()
        await peer.viewer_pc.close()
        await until(lambda: not stats.running, "the report task ends with the channel")
        assert peer.edge.readyState == "closed"
    finally:
        await stats.stop()


async def test_rtcp_numbers_of_a_video_sender() -> None:
    advertise_only(["127.0.0.1"])
    async with AsyncExitStack() as stack:
        sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        stack.push_async_callback(receiver.close)
        stack.push_async_callback(sender.close)
        sender.addTrack(VideoStreamTrack())
        receiver.addTransceiver("video", direction="recvonly")
        await negotiate(receiver, sender)
        numbers: dict[str, float | int] = {}
        for _ in range(int(WAIT_S / 0.1)):  # the peer reports after the first sender report
            numbers = await rtcp_numbers(sender)
            if "rtt_ms" in numbers:
                break
            await asyncio.sleep(0.1)
        assert "rtt_ms" in numbers, numbers
        assert 0 <= numbers["rtt_ms"] < 1000 and 0 <= numbers["fraction_lost"] <= 1
        assert numbers["packets_sent"] > 0 and numbers["bytes_sent"] > 0
        assert numbers["jitter_ms"] >= 0
        quiet = await rtcp_numbers(receiver)
        assert quiet.get("packets_sent", 0) == 0 and "rtt_ms" not in quiet, "receive-only"
