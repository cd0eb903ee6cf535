"""HTTP API of the edge: WHEP per stream and per room, the rooms a caller may watch, ICE servers.

Decisions come in this order, so nothing about a stream leaks to someone who may not see it and
no SDP answer exists before access is granted: 401 (who are you?) → 429 (too many offers from
you) → 403 (not for your role) → 404 (no such stream) → 415/413/400 (not an SDP offer we can
answer) → 201. Every authentication failure and every denial is audited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from opentelemetry import metrics

from orstream.common.audit import access_denied, user_authentication
from orstream.common.audit_trail import AuditTrail
from orstream.common.messages import StreamDescriptor, StreamState
from orstream.common.observability import AUTH_DENIALS
from orstream.common.registry import Registry
from orstream.common.subjects import StreamId, check_token
from orstream.common.telemetry import Counters
from orstream.signaling.auth import AccessDenied, Identity, TokenVerifier
from orstream.signaling.offer import OfferRejected
from orstream.signaling.ratelimit import RateLimiter
from orstream.signaling.sessions import SessionManager
from orstream.signaling.settings import SignalingSettings
from orstream.signaling.turn import ice_servers_for, link_header_values, rtc_ice_servers_json

log = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
#: An SDP offer larger than this is not a viewer's offer.
MAX_OFFER_BYTES = 64 * 1024
#: Response header naming the streams of a room session in the order of its video m-lines.
STREAMS_HEADER = "Orstream-Streams"
#: Token ids remembered to audit each token's first use (its login) once.
SEEN_TOKENS = 10_000


def _refuse(status: int, reason: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    return PlainTextResponse(reason + "\n", status_code=status, headers=headers)


@dataclass
class EdgeApi:
    """The edge's decisions, shared by its routes."""

    settings: SignalingSettings
    verifier: TokenVerifier
    sessions: SessionManager
    registry: Registry
    counters: Counters
    audit: AuditTrail | None
    limiter: RateLimiter
    #: Failed authentications per client address (bounds the audit records a flood can cause).
    failures: RateLimiter
    _seen_tokens: dict[str, None] = field(default_factory=dict)
    _denials: metrics.Counter = field(
        default_factory=lambda: metrics.get_meter("orstream").create_counter(
            AUTH_DENIALS, description="Requests refused by authentication or authorization"
        )
    )

    def client(self, request: Request) -> str:
        return request.client.host if request.client else ""

    async def identify(self, request: Request) -> Identity:
        """The caller's identity; a failure is counted, audited and raised (401).

        A token's first use at this edge is audited as the user's login; later requests with
        the same token are not, so a viewer polling the room list does not flood the trail.
        """
        client = self.client(request)
        try:
            identity = await self.verifier.verify_header(request.headers.get("authorization"))
        except AccessDenied as denied:
            self.counters.add("auth_failures")
            self._count_denial(denied.status, "", "authenticate")
            wait = self.failures.check(client)
            if wait is not None:
                # One address sending bad tokens in a flood: refused as such, and audited at
                # the limiter's rate rather than once per request.
                self.counters.add("auth_failures_throttled")
                raise AccessDenied(
                    429, f"too many failed authentications from {client}", wait
                ) from denied
            log.info("%s %s refused (%s): %s", request.method, request.url.path, client, denied)
            self._audit_authentication(client, "", ok=False, reason=denied.reason)
            raise
        first_use = identity.token_id or f"{identity.subject}@{identity.issued_at}"
        if first_use not in self._seen_tokens:
            if len(self._seen_tokens) >= SEEN_TOKENS:
                self._seen_tokens.pop(next(iter(self._seen_tokens)))
            self._seen_tokens[first_use] = None
            self._audit_authentication(
                client, identity.subject, ok=True, reason=f"role {identity.role}"
            )
        return identity

    def _count_denial(self, status: int, role: str, action: str) -> None:
        # Bounded attributes only: this edge's site (not the one the URL names), the role from
        # a verified token; the reason text is in the log and the audit trail.
        self._denials.add(
            1,
            {"status": str(status), "site": self.settings.site, "role": role, "action": action},
        )

    def deny(
        self,
        request: Request,
        identity: Identity | None,
        denied: AccessDenied,
        site: str,
        room: str,
        stream: str,
        action: str,
    ) -> PlainTextResponse:
        self.counters.add("auth_denials")
        if identity is not None:  # failed authentications were counted by identify()
            self._count_denial(denied.status, identity.role, action)
        log.info(
            "%s %s refused for %s: %s",
            request.method,
            request.url.path,
            identity.subject if identity else "?",
            denied.reason,
        )
        if self.audit is not None:
            self.audit.record(
                access_denied(
                    site=site or self.settings.site,
                    source_id=self.settings.edge_id,
                    user=identity.subject if identity else "",
                    role=identity.role if identity else "",
                    room=room,
                    stream=stream,
                    action=action,
                    status=denied.status,
                    reason=denied.reason,
                    client_address=self.client(request),
                )
            )
        headers = {"Retry-After": str(denied.retry_after)} if denied.retry_after else None
        return _refuse(denied.status, denied.reason, headers)

    def throttle(self, identity: Identity) -> None:
        """429 when one identity sends offers faster than the limit (a flood, or a bad client)."""
        wait = self.limiter.check(identity.subject)
        if wait is not None:
            self.counters.add("whep_rate_limited")
            raise AccessDenied(
                429, f"too many offers from {identity.subject!r}; retry in {wait:.1f} s", wait
            )

    def _audit_authentication(self, client: str, user: str, *, ok: bool, reason: str) -> None:
        if self.audit is None:
            return
        self.audit.record(
            user_authentication(
                site=self.settings.site,
                source_id=self.settings.edge_id,
                user=user,
                outcome_ok=ok,
                reason=reason,
                client_address=client,
            )
        )

    async def live(self, stream: StreamId) -> StreamDescriptor | None:
        descriptor = await self.registry.get(stream)
        if descriptor is None or descriptor.state == StreamState.STOPPED:
            return None
        return descriptor

    async def offer(self, request: Request) -> str | PlainTextResponse:
        """The SDP offer of a WHEP POST, or the refusal."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != SDP_TYPE:
            return _refuse(415, f"expected Content-Type: {SDP_TYPE}, got {content_type or 'none'}")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_OFFER_BYTES:
            return _refuse(413, f"offer larger than {MAX_OFFER_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_OFFER_BYTES:
            return _refuse(413, f"offer larger than {MAX_OFFER_BYTES} bytes")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return _refuse(400, "SDP offer is not UTF-8 text")

    async def answer(
        self,
        request: Request,
        identity: Identity,
        site: str,
        room: str,
        streams: list[str],
    ) -> Response:
        offer = await self.offer(request)
        if isinstance(offer, Response):
            self.counters.add("offers_rejected")
            return offer
        rendition = request.query_params.get("rendition") or None
        try:
            session, answer = await self.sessions.open(
                identity,
                site,
                room,
                streams,
                offer,
                rendition=rendition,
                client=self.client(request),
            )
        except OfferRejected as exc:
            self.counters.add("offers_rejected")
            return _refuse(400, str(exc))
        links = link_header_values(
            ice_servers_for(self.settings, identity.subject, identity.expires_at)
        )
        response = Response(
            content=answer,
            status_code=201,
            media_type=SDP_TYPE,
            headers={
                "Location": f"/whep/sessions/{session.id}",
                STREAMS_HEADER: ",".join(session.streams),
            },
        )
        for link in links:
            response.headers.append("Link", link)
        return response


def build_router(api: EdgeApi) -> APIRouter:
    router = APIRouter()

    @router.post("/whep/{site}/{room}/{stream}", status_code=201)
    async def whep_stream(site: str, room: str, stream: str, request: Request) -> Response:
        identity: Identity | None = None
        try:
            identity = await api.identify(request)
            api.throttle(identity)
            identity.require(site, room, stream)
        except AccessDenied as denied:
            return api.deny(request, identity, denied, site, room, stream, "watch")
        try:
            stream_id = StreamId(site, room, stream)
        except ValueError as exc:
            return _refuse(404, f"no such stream: {exc}")
        if await api.live(stream_id) is None:
            return _refuse(404, f"no such stream: {stream_id.key} is not live")
        return await api.answer(request, identity, site, room, [stream])

    @router.post("/whep/{site}/{room}", status_code=201)
    async def whep_room(site: str, room: str, request: Request) -> Response:
        """A room session: the streams the caller may watch (or those of ``?streams=a,b``)."""
        identity: Identity | None = None
        try:
            identity = await api.identify(request)
            api.throttle(identity)
            identity.require(site, room)
        except AccessDenied as denied:
            return api.deny(request, identity, denied, site, room, "", "watch")
        try:
            check_token(site, "site")
            check_token(room, "room")
        except ValueError as exc:
            return _refuse(404, f"no such room: {exc}")
        live = {
            d.stream: d
            for d in await api.registry.all()
            if d.site == site and d.room == room and d.state != StreamState.STOPPED
        }
        asked = [s for s in request.query_params.get("streams", "").split(",") if s]
        if asked:
            for name in asked:
                try:
                    identity.require(site, room, name)
                except AccessDenied as denied:
                    return api.deny(request, identity, denied, site, room, name, "watch")
            missing = [name for name in asked if name not in live]
            if missing:
                return _refuse(404, f"not live in {site}/{room}: {', '.join(missing)}")
            streams = asked
        else:
            streams = sorted(name for name in live if identity.may_watch(site, room, name))
        if not streams:
            return _refuse(404, f"no stream in {site}/{room} is live for role {identity.role!r}")
        if len(streams) > api.settings.max_room_streams:
            streams = streams[: api.settings.max_room_streams]
        return await api.answer(request, identity, site, room, streams)

    @router.delete("/whep/sessions/{session_id}")
    async def whep_delete(session_id: str) -> Response:
        if await api.sessions.close(session_id, reason="DELETE"):
            return Response(status_code=200)
        return _refuse(404, "no such session")

    @router.patch("/whep/sessions/{session_id}")
    async def whep_patch(session_id: str) -> Response:
        # Candidates arrive complete in the offer (aiortc gathers before answering).
        return Response(
            "trickle ICE is not supported; send a complete offer\n",
            status_code=405,
            headers={"Allow": "DELETE"},
        )

    @router.get("/api/v1/streams")
    async def list_streams(request: Request) -> Response:
        try:
            identity = await api.identify(request)
        except AccessDenied as denied:
            return _refuse(denied.status, denied.reason)
        visible = [
            _stream_entry(d)
            for d in await api.registry.all()
            if d.state != StreamState.STOPPED and identity.may_watch(d.site, d.room, d.stream)
        ]
        return JSONResponse(
            {"role": identity.role, "subject": identity.subject, "streams": visible}
        )

    @router.get("/api/v1/rooms")
    async def list_rooms(request: Request) -> Response:
        """The rooms the caller may watch, each with its live streams and the caller's rights."""
        try:
            identity = await api.identify(request)
        except AccessDenied as denied:
            return _refuse(denied.status, denied.reason)
        rooms: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for d in await api.registry.all():
            if d.state != StreamState.STOPPED and identity.may_watch(d.site, d.room, d.stream):
                rooms.setdefault((d.site, d.room), []).append(_stream_entry(d))
        grant = identity.grant
        return JSONResponse(
            {
                "role": identity.role,
                "subject": identity.subject,
                "expires_at": identity.expires_at,
                "rights": {
                    "metadata": grant.metadata,
                    "annotate": grant.annotate,
                    "chat": grant.chat,
                    "record": grant.record,
                },
                "rooms": [
                    {
                        "site": site,
                        "room": room,
                        "whep": f"/whep/{site}/{room}",
                        "streams": sorted(streams, key=lambda s: str(s["stream"])),
                    }
                    for (site, room), streams in sorted(rooms.items())
                ],
            }
        )

    @router.get("/api/v1/ice-servers")
    async def ice_servers(request: Request) -> Response:
        """STUN/TURN for the caller's browser, TURN credentials expiring with its token."""
        try:
            identity = await api.identify(request)
        except AccessDenied as denied:
            return _refuse(denied.status, denied.reason)
        servers = ice_servers_for(api.settings, identity.subject, identity.expires_at)
        return JSONResponse(
            {"iceServers": rtc_ice_servers_json(servers)}, headers={"Cache-Control": "no-store"}
        )

    return router


def _stream_entry(d: StreamDescriptor) -> dict[str, Any]:
    return {
        "site": d.site,
        "room": d.room,
        "stream": d.stream,
        "label": d.label,
        "width": d.width,
        "height": d.height,
        "fps": d.fps,
        # Modality is technical; study/series UIDs identify a patient's study and stay out of
        # a listing every role can read.
        "modality": d.modality,
        "state": d.state,
        "whep": f"/whep/{d.site}/{d.room}/{d.stream}",
    }
