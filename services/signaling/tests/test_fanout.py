"""Encode-once fan-out: one packetization per AU for all peers, per-AU delivery timing, slow
peers skipping to the next keyframe, keyframe requests coalesced over a real NATS."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from typing import Any

import aiortc.clock
import av
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs.h264 import H264Encoder as AiortcPacketizer
from nats.aio.msg import Msg

from orstream.common.bus import Bus
from orstream.common.messages import AccessUnitMeta
from orstream.common.subjects import StreamId
from orstream.common.telemetry import Counters, HopLatency
from orstream.signaling.fanout import StreamFanout, StreamLatency
from orstream.signaling.remb import RembRecordingPacketizer, ntp_time, record_remb
from orstream.signaling.track import DELIVERY_RANK, AccessUnit, AccessUnitTrack, DeliveryLatency

STREAM = StreamId("fansite", "or1", "cam")
START_CODE = b"\x00\x00\x00\x01"


def annex_b(seq: int, key: bool) -> bytes:
    """An AU as Annex B: small parameter sets (one STAP-A) and a slice that needs FU-A."""
    nals = [bytes([0x67]) + bytes(12), bytes([0x68]) + bytes(4)] if key else []
    nals.append(bytes([0x65 if key else 0x41]) + bytes([seq % 251]) * 4000)
    return b"".join(START_CODE + nal for nal in nals)


def access_unit(seq: int, key: bool, delivery: DeliveryLatency | None = None) -> AccessUnit:
    packet = av.Packet(annex_b(seq, key))
    packet.pts = seq * 1800
    packet.time_base = Fraction(1, 90_000)
    now = time.time_ns()
    meta = AccessUnitMeta(seq, seq * 1800, key, "h264", now, now, now)
    return AccessUnit(packet, meta, now, delivery)


def track(queue_limit: int = 8, requests: list[int] | None = None) -> AccessUnitTrack:
    def request() -> None:
        if requests is not None:
            requests.append(1)

    return AccessUnitTrack(queue_limit, request, Counters("test"))


async def test_peers_of_a_fanout_packetize_each_au_once() -> None:
    peers = [track() for _ in range(3)]
    packetizers = [RembRecordingPacketizer(t) for t in peers]
    unit = access_unit(0, key=True)
    for t in peers:
        t.push(unit)
    packed = [p.pack(await t.recv()) for t, p in zip(peers, packetizers, strict=True)]
    expected = AiortcPacketizer().pack(unit.packet)
    assert packed[0] == expected
    assert len(expected[0]) == 5  # STAP-A with SPS+PPS, then the slice in four FU-A
    assert all(p is packed[0] for p in packed), "every peer reuses the first peer's payloads"


async def test_per_peer_packetization_gives_the_same_payloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RembRecordingPacketizer, "share_packetization", False)
    peers = [track() for _ in range(2)]
    packetizers = [RembRecordingPacketizer(t) for t in peers]
    unit = access_unit(1, key=True)
    for t in peers:
        t.push(unit)
    packed = [p.pack(await t.recv()) for t, p in zip(peers, packetizers, strict=True)]
    assert packed[0] == packed[1] == AiortcPacketizer().pack(unit.packet)
    assert packed[0] is not packed[1]
    assert unit.rtp is None


async def test_a_packet_that_is_not_the_tracks_au_is_packed_as_aiortc_does() -> None:
    t = track()
    packetizer = RembRecordingPacketizer(t)
    unit = access_unit(2, key=True)
    assert packetizer.pack(unit.packet) == AiortcPacketizer().pack(unit.packet)
    assert unit.rtp is None


async def test_senders_get_the_packetizer_and_a_clock_that_agrees_with_aiortcs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = aiortc.clock.current_ntp_time
    monkeypatch.setattr(aiortc.clock, "current_ntp_time", original)
    before = original()
    ours = ntp_time()
    after = original()
    resolution = (1 << 32) // 1_000_000  # aiortc's clock counts microseconds
    assert before - resolution <= ours <= after + resolution
    pc = RTCPeerConnection()
    try:
        t = track()
        sender = pc.addTransceiver(t, direction="sendonly").sender
        record_remb(sender, t)
        assert isinstance(sender._RTCRtpSender__encoder, RembRecordingPacketizer)  # type: ignore[attr-defined]
        assert aiortc.clock.current_ntp_time is ntp_time
        sender._RTCRtpSender__encoder.target_bitrate = 1_500_000  # type: ignore[attr-defined]
        assert t.remb_bps == 1_500_000
    finally:
        await pc.close()


async def test_delivery_is_timed_to_the_tenth_and_the_last_peer() -> None:
    delivery = DeliveryLatency(DELIVERY_RANK, HopLatency("peer10"), HopLatency("last"))
    peers = [track() for _ in range(DELIVERY_RANK + 2)]
    first = access_unit(0, key=True, delivery=delivery)
    for t in peers:
        t.push(first)
    for t in peers:
        assert await t.recv() is first.packet
    peers[-1].stop()  # one peer leaves mid-AU: the last-peer time does not wait for it
    second = access_unit(1, key=False, delivery=delivery)
    for t in peers[:-1]:
        t.push(second)
    for i, t in enumerate(peers[:-1]):
        await t.recv()  # closes the first AU for this peer
        ranked = delivery.ranked.summary()["n"]
        assert ranked == (1 if i + 1 >= DELIVERY_RANK else 0)
        assert delivery.last.summary()["n"] == (1 if t is peers[-2] else 0)
    assert delivery.last.summary()["n"] == 1


async def test_a_slow_peer_skips_to_the_next_keyframe_without_holding_others() -> None:
    requests: list[int] = []
    slow, steady = track(queue_limit=3, requests=requests), track(queue_limit=3)
    units = [access_unit(0, key=True)] + [access_unit(i, key=False) for i in range(1, 4)]
    for unit in units[:3]:
        slow.push(unit)
        steady.push(unit)
        assert await steady.recv() is unit.packet
    slow.push(units[3])  # full: what it holds is dropped, and it waits for an IDR
    assert slow.queued == 0
    assert requests == [1]
    slow.push(access_unit(4, key=False))
    assert slow.queued == 0
    steady.push(units[3])
    assert await steady.recv() is units[3].packet
    key = access_unit(5, key=True)
    slow.push(key)
    assert await slow.recv() is key.packet


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, "test-fanout")
    yield b
    await b.close()


async def _publish_au(bus: Bus, seq: int, key: bool) -> None:
    now = time.time_ns()
    meta = AccessUnitMeta(seq, seq * 1800, key, "h264", now, now, now)
    await bus.publish(STREAM.encoded(), annex_b(seq, key), meta.to_headers())


async def _until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.integration
async def test_keyframe_requests_are_coalesced_and_a_late_one_is_deferred(bus: Bus) -> None:
    requests: list[Msg] = []

    async def on_request(msg: Msg) -> None:
        requests.append(msg)

    await bus.subscribe(STREAM.keyframe(), on_request)
    counters = Counters("test")
    fanout = StreamFanout(STREAM, bus, counters, 1.0, StreamLatency(STREAM))
    await fanout.start()
    try:
        peers = [fanout.attach(8) for _ in range(3)]  # each joining peer asks for an IDR
        for t in peers:
            t.keyframe_needed()  # and PLIs arrive before the IDR does
        await _until(lambda: len(requests) == 1)
        await _publish_au(bus, 0, key=True)
        await _until(lambda: all(t.queued == 1 for t in peers))
        peers[0].keyframe_needed()  # lost that IDR: asked again within the interval
        await asyncio.sleep(0.1)
        assert len(requests) == 1, "deferred to the end of the interval, not sent at once"
        await _until(lambda: len(requests) == 2)
        snapshot = counters.snapshot()
        assert snapshot["keyframe_requests"] == 2
        assert snapshot["keyframe_requests_coalesced"] == 6
        await asyncio.sleep(1.05)
        peers[1].keyframe_needed()  # a whole interval later: at once
        await _until(lambda: len(requests) == 3)
    finally:
        await fanout.stop()


@pytest.mark.integration
async def test_a_keyframe_serves_a_deferred_request(bus: Bus) -> None:
    requests: list[Msg] = []

    async def on_request(msg: Msg) -> None:
        requests.append(msg)

    await bus.subscribe(STREAM.keyframe(), on_request)
    fanout = StreamFanout(STREAM, bus, Counters("test"), 1.0, StreamLatency(STREAM))
    await fanout.start()
    try:
        peer = fanout.attach(8)
        await _until(lambda: len(requests) == 1)
        await _publish_au(bus, 0, key=True)
        await _until(lambda: peer.queued == 1)
        peer.keyframe_needed()  # deferred …
        await _publish_au(bus, 1, key=True)  # … and the next IDR arrives before it is due
        await _until(lambda: peer.queued == 2)
        await asyncio.sleep(1.1)
        assert len(requests) == 1
    finally:
        await fanout.stop()


@pytest.mark.integration
async def test_every_peer_gets_the_same_au_and_a_moved_track_restarts_at_an_idr(
    bus: Bus,
) -> None:
    latency = StreamLatency(STREAM)
    src = StreamFanout(STREAM, bus, Counters("test"), 0.0, latency)
    low = StreamFanout(STREAM, bus, Counters("test"), 0.0, latency, rendition="low")
    await src.start()
    await low.start()
    try:
        a, b = src.attach(8), src.attach(8)
        await _publish_au(bus, 0, key=True)
        await _until(lambda: a.queued == 1 and b.queued == 1)
        assert await a.recv() is await b.recv()
        low.adopt(b)
        src.detach(b, stop=False)
        assert b.readyState == "live"
        now = time.time_ns()
        meta = AccessUnitMeta(1, 1800, False, "h264", now, now, now)
        await bus.publish(STREAM.encoded("low"), annex_b(1, False), meta.to_headers())
        meta = AccessUnitMeta(2, 3600, True, "h264", now, now, now)
        await bus.publish(STREAM.encoded("low"), annex_b(2, True), meta.to_headers())
        await _until(lambda: b.queued == 1)
        packet = await b.recv()
        assert packet.is_keyframe and packet.pts == 3600
        src.detach(a)
        assert a.readyState == "ended"
    finally:
        await src.stop()
        await low.stop()
