"""WHEP sessions: one aiortc peer connection per viewer, one transceiver per stream it watches.

A session watches one stream (WHEP per stream) or several streams of one room (the OR layout:
one peer connection, one transceiver per stream, in the order of the offer's video m-lines).
Each transceiver is fed by its stream's fan-out at the rendition chosen for this peer.

A session ends on DELETE, when ICE/DTLS fails or the peer closes, when it never connects within
the connect timeout, when its token expires, and at once when its token or subject is revoked;
any of these detaches its tracks and channels, and the last track of a fan-out ends the
fan-out's subscription. Start and end are audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, OperationError
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from orstream.common.audit import access_denied, session_started, session_stopped
from orstream.common.audit_trail import AuditTrail
from orstream.common.bus import Bus
from orstream.common.observability import EDGE_PEERS
from orstream.common.subjects import SOURCE_RENDITION, StreamId
from orstream.common.telemetry import Counters
from orstream.signaling.annotations import ANNOTATIONS_CHANNEL, AnnotationSender, RoomAnnotations
from orstream.signaling.auth import Identity
from orstream.signaling.fanout import StreamFanout, StreamLatency
from orstream.signaling.ice import configuration
from orstream.signaling.interest import InterestReporter
from orstream.signaling.metadata import METADATA_CHANNEL, RoleMetadata
from orstream.signaling.offer import OfferRejected, validate_offer
from orstream.signaling.remb import record_remb
from orstream.signaling.rendition import Ladders, RenditionChooser
from orstream.signaling.settings import SignalingSettings
from orstream.signaling.stats import STATS_CHANNEL, SessionStats, TracedFrame
from orstream.signaling.tracing import ReceiptTraces
from orstream.signaling.track import AccessUnit, AccessUnitTrack
from orstream.signaling.turn import edge_ice_servers

log = logging.getLogger(__name__)

H264_MIME = "video/H264"
#: How often each session's receiver reports are read for its rendition choice.
RENDITION_CHECK_S = 1.0

FanoutKey = tuple[StreamId, str]
RoomRole = tuple[str, str, str]


@dataclass(eq=False)
class StreamFeed:
    """One stream of a session: its transceiver's track, the fan-out feeding it, its rendition."""

    stream: StreamId
    track: AccessUnitTrack
    fanout: StreamFanout
    sender: RTCRtpSender
    chooser: RenditionChooser
    bytes_sent: int = 0
    sampled_at: float = 0.0
    estimate_bps: int = 0
    sent_bps: float = 0.0
    fraction_lost: float = 0.0
    rtt_ms: float | None = None
    switches: int = 0

    @property
    def rendition(self) -> str:
        return self.fanout.rendition


@dataclass(eq=False)
class PeerSession:
    id: str
    identity: Identity
    site: str
    room: str
    pc: RTCPeerConnection
    client: str
    feeds: list[StreamFeed] = field(default_factory=list)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    #: Open DataChannels (to close with the session) and what each is attached to.
    channels: dict[Any, str] = field(default_factory=dict)
    stats: list[SessionStats] = field(default_factory=list)
    started_ns: int = field(default_factory=time.time_ns)
    #: The room's patient by pseudonym, as last known (empty until the metadata names one).
    patient: str = ""
    #: Room feeds this session holds a share of (``metadata``, ``annotations``).
    joined: set[str] = field(default_factory=set)
    #: Sampled frames sent to this peer, awaiting its receipt (``viewer.receipt`` spans).
    traces: ReceiptTraces | None = None

    @property
    def streams(self) -> list[str]:
        return [f.stream.stream for f in self.feeds]

    @property
    def role_key(self) -> RoomRole:
        return (self.site, self.room, self.identity.role)

    def receipt(self) -> dict[str, Any] | None:
        """The viewer's newest receipt (what it measured: frames, decode, glass to glass)."""
        reports = [s.last_report for s in self.stats if s.last_report is not None]
        return max(reports, key=lambda r: r.received_ns).as_dict() if reports else None

    def snapshot(self) -> dict[str, Any]:
        """What the ``stats`` channel and ``/stats`` report for this session."""
        return {
            "session": self.id[:8],
            "role": self.identity.role,
            "room": f"{self.site}/{self.room}",
            "connection": self.pc.connectionState,
            "streams": {
                f.stream.stream: {
                    "rendition": f.rendition,
                    "queue": f.track.queued,
                    "remb_bps": f.estimate_bps,
                    "sent_bps": round(f.sent_bps),
                    "fraction_lost": round(f.fraction_lost, 4),
                    "rtt_ms": f.rtt_ms,
                    "rendition_switches": f.switches,
                }
                for f in self.feeds
            },
            "expires_at": self.identity.expires_at,
        }


