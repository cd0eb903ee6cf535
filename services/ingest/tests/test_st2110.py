"""RFC 4175 flows from GStreamer's ``rtpvrawpay`` through the real ingest service: the pixels in
the ring are the pixels that were sent, lost packets drop whole frames, bad datagrams are counted."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
from pathlib import Path

import pytest

from orstream.common.shm import SlotInfo

pytestmark = pytest.mark.integration


def sha1(view: memoryview, info: SlotInfo) -> bytes:
    return hashlib.sha1(view).digest()


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_sdp(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "camera.sdp"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("width", "height", "fps", "depth", "frames"),
    [(640, 360, 25, 8, 40), (1280, 720, 50, 10, 100)],
    ids=["640x360p25-8bit", "1280x720p50-10bit"],
)
async def test_frames_are_reassembled_pixel_exact(
    tmp_path: Path, run_ingest, gst_flow, st2110_sdp, width, height, fps, depth, frames
) -> None:
    port = udp_port()
    sdp = write_sdp(tmp_path, st2110_sdp(port, width, height, str(fps), depth))
    async with run_ingest(f"sdp:{sdp}", sha1) as run:
        flow = gst_flow(port, width, height, fps, depth, frames)
        await flow.wait()
        await run.until(lambda: len(run.frames) >= frames, 5, "every frame")
        sent = [hashlib.sha1(f).digest() for f in flow.sent()]
        assert len(sent) == frames
        got = [digest for _, digest in run.frames]
        assert got == sent, "every frame, in order, byte for byte as sent"
        d = await run.descriptor()
        assert d is not None
        assert (d.width, d.height, d.fps, d.bit_depth, d.colorimetry) == (
            width, height, fps, depth, "BT709"
        )  # fmt: skip
        assert d.pix_fmt == ("uyvp" if depth == 10 else "uyvy422")
        counters = run.service.stats(0)["counters"]
        assert counters["video_frames_complete"] == frames
        assert counters["video_packets_lost"] == counters["video_frames_dropped"] == 0


async def test_a_silent_sender_stalls_the_stream_and_it_recovers(
    tmp_path: Path, run_ingest, gst_flow, st2110_sdp
) -> None:
    port = udp_port()
    sdp = write_sdp(tmp_path, st2110_sdp(port, 320, 180, "25", 8))
    async with run_ingest(f"sdp:{sdp}", stall_after_s=0.5) as run:
        assert await run.state() == "starting"
        await gst_flow(port, 320, 180, 25, 8, 25).wait()
        await run.until(_state(run, "stalled"), 5, "the stream to stall")
        d = await run.descriptor()
        assert d is not None and d.reason.startswith("no frame for")
        before = len(run.frames)
        flow = gst_flow(port, 320, 180, 25, 8, 25)
        await run.until(_state(run, "live"), 5, "the stream to recover")
        await flow.wait()
        assert len(run.frames) > before
        assert run.service.stats(0)["counters"]["stalls"] >= 1


def _state(run, state: str):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return await run.state() == state

    return check


class LossyRelay(asyncio.DatagramProtocol):
    """Forwards datagrams to ``target``, dropping every ``nth``: a lossy network link."""

    def __init__(self, target: tuple[str, int], nth: int) -> None:
        self.target, self.nth, self.count, self.dropped = target, nth, 0, 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.count += 1
        if self.count % self.nth == 0:
            self.dropped += 1
            return
        assert self.transport is not None
        self.transport.sendto(data, self.target)


async def test_lost_packets_drop_whole_frames_never_torn(
    tmp_path: Path, run_ingest, gst_flow, st2110_sdp
) -> None:
    port = udp_port()
    sdp = write_sdp(tmp_path, st2110_sdp(port, 320, 180, "25", 8))
    loop = asyncio.get_running_loop()
    relay_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    relay_sock.bind(("127.0.0.1", 0))
    transport, relay = await loop.create_datagram_endpoint(
        lambda: LossyRelay(("127.0.0.1", port), nth=97), sock=relay_sock
    )
    try:
        relay_port = transport.get_extra_info("sockname")[1]
        async with run_ingest(f"sdp:{sdp}", sha1) as run:
            flow = gst_flow(relay_port, 320, 180, 25, 8, 40)
            await flow.wait()
            await asyncio.sleep(0.3)
            sent = {hashlib.sha1(f).digest() for f in flow.sent()}
            counters = run.service.stats(0)["counters"]
    finally:
        transport.close()
    assert relay.dropped >= 10
    assert counters["video_packets_lost"] == relay.dropped
    assert counters["video_frames_dropped"] >= 5, "each frame that lost a packet is dropped"
    assert counters["video_frames_complete"] + counters["video_frames_dropped"] == 40
    assert run.frames and all(digest in sent for _, digest in run.frames), "no torn frame"


async def test_malformed_datagrams_are_counted_and_the_flow_goes_on(
    tmp_path: Path, run_ingest, gst_flow, st2110_sdp
) -> None:
    port = udp_port()
    sdp = write_sdp(tmp_path, st2110_sdp(port, 640, 360, "25", 8))
    rtp = struct.Struct("!BBHII")
    garbage = [
        b"\x80",  # truncated
        b"\x40" * 40,  # RTP version 1
        rtp.pack(0x80, 96, 1, 0, 0x2110) + b"\x00\x00" + struct.pack("!HHH", 0x8000, 1, 0x8000),
        rtp.pack(0x80, 96, 2, 0, 0x2110)
        + b"\x00\x00"
        + struct.pack("!HHH", 64, 9999, 0)
        + b"x" * 64,
        rtp.pack(0x90, 96, 3, 0, 0x2110) + b"\x00\x01\xff\xff",  # extension longer than packet
        rtp.pack(0x80, 33, 4, 0, 0x2110) + b"\x00" * 50,  # another payload type
    ]
    async with run_ingest(f"sdp:{sdp}", sha1) as run:
        flow = gst_flow(port, 640, 360, 25, 8, 50)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as injector:
            for _ in range(10):
                await asyncio.sleep(0.1)
                for datagram in garbage:
                    injector.sendto(datagram, ("127.0.0.1", port))
        await flow.wait()
        await asyncio.sleep(0.3)
        sent = {hashlib.sha1(f).digest() for f in flow.sent()}
        counters = run.service.stats(0)["counters"]
    assert counters["video_packets_malformed"] >= 30
    assert counters["video_packets_foreign"] >= 10
    assert counters["video_frames_complete"] >= 30, "the flow went on"
    assert all(digest in sent for _, digest in run.frames), "no torn frame"


async def test_multicast_with_a_source_filter_takes_only_the_named_sender(
    tmp_path: Path, run_ingest, gst_flow, st2110_sdp
) -> None:
    port = udp_port()
    group = "239.21.10.20"
    ok = write_sdp(tmp_path, st2110_sdp(port, 320, 180, "25", 8, group, ("127.0.0.1",)))
    async with run_ingest(f"sdp:{ok}?interface=127.0.0.1", sha1) as run:
        await gst_flow(port, 320, 180, 25, 8, 20, host=group).wait()
        await run.until(lambda: len(run.frames) >= 20, 5, "the group's frames")
    other = tmp_path / "other-sender.sdp"
    other.write_text(st2110_sdp(port, 320, 180, "25", 8, group, ("127.0.0.9",)))
    async with run_ingest(f"sdp:{other}?interface=127.0.0.1", stream="cam2") as run:
        await gst_flow(port, 320, 180, 25, 8, 20, host=group).wait()
        await asyncio.sleep(0.3)
        assert run.frames == [], "the kernel's source filter kept 127.0.0.1 out"
        assert await run.state() == "starting"


async def test_unicast_source_filter_is_honoured(
    tmp_path: Path, run_ingest, gst_flow, st2110_sdp
) -> None:
    port = udp_port()
    sdp = write_sdp(tmp_path, st2110_sdp(port, 320, 180, "25", 8, sources=("127.0.0.9",)))
    async with run_ingest(f"sdp:{sdp}") as run:
        await gst_flow(port, 320, 180, 25, 8, 10).wait()
        await asyncio.sleep(0.3)
        assert run.frames == []
        assert run.service.stats(0)["counters"]["video_packets_foreign"] > 100
