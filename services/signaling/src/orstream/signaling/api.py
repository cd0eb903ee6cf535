"""HTTP API of the edge: WHEP (``POST`` offer → ``201`` answer + ``Location``; ``DELETE``),
and the list of streams a caller may watch.

Decisions come in this order, so nothing about a stream leaks to someone who may not see it and
no SDP answer exists before access is granted: 401 (who are you?) → 403 (not your room) →
404 (no such stream) → 415/400 (not an SDP offer we can answer) → 201.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from orstream.common.messages import StreamState
from orstream.common.registry import Registry
from orstream.common.subjects import StreamId
from orstream.common.telemetry import Counters
from orstream.signaling.auth import AccessDenied, TokenVerifier
from orstream.signaling.offer import OfferRejected
from orstream.signaling.sessions import SessionManager

log = logging.getLogger(__name__)

SDP_TYPE = "application/sdp"
#: An SDP offer larger than this is not a viewer's offer.
MAX_OFFER_BYTES = 64 * 1024


def _refuse(status: int, reason: str) -> PlainTextResponse:
    return PlainTextResponse(reason + "\n", status_code=status)


def build_router(
    verifier: TokenVerifier, sessions: SessionManager, registry: Registry, counters: Counters
) -> APIRouter:
    router = APIRouter()

    @router.post("/whep/{site}/{room}/{stream}", status_code=201)
    async def whep_offer(site: str, room: str, stream: str, request: Request) -> Response:
        try:
            identity = await verifier.verify_header(request.headers.get("authorization"))
            identity.require(site, room, stream)
        except AccessDenied as denied:
            counters.add("auth_denials")
            log.info("WHEP %s/%s/%s refused: %s", site, room, stream, denied.reason)
            return _refuse(denied.status, denied.reason)
        try:
            stream_id = StreamId(site, room, stream)
        except ValueError as exc:
            return _refuse(404, f"no such stream: {exc}")
        descriptor = await registry.get(stream_id)
        if descriptor is None or descriptor.state == StreamState.STOPPED:
            return _refuse(404, f"no such stream: {stream_id.key} is not live")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != SDP_TYPE:
            return _refuse(415, f"expected Content-Type: {SDP_TYPE}, got {content_type or 'none'}")
        body = await request.body()
        if len(body) > MAX_OFFER_BYTES:
            return _refuse(413, f"offer larger than {MAX_OFFER_BYTES} bytes")
        try:
            offer = body.decode("utf-8")
        except UnicodeDecodeError:
            return _refuse(400, "SDP offer is not UTF-8 text")
        try:
            session, answer = await sessions.open(identity, stream_id, offer)
        except OfferRejected as exc:
            counters.add("offers_rejected")
            return _refuse(400, str(exc))
        location = f"/whep/sessions/{session.id}"
        return Response(
            content=answer,
            status_code=201,
            media_type=SDP_TYPE,
            headers={"Location": location},
        )

    @router.delete("/whep/sessions/{session_id}")
    async def whep_delete(session_id: str) -> Response:
        if await sessions.close(session_id, reason="DELETE"):
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
            identity = await verifier.verify_header(request.headers.get("authorization"))
        except AccessDenied as denied:
            return _refuse(denied.status, denied.reason)
        visible: list[dict[str, Any]] = []
        for d in await registry.all():
            if d.state != StreamState.STOPPED and identity.may_watch(d.site, d.room, d.stream):
                visible.append(
                    {
                        "site": d.site,
                        "room": d.room,
                        "stream": d.stream,
                        "label": d.label,
                        "width": d.width,
                        "height": d.height,
                        "fps": d.fps,
                        # Modality is technical; study/series UIDs identify a patient's study
                        # and stay out of a listing every role can read.
                        "modality": d.modality,
                        "state": d.state,
                        "whep": f"/whep/{d.site}/{d.room}/{d.stream}",
                    }
                )
        return JSONResponse(
            {"role": identity.role, "subject": identity.subject, "streams": visible}
        )

    return router
