"""WHEP sessions: one aiortc peer connection per viewer, fed by its stream's fan-out.

A session ends on DELETE, when ICE/DTLS fails or the peer closes, when it never connects within
the connect timeout, and when its token expires; any of these detaches its track, and the last
track of a stream ends the stream's subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpCodecCapability, RTCRtpSender, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, OperationError

from orstream.common.bus import Bus
from orstream.common.subjects import StreamId
from orstream.common.telemetry import Counters
from orstream.signaling.auth import Identity
from orstream.signaling.fanout import StreamFanout, StreamLatency
from orstream.signaling.ice import configuration
from orstream.signaling.interest import InterestReporter
from orstream.signaling.metadata import METADATA_CHANNEL, RoleMetadata
from orstream.signaling.offer import OfferRejected, validate_offer
from orstream.signaling.remb import record_remb
from orstream.signaling.settings import SignalingSettings
from orstream.signaling.track import AccessUnitTrack

log = logging.getLogger(__name__)

H264_MIME = "video/H264"


@dataclass(eq=False)
class PeerSession:
    id: str
    identity: Identity
    stream: StreamId
    pc: RTCPeerConnection
    track: AccessUnitTrack
    fanout: StreamFanout
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    #: DataChannels attached to their room's role metadata, to detach when the session ends.
    metadata_channels: list[Any] = field(default_factory=list)


def _h264_preferences() -> list[RTCRtpCodecCapability]:
    return [
        c
        for c in RTCRtpSender.getCapabilities("video").codecs
        if c.mimeType in (H264_MIME, "video/rtx")
    ]


class SessionManager:
    """Owns every peer session and every stream fan-out of this edge."""

    def __init__(self, settings: SignalingSettings, bus: Bus, counters: Counters) -> None:
        self.settings = settings
        self.bus = bus
        self.counters = counters
        self.sessions: dict[str, PeerSession] = {}
        self.fanouts: dict[StreamId, StreamFanout] = {}
        self.latency: dict[StreamId, StreamLatency] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        self.role_metadata: dict[tuple[str, str, str], RoleMetadata] = {}
        self.interest = InterestReporter(
            bus,
            settings.edge_id,
            lambda: list(self.fanouts.values()),
            settings.interest_interval_s,
            counters,
        )

    async def open(
        self, identity: Identity, stream: StreamId, offer_sdp: str
    ) -> tuple[PeerSession, str]:
        """Answer a WHEP offer: returns the session and the SDP answer."""
        validate_offer(offer_sdp)
        pc = RTCPeerConnection(configuration(self.settings.ice_servers))
        fanout = await self._fanout(stream)
        track = fanout.attach(self.settings.peer_queue_aus)
        if len(fanout.tracks) == 1:
            self.interest.changed(stream)
        session = PeerSession(secrets.token_urlsafe(18), identity, stream, pc, track, fanout)
        try:
            # The transceiver exists before the offer is applied, so the offer's video m-line
            # binds to it and only H.264 (what the encoder sends) can be negotiated.
            transceiver = pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(_h264_preferences())
            # aiortc alone would turn a PLI/FIR into a flag for its own encoder, which pre-encoded
            # AUs never reach; the fan-out turns it into one coalesced request to our encoder.
            transceiver.sender._send_keyframe = track.keyframe_needed  # type: ignore[method-assign]
            record_remb(transceiver.sender, track)
            self._accept_datachannels(session)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except InvalidAccessError as exc:
                raise OfferRejected(f"SDP offer not acceptable: {exc}") from exc
            except OperationError as exc:
                raise OfferRejected(f"offer has no H.264 codec this edge can send ({exc})") from exc
            except Exception as exc:  # aiortc raises ValueError, KeyError, IndexError… on bad SDP
                raise OfferRejected(f"malformed SDP offer: {exc!r}") from exc
            if transceiver.direction != "sendonly" or transceiver.currentDirection not in (
                None,
                "sendonly",
            ):
                raise OfferRejected("the offer's video m-line must be recvonly (a viewer)")
            answer = await pc.createAnswer()
            if answer is None or "H264" not in answer.sdp or "a=sendonly" not in answer.sdp:
                raise OfferRejected(
                    "cannot answer: the offer's video m-line must be recvonly with H.264"
                )
            await pc.setLocalDescription(answer)
        except BaseException:
            self._detach(fanout, track)
            await pc.close()
            raise
        self.sessions[session.id] = session
        self._watch(session)
        self.counters.add("sessions_opened")
        log.info(
            "session %s: %s (%s) watching %s",
            session.id[:8],
            identity.subject,
            identity.role,
            stream,
        )
        return session, pc.localDescription.sdp

    def _accept_datachannels(self, session: PeerSession) -> None:
        """Channels the viewer opens; ``metadata`` carries its role's view of the room."""

        @session.pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label != METADATA_CHANNEL:
                self.counters.add("datachannels_refused")
                log.info("session %s: no channel %r here", session.id[:8], channel.label)
                channel.close()
                return
            task = asyncio.get_running_loop().create_task(self._attach_metadata(session, channel))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _attach_metadata(self, session: PeerSession, channel: Any) -> None:
        key = (session.stream.site, session.stream.room, session.identity.role)
        feed = self.role_metadata.get(key)
        if feed is None:
            feed = RoleMetadata(self.bus, *key, self.counters)
            self.role_metadata[key] = feed
            await feed.start()
        if session.id not in self.sessions:
            self._release_metadata(key, channel)  # the session ended while subscribing
            return
        session.metadata_channels.append(channel)
        feed.attach(channel)

        def on_close() -> None:
            if channel in session.metadata_channels:
                session.metadata_channels.remove(channel)
                self._release_metadata(key, channel)

        channel.on("close", on_close)

    def _release_metadata(self, key: tuple[str, str, str], channel: Any) -> None:
        feed = self.role_metadata.get(key)
        if feed is None:
            return
        feed.detach(channel)
        if not feed.channels:
            del self.role_metadata[key]
            task = asyncio.get_running_loop().create_task(feed.stop())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _watch(self, session: PeerSession) -> None:
        loop = asyncio.get_running_loop()

        @session.pc.on("connectionstatechange")
        async def on_state() -> None:
            state = session.pc.connectionState
            if state in ("failed", "closed"):
                self.counters.add(f"peer_connections_{state}")
                await self.close(session.id, reason=f"connection {state}")

        def expire(reason: str) -> None:
            task = loop.create_task(self.close(session.id, reason))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

        def check_connected() -> None:
            if session.pc.connectionState != "connected":
                expire("never connected")

        session.timers.append(loop.call_later(self.settings.connect_timeout_s, check_connected))
        until_exp = session.identity.expires_at - time.time()
        session.timers.append(loop.call_later(max(0.0, until_exp), expire, "token expired"))

    async def close(self, session_id: str, reason: str = "closed") -> bool:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        for timer in session.timers:
            timer.cancel()
        self._detach(session.fanout, session.track)
        key = (session.stream.site, session.stream.room, session.identity.role)
        for channel in session.metadata_channels:
            self._release_metadata(key, channel)
        session.metadata_channels.clear()
        with contextlib.suppress(Exception):
            await session.pc.close()
        self.counters.add("sessions_closed")
        log.info("session %s closed: %s", session.id[:8], reason)
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(sid, "edge stopping") for sid in list(self.sessions)))
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.gather(*(f.stop() for f in self.fanouts.values()))
        await asyncio.gather(*(f.stop() for f in self.role_metadata.values()))
        self.role_metadata.clear()
        self.fanouts.clear()
        await self.interest.stop()

    async def _fanout(self, stream: StreamId) -> StreamFanout:
        fanout = self.fanouts.get(stream)
        if fanout is None:
            latency = self.latency.setdefault(stream, StreamLatency(stream))
            fanout = StreamFanout(
                stream, self.bus, self.counters, self.settings.keyframe_request_interval_s, latency
            )
            self.fanouts[stream] = fanout
            await fanout.start()
        return fanout

    def _detach(self, fanout: StreamFanout, track: AccessUnitTrack) -> None:
        fanout.detach(track)
        if not fanout.tracks and self.fanouts.get(fanout.stream) is fanout:
            del self.fanouts[fanout.stream]
            self.interest.changed(fanout.stream)
            task = asyncio.get_running_loop().create_task(fanout.stop())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