def _h264_preferences() -> list[RTCRtpCodecCapability]:
    return [
        c
        for c in RTCRtpSender.getCapabilities("video").codecs
        if c.mimeType in (H264_MIME, "video/rtx")
    ]


class SessionManager:
    """Owns every peer session and every stream fan-out of this edge."""

    def __init__(
        self,
        settings: SignalingSettings,
        bus: Bus,
        counters: Counters,
        audit: AuditTrail | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.counters = counters
        self.audit = audit
        self.sessions: dict[str, PeerSession] = {}
        self.fanouts: dict[FanoutKey, StreamFanout] = {}
        self.latency: dict[FanoutKey, StreamLatency] = {}
        metrics.get_meter("orstream").create_observable_gauge(
            EDGE_PEERS, [self._observe_peers], description="Peers watching, per stream rendition"
        )
        self.ladders = Ladders(bus)
        self._closing: set[asyncio.Task[Any]] = set()
        self.role_metadata: dict[RoomRole, RoleMetadata] = {}
        self._metadata_users: dict[RoomRole, int] = {}
        self.annotations: dict[tuple[str, str], RoomAnnotations] = {}
        self._annotation_users: dict[tuple[str, str], int] = {}
        self.interest = InterestReporter(
            bus,
            settings.edge_id,
            lambda: list(self.fanouts.values()),
            settings.interest_interval_s,
            counters,
        )
        self._rendition_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.interest.start()
        self._rendition_task = asyncio.get_running_loop().create_task(self._renditions())

    # -- opening ----------------------------------------------------------------------------

    async def open(
        self,
        identity: Identity,
        site: str,
        room: str,
        streams: list[str],
        offer_sdp: str,
        *,
        rendition: str | None = None,
        client: str = "",
    ) -> tuple[PeerSession, str]:
        """Answer a WHEP offer for ``streams`` of one room: returns the session and its answer.

        The offer's video m-lines are bound to ``streams`` in order; an offer with fewer m-lines
        watches the first ones. Access has been decided before this is called.
        """
        description = validate_offer(offer_sdp, max_video=len(streams))
        wanted = sum(1 for m in description.media if m.kind == "video")
        pc = RTCPeerConnection(configuration(edge_ice_servers(self.settings, identity.expires_at)))
        session = PeerSession(secrets.token_urlsafe(18), identity, site, room, pc, client)
        session.traces = ReceiptTraces(session.id[:8], identity.role)
        try:
            for name in streams[:wanted]:
                stream = StreamId(site, room, name)
                ladder = await self.ladders.get(stream)
                pinned = rendition is not None and rendition in ladder
                chooser = RenditionChooser(ladder, rendition or SOURCE_RENDITION, pinned=pinned)
                fanout = await self._fanout(stream, chooser.current)
                track = fanout.attach(self.settings.peer_queue_aus)
                # The transceiver exists before the offer is applied, so the offer's video m-line
                # binds to it and only H.264 (what the encoder sends) can be negotiated.
                transceiver = pc.addTransceiver(track, direction="sendonly")
                feed = StreamFeed(stream, track, fanout, transceiver.sender, chooser)
                track.on_traced = functools.partial(self._traced_sent, session, feed)
                session.feeds.append(feed)
                self._hook_sender(transceiver, track)
            await self._join_room(session)
            self._accept_datachannels(session)
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except InvalidAccessError as exc:
                raise OfferRejected(f"SDP offer not acceptable: {exc}") from exc
            except OperationError as exc:
                raise OfferRejected(f"offer has no H.264 codec this edge can send ({exc})") from exc
            except Exception as exc:  # aiortc raises ValueError, KeyError, IndexError… on bad SDP
                raise OfferRejected(f"malformed SDP offer: {exc!r}") from exc
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video" and (
                    transceiver.direction != "sendonly"
                    or transceiver.currentDirection not in (None, "sendonly")
                ):
                    raise OfferRejected("the offer's video m-lines must be recvonly (a viewer)")
            answer = await pc.createAnswer()
            if answer is None or "H264" not in answer.sdp or "a=sendonly" not in answer.sdp:
                raise OfferRejected(
                    "cannot answer: the offer's video m-lines must be recvonly with H.264"
                )
            await pc.setLocalDescription(answer)
        except BaseException:
            self._release(session)
            await pc.close()
            raise
        self.sessions[session.id] = session
        self._watch(session)
        context = self.role_metadata.get(session.role_key)
        session.patient = context.patient if context is not None else ""
        self.counters.add("sessions_opened")
        self._audit_session(session)
        log.info(
            "session %s: %s (%s) watching %s/%s %s",
            session.id[:8],
            identity.subject,
            identity.role,
            site,
            room,
            ",".join(session.streams),
        )
        return session, pc.localDescription.sdp

    def _hook_sender(self, transceiver: RTCRtpTransceiver, track: AccessUnitTrack) -> None:
        transceiver.setCodecPreferences(_h264_preferences())
        # aiortc alone would turn a PLI/FIR into a flag for its own encoder, which pre-encoded
        # AUs never reach; the fan-out turns it into one coalesced request to our encoder.
        transceiver.sender._send_keyframe = track.keyframe_needed  # type: ignore[method-assign]
        record_remb(transceiver.sender, track)

    async def _join_room(self, session: PeerSession) -> None:
        """Subscribe the session's room feeds: its role's metadata and the room's annotations.

        The metadata feed runs for every session (not only those with a ``metadata`` channel):
        it names the room's patient, by pseudonym, in the session's audit records.
        """
        key = session.role_key
        feed = self.role_metadata.get(key)
        if feed is None:
            feed = RoleMetadata(self.bus, *key, self.counters)
            self.role_metadata[key] = feed
            self._metadata_users[key] = 0
            await feed.start()
        self._metadata_users[key] += 1
        session.joined.add("metadata")
        room = (session.site, session.room)
        annotations = self.annotations.get(room)
        if annotations is None:
            annotations = RoomAnnotations(
                self.bus,
                session.site,
                session.room,
                self.settings.edge_id,
                self.counters,
                on_refused=self._annotation_refused(session.site, session.room),
            )
            self.annotations[room] = annotations
            self._annotation_users[room] = 0
            await annotations.start()
        self._annotation_users[room] += 1
        session.joined.add("annotations")

    def _leave_room(self, session: PeerSession) -> None:
        key = session.role_key
        if "metadata" in session.joined:
            self._metadata_users[key] -= 1
            if self._metadata_users[key] <= 0:
                del self._metadata_users[key]
                self._spawn(self.role_metadata.pop(key).stop())
        room = (session.site, session.room)
        if "annotations" in session.joined:
            self._annotation_users[room] -= 1
            if self._annotation_users[room] <= 0:
                del self._annotation_users[room]
                self._spawn(self.annotations.pop(room).stop())
        session.joined.clear()

    # -- DataChannels -----------------------------------------------------------------------

    def _accept_datachannels(self, session: PeerSession) -> None:
        """Channels the viewer opens: ``metadata``, ``annotations``, ``stats``; no others."""

        @session.pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if session.id not in self.sessions:
                channel.close()
                return
            label = channel.label
            if label == METADATA_CHANNEL:
                self._attach_metadata(session, channel)
            elif label == ANNOTATIONS_CHANNEL:
                self._attach_annotations(session, channel)
            elif label == STATS_CHANNEL:
                self._attach_stats(session, channel)
            else:
                self.counters.add("datachannels_refused")
                log.info("session %s: no channel %r here", session.id[:8], label)
                channel.close()
                return
            session.channels[channel] = label

            def on_close() -> None:
                self._detach_channel(session, channel)

            channel.on("close", on_close)

    def _attach_metadata(self, session: PeerSession, channel: Any) -> None:
        feed = self.role_metadata.get(session.role_key)
        if feed is not None:
            feed.attach(channel)

    def _attach_annotations(self, session: PeerSession, channel: Any) -> None:
        room = self.annotations.get((session.site, session.room))
        if room is None:
            return
        identity = session.identity
        sender = AnnotationSender.of(session.id, identity.subject, identity.role, identity.grant)
        room.attach(channel, sender)

        def on_message(data: Any) -> None:
            room.on_message(channel, sender, data)

        channel.on("message", on_message)

    def _observe_peers(self, _: CallbackOptions) -> Iterable[Observation]:
        for (stream, rendition), fanout in list(self.fanouts.items()):
            attributes = {
                "site": stream.site,
                "room": stream.room,
                "stream": stream.stream,
                "rendition": rendition,
            }
            yield Observation(len(fanout.tracks), attributes)

    def _traced_sent(
        self, session: PeerSession, feed: StreamFeed, unit: AccessUnit, sent_ns: int
    ) -> None:
        """A sampled frame went to this peer: ask it (``stats`` channel) when it shows it."""
        if unit.trace is None or session.traces is None or not session.stats:
            return
        session.traces.sent(
            feed.stream.stream,
            unit.meta.seq,
            unit.trace,
            sent_ns,
            unit.meta.capture_ns,
            feed.fanout.latency.viewer,
        )
        session.stats[0].request_trace(feed.stream.stream, unit.meta.seq)

    def _attach_stats(self, session: PeerSession, channel: Any) -> None:
        traces = session.traces

        def on_traced(frame: TracedFrame) -> bool:
            presented_ns = int(frame.presented_ms * 1e6)
            return traces is not None and traces.received(frame.stream, frame.seq, presented_ns)

        stats = SessionStats(
            channel,
            session.snapshot,
            self.settings.stats_interval_s,
            self.counters,
            on_traced,
        )
        session.stats.append(stats)
        stats.start()

    def _detach_channel(self, session: PeerSession, channel: Any) -> None:
        label = session.channels.pop(channel, None)
        if label == METADATA_CHANNEL:
            feed = self.role_metadata.get(session.role_key)
            if feed is not None:
                feed.detach(channel)
        elif label == ANNOTATIONS_CHANNEL:
            room = self.annotations.get((session.site, session.room))
            if room is not None:
                room.detach(channel)
        elif label == STATS_CHANNEL:
            for stats in [s for s in session.stats if s.channel is channel]:
                session.stats.remove(stats)
                self._spawn(stats.stop())

    # -- ending -----------------------------------------------------------------------------

    def _watch(self, session: PeerSession) -> None:
        loop = asyncio.get_running_loop()

        @session.pc.on("connectionstatechange")
        async def on_state() -> None:
            state = session.pc.connectionState
            if state in ("failed", "closed"):
                self.counters.add(f"peer_connections_{state}")
                await self.close(session.id, reason=f"connection {state}")

        def expire(reason: str) -> None:
            self._spawn(self.close(session.id, reason))

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
        context = self.role_metadata.get(session.role_key)
        session.patient = (context.patient if context is not None else "") or session.patient
        self._release(session)
        with contextlib.suppress(Exception):
            await session.pc.close()
        self.counters.add("sessions_closed")
        self._audit_session(session, stopped=reason)
        log.info("session %s closed: %s", session.id[:8], reason)
        return True

    async def revoke(self, subject: str | None, token_id: str | None, reason: str) -> int:
        """End every session of ``subject`` or of token ``token_id`` now; returns how many."""
        doomed = [
            s.id
            for s in self.sessions.values()
            if (subject is not None and s.identity.subject == subject)
            or (token_id is not None and token_id and s.identity.token_id == token_id)
        ]
        why = f"revoked: {reason}" if reason else "revoked"
        await asyncio.gather(*(self.close(sid, why) for sid in doomed))
        if doomed:
            self.counters.add("sessions_revoked", len(doomed))
        return len(doomed)

    def _release(self, session: PeerSession) -> None:
        """Detach everything a (possibly half-opened) session holds."""
        for channel in list(session.channels):
            self._detach_channel(session, channel)
            with contextlib.suppress(Exception):
                channel.close()
        for feed in session.feeds:
            self._detach(feed.fanout, feed.track)
        self._leave_room(session)

    async def close_all(self) -> None:
        await asyncio.gather(*(self.close(sid, "edge stopping") for sid in list(self.sessions)))
        if self._rendition_task is not None:
            self._rendition_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rendition_task
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.gather(*(f.stop() for f in self.fanouts.values()))
        await asyncio.gather(*(f.stop() for f in self.role_metadata.values()))
        await asyncio.gather(*(a.stop() for a in self.annotations.values()))
        self.role_metadata.clear()
        self.annotations.clear()
        self.fanouts.clear()
        await self.interest.stop()

    # -- fan-outs and renditions ------------------------------------------------------------

    async def _fanout(self, stream: StreamId, rendition: str) -> StreamFanout:
        fanout = self.fanouts.get((stream, rendition))
        if fanout is None:
            latency = self.latency.get((stream, rendition))
            if latency is None:
                latency = self.latency[(stream, rendition)] = StreamLatency(stream, rendition)
            fanout = StreamFanout(
                stream,
                self.bus,
                self.counters,
                self.settings.keyframe_request_interval_s,
                latency,
                rendition,
            )
            self.fanouts[(stream, rendition)] = fanout
            await fanout.start()
            self.interest.changed(stream)
        return fanout

    def _detach(self, fanout: StreamFanout, track: AccessUnitTrack, stop: bool = True) -> None:
        fanout.detach(track, stop=stop)
        key = (fanout.stream, fanout.rendition)
        if not fanout.tracks and self.fanouts.get(key) is fanout:
            del self.fanouts[key]
            self.interest.changed(fanout.stream)
            self._spawn(fanout.stop())

    async def switch(self, session: PeerSession, feed: StreamFeed, rendition: str) -> None:
        """Move one of a session's streams to another rendition, starting at its next IDR."""
        if rendition == feed.rendition:
            return
        target = await self._fanout(feed.stream, rendition)
        if session.id not in self.sessions:
            return
        old = feed.fanout
        feed.fanout = target
        target.adopt(feed.track)
        self._detach(old, feed.track, stop=False)
        feed.switches += 1
        self.counters.add("rendition_switches")
        log.info(
            "session %s: %s now on %s (REMB %d bit/s, sent %.0f bit/s, loss %.1f%%)",
            session.id[:8],
            feed.stream,
            rendition,
            feed.estimate_bps,
            feed.sent_bps,
            feed.fraction_lost * 100,
        )

    async def _renditions(self) -> None:
        """Read every feed's receiver reports each second and move it when its link says so."""
        while True:
            await asyncio.sleep(RENDITION_CHECK_S)
            for session in list(self.sessions.values()):
                for feed in list(session.feeds):
                    try:
                        target = await self._sample(feed)
                        if target is not None:
                            await self.switch(session, feed, target)
                    except Exception as exc:  # one peer's stats never stop the others
                        self.counters.add("rendition_errors")
                        log.warning("session %s: rendition check: %s", session.id[:8], exc)

    async def _sample(self, feed: StreamFeed) -> str | None:
        now = time.monotonic()
        report = await feed.sender.getStats()
        sent = 0
        for stats in report.values():
            kind = getattr(stats, "type", "")
            if kind == "outbound-rtp":
                sent = int(getattr(stats, "bytesSent", 0) or 0)
            elif kind == "remote-inbound-rtp":
                feed.fraction_lost = float(getattr(stats, "fractionLost", 0) or 0) / 256
                rtt = getattr(stats, "roundTripTime", None)
                feed.rtt_ms = round(rtt * 1000, 1) if rtt is not None else None
        if feed.sampled_at:
            elapsed = now - feed.sampled_at
            if elapsed > 0:
                feed.sent_bps = max(0, sent - feed.bytes_sent) * 8 / elapsed
        feed.bytes_sent, feed.sampled_at = sent, now
        feed.estimate_bps = feed.track.remb_bps
        return feed.chooser.observe(
            now,
            estimate_bps=feed.estimate_bps,
            sent_bps=feed.sent_bps,
            fraction_lost=feed.fraction_lost,
        )

    # -- audit ------------------------------------------------------------------------------

    def _annotation_refused(self, site: str, room: str) -> Callable[[AnnotationSender, str], None]:
        def refused(sender: AnnotationSender, reason: str) -> None:
            log.info(
                "annotation from %s (%s) in %s/%s refused", sender.subject, sender.role, site, room
            )
            if self.audit is None:
                return
            self.audit.record(
                access_denied(
                    site=site,
                    source_id=self.settings.edge_id,
                    user=sender.subject,
                    role=sender.role,
                    room=room,
                    stream="",
                    action="annotate",
                    status=403,
                    reason=reason,
                    client_address=self._client_of(sender.session_id),
                )
            )

        return refused

    def _client_of(self, session_id: str) -> str:
        session = self.sessions.get(session_id)
        return session.client if session is not None else ""

    def _audit_session(self, session: PeerSession, stopped: str | None = None) -> None:
        """Audit a session's start, or its stop with the reason ``stopped``."""
        if self.audit is None:
            return
        fields: dict[str, Any] = {
            "site": session.site,
            "source_id": self.settings.edge_id,
            "user": session.identity.subject,
            "role": session.identity.role,
            "room": session.room,
            "streams": session.streams,
            "session_id": session.id,
            "patient_pseudonym": session.patient or None,
            "client_address": session.client,
        }
        if stopped is None:
            self.audit.record(session_started(**fields))
        else:
            self.audit.record(session_stopped(**fields, reason=stopped))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
