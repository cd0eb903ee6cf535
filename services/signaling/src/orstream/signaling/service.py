"""The signaling/edge service: FastAPI over uvicorn in the same event loop as aiortc."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.metrics import NoOpMeterProvider

from orstream.common.audit_trail import AuditTrail
from orstream.common.health import HttpServer, health_routes
from orstream.common.policy import Policy
from orstream.common.registry import Registry
from orstream.common.runner import ServiceContext
from orstream.common.syslog import SyslogForwarder
from orstream.common.telemetry import Counters
from orstream.signaling.api import STREAMS_HEADER, EdgeApi, build_router
from orstream.signaling.auth import TokenVerifier
from orstream.signaling.ice import advertise_only
from orstream.signaling.jwks import key_source
from orstream.signaling.ratelimit import RateLimiter
from orstream.signaling.revocation import Revocations
from orstream.signaling.sessions import SessionManager
from orstream.signaling.settings import SignalingSettings

log = logging.getLogger(__name__)

#: Failed authentications one client address may cause before it gets 429 (and is audited at
#: this rate, not per request): enough for people mistyping, not for a flood.
FAILED_AUTH_RATE_PER_S = 1.0
FAILED_AUTH_BURST = 20
#: Probes, scrapes and ``/stats`` polls get no span (a regex list, as the instrumentation takes).
UNTRACED_PATHS = "/livez,/readyz,/metrics,/stats"


class SignalingService:
    name = "signaling"
    uses_bus = True
    uses_health_port = False  # /livez /readyz /stats live on the API port

    def __init__(self, settings: SignalingSettings) -> None:
        self.settings = settings
        self.counters = Counters("orstream.edge")
        self.sessions: SessionManager | None = None
        self.http: HttpServer | None = None
        self.audit: AuditTrail | None = None
        #: ``auth.revoke``; the session manager listens to end sessions at once.
        self.revocations: Revocations | None = None

    async def start(self, ctx: ServiceContext) -> None:
        bus = ctx.require_bus()
        advertise_only(self.settings.ice_host_addresses)
        self.revocations = Revocations(self.counters)
        await self.revocations.start(bus)
        ctx.stack.push_async_callback(self.revocations.stop)
        keys = key_source(self.settings, self.counters)
        ctx.stack.push_async_callback(keys.aclose)
        await keys.refresh()  # now, so the first viewer does not wait; a failure is retried
        verifier = TokenVerifier(
            keys,
            self.settings.jwt_issuer,
            self.settings.jwt_audience,
            self.settings.jwt_algorithms,
            Policy.load(self.settings.policy_file),
            revocations=self.revocations,
            role_claim=self.settings.role_claim,
            rooms_claim=self.settings.rooms_claim,
            leeway_s=self.settings.jwt_leeway_s,
        )
        registry = await Registry.open(bus)
        syslog = (
            SyslogForwarder(self.settings.audit_syslog, app_name="orstream-edge")
            if self.settings.audit_syslog
            else None
        )
        self.audit = AuditTrail(
            bus,
            self.settings.site,
            self.settings.edge_id,
            replicas=self.settings.audit_replicas,
            syslog=syslog,
            counters=self.counters,
        )
        await self.audit.start()
        ctx.stack.push_async_callback(self.audit.stop)  # last: the final session stops too
        self.sessions = SessionManager(self.settings, bus, self.counters, self.audit)
        self.revocations.add_listener(self.sessions.revoke)
        self.sessions.start()
        api = EdgeApi(
            self.settings,
            verifier,
            self.sessions,
            registry,
            self.counters,
            self.audit,
            RateLimiter(self.settings.whep_rate_per_s, self.settings.whep_burst),
            RateLimiter(FAILED_AUTH_RATE_PER_S, FAILED_AUTH_BURST),
        )
        app = FastAPI(title="orstream edge", docs_url=None, redoc_url=None)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=self.settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "PATCH", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Location", "Link", STREAMS_HEADER, "Retry-After"],
        )
        app.include_router(build_router(api))
        app.router.routes.extend(health_routes(self.ready, self.stats))
        # A span per API request (WHEP offers, room lists), not per probe or scrape.
        # Its metrics are left out: they carry the client's Host header (unbounded series).
        FastAPIInstrumentor.instrument_app(
            app, excluded_urls=UNTRACED_PATHS, meter_provider=NoOpMeterProvider()
        )
        self.http = HttpServer(app, self.settings.http_host, self.settings.http_port)
        await self.http.start()
        ctx.stack.push_async_callback(self.sessions.close_all)
        ctx.stack.push_async_callback(self.http.stop)  # first: no new sessions while closing
        log.info("edge on http://%s:%d", self.settings.http_host, self.http.port)

    def ready(self) -> bool:
        return self.http is not None and self.sessions is not None and self.sessions.bus.connected

    def stats(self, since_ns: int, frames: bool = False) -> dict[str, Any]:
        """Sessions, per stream rendition peers and hops (with ``frames``: each AU's capture
        and last-packet-sent times, for per-frame joins by ``orstream bench latency``)."""
        streams: dict[str, Any] = {}
        if self.sessions is not None:
            for (stream, rendition), latency in self.sessions.latency.items():
                fanout = self.sessions.fanouts.get((stream, rendition))
                peers = len(fanout.tracks) if fanout is not None else 0
                entry = streams.setdefault(str(stream), {"peers": 0, "renditions": {}})
                entry["peers"] += peers
                detail: dict[str, Any] = {"peers": peers, "hops": latency.hops(since_ns)}
                if frames:
                    detail["frames"] = latency.delivered_at(since_ns)
                entry["renditions"][rendition] = detail
        return {
            "sessions": len(self.sessions.sessions) if self.sessions else 0,
            "session_detail": [
                {**s.snapshot(), "receipt": s.receipt()} for s in self.sessions.sessions.values()
            ]
            if self.sessions
            else [],
            "streams": streams,
            "counters": self.counters.snapshot(),
            "audit": self.audit.stats() if self.audit is not None else {},
        }
