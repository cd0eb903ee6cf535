"""The baseline of ``orstream bench fanout``: what aiortc does alone, one encoder per peer.

Each peer that signs in (the same WHEP exchange as the edge's, without tokens) gets its own
track of raw 720p50 frames of the test pattern, and aiortc's ``RTCRtpSender`` encodes them for
that peer alone with its own H.264 encoder (libx264 with aiortc's defaults), in a thread of the
default executor. The encoder's target bitrate is set so that it sends what the fan-out
stream does (aiortc's rate control assumes 30 fps); a live source never waits for a slow
encoder (late frames are skipped, as a camera would).

    python -m orstream.bench.fanout_baseline --port P [--bitrate-bps B]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import signal
import sys
import time
from fractions import Fraction

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs.h264 import MAX_FRAME_RATE, H264Encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from orstream.bench.replay import Picture, pictures, video_frame
from orstream.common.health import HttpServer
from orstream.encoder.codec import VIDEO_CLOCK_HZ
from orstream.signaling.ice import advertise_only

log = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS = 1280, 720, 50.0
#: Distinct pictures rendered once and shared by every peer's track (each frame is a copy).
PICTURES = 100
DEFAULT_BITRATE_BPS = 3_000_000
H264_MIMES = ("video/H264", "video/rtx")


class RawPictureTrack(MediaStreamTrack):
    """Raw frames at ``fps`` from a shared loop of pictures, paced like a live source."""

    kind = "video"

    def __init__(self, loop: list[Picture], fps: float) -> None:
        super().__init__()
        self._pictures = loop
        self._fps = fps
        self._started: float | None = None
        self._index = -1
        self.skipped = 0

    async def recv(self) -> av.VideoFrame:
        now = time.monotonic()
        if self._started is None:
            self._started = now
        self._index += 1
        due = self._started + self._index / self._fps
        if due > now:
            await asyncio.sleep(due - now)
        else:
            late = int((now - due) * self._fps)
            self._index += late
            self.skipped += late
        frame = video_frame(
            self._pictures[self._index % len(self._pictures)],
            round(self._index * VIDEO_CLOCK_HZ / self._fps),
        )
        frame.time_base = Fraction(1, VIDEO_CLOCK_HZ)
        return frame


class BaselineSender:
    def __init__(self, loop: list[Picture], fps: float, bitrate_bps: int) -> None:
        self.pictures = loop
        self.fps = fps
        self.bitrate_bps = bitrate_bps
        self.sessions: dict[str, RTCPeerConnection] = {}

    async def offer(self, request: Request) -> Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = pc.addTransceiver(RawPictureTrack(self.pictures, self.fps), "sendonly")
        transceiver.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in H264_MIMES]
        )
        encoder = H264Encoder()
        encoder.target_bitrate = round(self.bitrate_bps * MAX_FRAME_RATE / self.fps)
        transceiver.sender._RTCRtpSender__encoder = encoder  # type: ignore[attr-defined]
        offer = (await request.body()).decode()
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await pc.close()
            return PlainTextResponse(f"offer refused: {exc!r}\n", status_code=400)
        session = secrets.token_urlsafe(12)
        self.sessions[session] = pc
        return Response(
            pc.localDescription.sdp,
            status_code=201,
            media_type="application/sdp",
            headers={"Location": f"/whep/sessions/{session}"},
        )

    async def delete(self, request: Request) -> Response:
        pc = self.sessions.pop(request.path_params["session"], None)
        if pc is None:
            return PlainTextResponse("no such session\n", status_code=404)
        await pc.close()
        return Response(status_code=200)

    async def close(self) -> None:
        pcs = list(self.sessions.values())
        self.sessions.clear()
        await asyncio.gather(*(pc.close() for pc in pcs), return_exceptions=True)


async def serve(args: argparse.Namespace) -> None:
    advertise_only(["127.0.0.1"])
    sender = BaselineSender(pictures(WIDTH, HEIGHT, FPS, PICTURES), FPS, args.bitrate_bps)

    async def readyz(_: Request) -> Response:
        return PlainTextResponse("ready")

    app = Starlette(
        routes=[
            Route("/readyz", readyz),
            Route("/whep/{site}/{room}/{stream}", sender.offer, methods=["POST"]),
            Route("/whep/sessions/{session}", sender.delete, methods=["DELETE"]),
        ]
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http = HttpServer(app, args.host, args.port)
    await http.start()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.lifetime)
    finally:
        await http.stop()
        await sender.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orstream.bench.fanout_baseline")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bitrate-bps", type=int, default=DEFAULT_BITRATE_BPS)
    parser.add_argument("--lifetime", type=float, default=600.0, help="exit after this long")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
