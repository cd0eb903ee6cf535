"""The edge's WHEP API against a real NATS: refusals in order, with reasons; 201 + Location; DELETE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver

from orstream.cli.main import make_token
from orstream.cli.stack import free_port
from orstream.common.bus import Bus
from orstream.common.messages import StreamDescriptor, StreamState
from orstream.common.registry import Registry
from orstream.common.runner import ServiceContext
from orstream.signaling.service import SignalingService
from orstream.signaling.settings import SignalingSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def edge(
    nats_url: str, state_dir: Path
) -> AsyncIterator[tuple[str, SignalingSettings, SignalingService]]:
    settings = SignalingSettings(
        nats_url=nats_url,
        site="apisite",
        http_port=free_port(),
        state_dir=state_dir,
        ice_host_addresses=["127.0.0.1"],
    )
    bus = await Bus.connect(nats_url, "test-edge")
    registry = await Registry.open(bus)
    await registry.announce(
        StreamDescriptor(
            site="apisite",
            room="or1",
            stream="cam",
            source="testpattern:",
            width=640,
            height=360,
            fps=25.0,
            pix_fmt="yuv420p",
            ring="orstream-apisite-or1-cam",
            state=StreamState.LIVE,
        )
    )
    service = SignalingService(settings)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(bus.close)
        await service.start(ServiceContext(settings=settings, bus=bus, stack=stack))
        yield f"http://127.0.0.1:{settings.http_port}", settings, service


def _token(role: str = "expert", rooms: tuple[str, ...] = ("apisite/*",)) -> str:
    return make_token(role, list(rooms))


async def _offer(mime: str | None = None) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("video", direction="recvonly")
    if mime:
        caps = RTCRtpReceiver.getCapabilities("video").codecs
        transceiver.setCodecPreferences([c for c in caps if c.mimeType == mime])
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_refusals_come_in_order_with_reasons(edge) -> None:
    url, settings, service = edge
    pc, sdp = await _offer()
    good = {"Authorization": f"Bearer {_token()}", "Content-Type": "application/sdp"}
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post(
            "/whep/apisite/or1/cam", content=sdp, headers={"Content-Type": "application/sdp"}
        )
        assert (r.status_code, "missing Authorization" in r.text) == (401, True)
        other_room = {**good, "Authorization": f"Bearer {_token(rooms=('apisite/or9',))}"}
        r = await http.post("/whep/apisite/or1/cam", content=sdp, headers=other_room)
        assert r.status_code == 403 and "may not watch apisite/or1" in r.text
        r = await http.post("/whep/apisite/or1/nope", content=sdp, headers=good)
        assert r.status_code == 404 and "apisite.or1.nope" in r.text
        r = await http.post(
            "/whep/apisite/or1/cam", content=sdp, headers={**good, "Content-Type": "text/plain"}
        )
        assert r.status_code == 415
        r = await http.post("/whep/apisite/or1/cam", content="v=0\r\nthis is not sdp", headers=good)
        assert r.status_code == 400 and "has 0" in r.text, r.text
        r = await http.post("/whep/apisite/or1/cam", content="hello", headers=good)
        assert r.status_code == 400 and "not an SDP offer" in r.text, r.text
        mangled = sdp.replace("a=fingerprint:", "a=fingerprint-broken:")
        r = await http.post("/whep/apisite/or1/cam", content=mangled, headers=good)
        assert r.status_code == 400 and "fingerprint" in r.text, r.text
        two_videos = sdp + sdp[sdp.index("m=video") :]
        r = await http.post("/whep/apisite/or1/cam", content=two_videos, headers=good)
        assert r.status_code == 400 and "exactly one video m-line, has 2" in r.text, r.text
        vp8_pc, vp8_only = await _offer(mime="video/VP8")
        await vp8_pc.close()
        assert "H264" not in vp8_only
        r = await http.post("/whep/apisite/or1/cam", content=vp8_only, headers=good)
        assert r.status_code == 400 and "H.264" in r.text, r.text
    assert service.sessions is not None and not service.sessions.sessions, (
        "no session for a refusal"
    )
    assert service.counters.snapshot()["auth_denials"] == 2
    await pc.close()


async def test_offer_is_answered_and_delete_ends_the_session(edge) -> None:
    url, settings, service = edge
    pc, sdp = await _offer()
    headers = {"Authorization": f"Bearer {_token()}", "Content-Type": "application/sdp"}
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/whep/apisite/or1/cam", content=sdp, headers=headers)
        assert r.status_code == 201, r.text
        assert r.headers["content-type"].startswith("application/sdp")
        answer = r.text
        assert "a=sendonly" in answer and "H264/90000" in answer and "VP8" not in answer
        assert "127.0.0.1" in answer  # pinned ICE host address
        location = r.headers["location"]
        assert location.startswith("/whep/sessions/")
        assert service.sessions is not None and len(service.sessions.sessions) == 1
        listing = await http.get(
            "/api/v1/streams", headers={"Authorization": headers["Authorization"]}
        )
        assert [s["stream"] for s in listing.json()["streams"]] == ["cam"]
        r = await http.patch(location, content="a=candidate", headers=headers)
        assert r.status_code == 405
        r = await http.delete(location)
        assert r.status_code == 200
        assert not service.sessions.sessions
        r = await http.delete(location)
        assert r.status_code == 404
    await pc.close()


async def test_cors_lets_the_viewer_read_location(edge) -> None:
    url, settings, _ = edge
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.options(
            "/whep/apisite/or1/cam",
            headers={
                "Origin": "http://127.0.0.1:8080",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert r.status_code == 200
        assert "POST" in r.headers["access-control-allow-methods"]
        r = await http.get("/livez")
        assert r.text == "ok"
        r = await http.get("/readyz")
        assert r.status_code == 200
