"""Media through the edge with every service as its own process: a room session carries each
stream of the OR on its own transceiver, and a peer whose receiver reports a weak link moves to
the encoder's smaller rendition (or asks for it)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator

import pytest
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig, StreamSpec
from orstream.viewer.probe import Probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOM_SIZES = {"endoscope": (1280, 720), "roomcam": (640, 360)}
#: What a weak link's receiver says it can take (bit/s): far below the source rendition.
WEAK_LINK_BPS = 150_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("edge-media")
    config = StackConfig(
        site=f"em{uuid.uuid4().hex[:6]}",
        streams=[
            StreamSpec(name, f"testpattern:?size={w}x{h}&fps=10")
            for name, (w, h) in ROOM_SIZES.items()
        ],
        state_dir=tmp / "state",
        log_dir=tmp / "logs",
        ice_host_addresses=["127.0.0.1"],
        services=("ingest", "encoder", "signaling"),
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ORSTREAM_STATE_DIR", str(tmp / "state"))  # where make_token finds the key
        with Stack(config) as s:
            yield s


def _token(stack: Stack, ttl: int = 600) -> str:
    return make_token("expert", [f"{stack.config.site}/*"], ttl, "mentor")


def _room_url(stack: Stack) -> str:
    return f"{stack.edge_url}/whep/{stack.config.site}/{stack.config.room}"


async def _size_becomes(
    probe: Probe, size: tuple[int, int], timeout_s: float, stream: str | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await probe.measure(1.0, stream=stream)
        if result.frames_decoded and result.size == size:
            return
    raise AssertionError(f"no {size} frames within {timeout_s} s (last {probe.result.size})")


async def test_a_room_session_carries_each_stream_on_its_own_transceiver(stack: Stack) -> None:
    async with Probe(_room_url(stack), _token(stack), video=2) as probe:
        assert probe.streams == ["endoscope", "roomcam"]
        for stream, size in ROOM_SIZES.items():
            await _size_becomes(probe, size, 30, stream=stream)
            assert probe.result.frames_unreadable == 0, "every frame carries its timecode"


async def test_a_weak_link_moves_the_peer_to_the_smaller_rendition(stack: Stack) -> None:
    url = stack.whep_url()
    async with Probe(url, _token(stack)) as probe:
        await _size_becomes(probe, ROOM_SIZES["endoscope"], 30)
        # This viewer's receiver reports a weak link: its own estimator is silenced and it
        # sends REMB at WEAK_LINK_BPS for the stream's SSRC, as a congested browser would.
        (transceiver,) = probe.pc.getTransceivers()
        receiver = transceiver.receiver
        receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]
        media_ssrc = int(re.findall(r"a=ssrc:(\d+)", probe.pc.remoteDescription.sdp)[0])

        async def weak_link() -> None:
            for _ in range(400):  # bounded: 20 s at 20 Hz
                rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
                packet = RtcpPsfbPacket(
                    fmt=RTCP_PSFB_APP,
                    ssrc=rtcp_ssrc or 1,
                    media_ssrc=0,
                    fci=pack_remb_fci(WEAK_LINK_BPS, [media_ssrc]),
                )
                await receiver._send_rtcp(packet)
                await asyncio.sleep(0.05)

        reporter = asyncio.create_task(weak_link())
        try:
            await _size_becomes(probe, (640, 360), 30)
        finally:
            reporter.cancel()
        stats = await _edge_stats(stack)
        assert stats["counters"]["rendition_switches"] >= 1
        (session,) = stats["session_detail"]
        assert session["streams"]["endoscope"]["rendition"] == "360p"


async def test_a_peer_may_ask_for_a_rendition(stack: Stack) -> None:
    async with Probe(stack.whep_url() + "?rendition=360p", _token(stack)) as probe:
        await _size_becomes(probe, (640, 360), 30)


async def _edge_stats(stack: Stack) -> dict:  # type: ignore[type-arg]
    import httpx

    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(f"{stack.edge_url}/stats")
        r.raise_for_status()
        stats: dict = r.json()  # type: ignore[type-arg]
        return stats
