"""A headless viewer that measures: an aiortc WHEP client that decodes every frame it receives
and reads the burned-in timecode, giving glass-to-glass latency per frame.

Like a browser, the probe hands a frame to the decoder as soon as the RTP packet carrying the
marker bit (the last packet of an access unit) is in. aiortc's own jitter buffer waits for the
first packet of the *next* frame instead, which adds a whole frame interval to every
measurement; :class:`MarkerJitterBuffer` closes that gap.

Use: ``python -m orstream.viewer.probe URL --token T --seconds 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import av
import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError

from orstream.common import timecode
from orstream.common.telemetry import percentiles

log = logging.getLogger(__name__)

WHEP_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 15.0
#: Open trace requests kept (the edge asks about sampled frames only: a few a second at most).
MAX_TRACE_REQUESTS = 64
#: A trace request may arrive after its frame was decoded: frames looked back over.
TRACE_LOOKBACK = 16


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, but a frame is complete at its marker-bit packet."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if self._origin is None:
            return None
        packets = []
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                break
            if timestamp is not None and packet.timestamp != timestamp:
                break  # a gap-free run ended without a marker: fall back to the next frame
            timestamp = packet.timestamp
            packets.append(packet)
            if packet.marker:
                frame = JitterFrame(b"".join(p._data for p in packets), timestamp)  # type: ignore[attr-defined]
                self.remove(count + 1)
                return frame
        result: JitterFrame | None = super()._remove_frame(sequence_number)
        return result


@dataclass(frozen=True, slots=True)
class FrameSample:
    seq: int
    capture_ns: int
    received_ns: int

    @property
    def latency_ms(self) -> float:
        return (self.received_ns - self.capture_ns) / 1e6


@dataclass
class ProbeResult:
    samples: list[FrameSample] = field(default_factory=list)
    frames_decoded: int = 0
    #: Width and height of the last decoded frame.
    size: tuple[int, int] = (0, 0)
    frames_unreadable: int = 0
    connected_ns: int = 0

    def summary(self) -> dict[str, float]:
        return percentiles(s.latency_ms for s in self.samples)


@dataclass(frozen=True, slots=True)
class MetadataMessage:
    """One message of the ``metadata`` DataChannel and when it arrived (wall clock)."""

    message: dict[str, Any]
    received_ns: int

    @property
    def dataset(self) -> dict[str, Any]:
        dataset: dict[str, Any] = self.message["dataset"]
        return dataset

    @property
    def latency_ms(self) -> float:
        return (self.received_ns - int(self.message["capture_ns"])) / 1e6


class WhepError(RuntimeError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"WHEP refused with {status}: {reason}")
        self.status = status
        self.reason = reason


def read_timecode(frame: av.VideoFrame) -> timecode.Timecode | None:
    plane = frame.planes[0]
    luma = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(frame.height, plane.line_size)
    return timecode.read(luma[:, : frame.width])


class Probe:
    """One WHEP session: ``async with Probe(url, token) as p: await p.measure(seconds)``.

    ``url`` is a stream's WHEP endpoint, or a room's with ``video=N`` m-lines (a room session:
    the answer's ``Orstream-Streams`` header names the stream of each). ``channels`` are opened
    as DataChannels; what arrives on them is kept raw in ``received`` (and ``metadata`` parsed).
    """

    def __init__(
        self,
        whep_url: str,
        token: str,
        metadata: bool = False,
        *,
        video: int = 1,
        channels: tuple[str, ...] = (),
    ) -> None:
        self.whep_url = whep_url
        self.token = token
        #: Open the ``metadata`` DataChannel and keep what arrives on it.
        self.wants_metadata = metadata
        self.video = video
        self.channel_labels = tuple(dict.fromkeys((("metadata",) if metadata else ()) + channels))
        self.channels: dict[str, Any] = {}
        self.received: dict[str, list[str | bytes]] = {label: [] for label in self.channel_labels}
        #: Frames the edge asked about on the ``stats`` channel (sampled traces): (stream, seq).
        self.trace_requests: set[tuple[str, int]] = set()
        #: Those this probe answered (its receipt said when it decoded them).
        self.traced_answered: list[tuple[str, int]] = []
        self.message_arrived = asyncio.Event()
        self.metadata: list[MetadataMessage] = []
        self.metadata_arrived = asyncio.Event()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.result = ProbeResult()
        self.resource: str | None = None
        #: The stream of each video m-line, in order (from the answer).
        self.streams: list[str] = []
        #: Set when the peer connection fails or is closed by the edge.
        self.ended = asyncio.Event()
        self._tracks: list[object] = []
        self._track_ready: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._http = httpx.AsyncClient(timeout=WHEP_TIMEOUT_S)
        #: When each recent frame (by seq) was decoded, for trace requests that come after it.
        self._decoded_ns: dict[int, int] = {}

    async def __aenter__(self) -> Probe:
        try:
            await self.connect()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open_channel(self, label: str) -> None:
        channel = self.pc.createDataChannel(label)
        self.channels[label] = channel

        @channel.on("message")
        def on_message(text: str | bytes) -> None:
            received_ns = time.time_ns()
            self.received[label].append(text)
            self.message_arrived.set()
            if label == "metadata":
                self.metadata.append(MetadataMessage(json.loads(text), received_ns))
                self.metadata_arrived.set()
            elif label == "stats":
                self._on_stats(text)

    def _on_stats(self, text: str | bytes) -> None:
        """The edge asks about a sampled frame: answer once it is decoded (see ``measure``)."""
        try:
            message = json.loads(text)
            if message.get("type") == "trace":
                request = (str(message["stream"]), int(message["seq"]))
            else:
                return
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if len(self.trace_requests) < MAX_TRACE_REQUESTS:
            self.trace_requests.add(request)

    def _answer_trace(self, stream: str, seq: int, decoded_ns: int) -> None:
        channel = self.channels.get("stats")
        if channel is None or channel.readyState != "open":
            return
        self.trace_requests.discard((stream, seq))
        traced = {"stream": stream, "seq": seq, "presented_ms": decoded_ns / 1e6}
        channel.send(json.dumps({"type": "receipt", "frames": 0, "traced": [traced]}))
        self.traced_answered.append((stream, seq))

    async def connect(self) -> None:
        for _ in range(self.video):
            transceiver = self.pc.addTransceiver("video", direction="recvonly")
            transceiver.receiver._RTCRtpReceiver__jitter_buffer = MarkerJitterBuffer(  # type: ignore[attr-defined]
                capacity=512, is_video=True
            )
        for label in self.channel_labels:
            self._open_channel(label)

        @self.pc.on("track")
        def on_track(track: object) -> None:
            self._tracks.append(track)
            if not self._track_ready.done():
                self._track_ready.set_result(track)

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                self.ended.set()

        await self.pc.setLocalDescription(await self.pc.createOffer())
        response = await self._http.post(
            self.whep_url,
            content=self.pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"},
        )
        if response.status_code != 201:
            raise WhepError(response.status_code, response.text.strip())
        self.resource = urljoin(self.whep_url, response.headers["location"])
        self.streams = [s for s in response.headers.get("orstream-streams", "").split(",") if s]
        await self.pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))

    def track(self, stream: str) -> object:
        """The received track of ``stream`` in a room session."""
        return self._tracks[self.streams.index(stream)]

    async def measure(
        self, seconds: float, max_frames: int | None = None, stream: str | None = None
    ) -> ProbeResult:
        """Receive for ``seconds`` (or ``max_frames``), recording each frame's timecode.

        In a room session, ``stream`` picks which of its tracks (a fresh result each call).
        """
        track = await asyncio.wait_for(self._track_ready, CONNECT_TIMEOUT_S)
        if stream is not None:
            track = self.track(stream)
            self.result = ProbeResult()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                frame = await asyncio.wait_for(track.recv(), max(0.01, deadline - time.monotonic()))  # type: ignore[attr-defined]
            except TimeoutError:
                break
            except MediaStreamError:
                break
            received_ns = time.time_ns()
            if not self.result.connected_ns:
                self.result.connected_ns = received_ns
            self.result.frames_decoded += 1
            self.result.size = (frame.width, frame.height)
            tc = read_timecode(frame)
            if tc is None:
                self.result.frames_unreadable += 1
                continue
            self.result.samples.append(FrameSample(tc.seq, tc.capture_ns, received_ns))
            if self.trace_requests:
                name = stream or (self.streams[0] if self.streams else "")
                # Requests for frames long past (never decoded here) are forgotten.
                stale = {r for r in self.trace_requests if r[1] < tc.seq - TRACE_LOOKBACK}
                self.trace_requests -= stale
                # The edge's request may come just after the frame: look back a little.
                for seq in range(tc.seq - TRACE_LOOKBACK, tc.seq + 1):
                    if (name, seq) in self.trace_requests:
                        self._answer_trace(name, seq, self._decoded_ns.get(seq, received_ns))
            self._decoded_ns[tc.seq] = received_ns
            if len(self._decoded_ns) > TRACE_LOOKBACK * 2:
                self._decoded_ns.pop(next(iter(self._decoded_ns)))
            if max_frames is not None and self.result.frames_decoded >= max_frames:
                break
        return self.result

    async def close(self) -> None:
        if self.resource is not None:
            with contextlib.suppress(httpx.HTTPError):
                await self._http.delete(
                    self.resource, headers={"Authorization": f"Bearer {self.token}"}
                )
            self.resource = None
        await self.pc.close()
        await self._http.aclose()


async def _main(args: argparse.Namespace) -> int:
    async with Probe(args.url, args.token) as probe:
        result = await probe.measure(args.seconds)
    print(
        json.dumps(
            {
                "glass_to_glass_ms": result.summary(),
                "frames_decoded": result.frames_decoded,
                "frames_unreadable": result.frames_unreadable,
            }
        )
    )
    return 0 if result.samples else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m orstream.viewer.probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "url", help="WHEP endpoint, e.g. http://127.0.0.1:8081/whep/site1/or1/endoscope"
    )
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
