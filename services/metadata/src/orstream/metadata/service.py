"""The metadata service: context in (``meta.in``, the worklist, REST), one view per role out.

Every dataset is read and rendered for every role off the event loop, in one worker thread so
a room's datasets stay in order. Each role's view goes to ``or.<site>.<room>.meta.role.<role>``
as DICOM JSON; a role whose view fails gets nothing for that dataset (counted and logged), and
no role's subject ever carries another role's view.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from pydicom.dataset import Dataset
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from orstream.common.bus import Bus
from orstream.common.health import HttpServer, health_routes
from orstream.common.messages import (
    DICOM_JSON,
    DICOM_PART10,
    TRACEPARENT,
    ContextMeta,
    MessageError,
    RoleMeta,
)
from orstream.common.observability import DEID_ERRORS, HOP_METADATA
from orstream.common.policy import Policy
from orstream.common.runner import ServiceContext
from orstream.common.subjects import all_meta_in, check_token, meta_in_room, meta_role
from orstream.common.telemetry import Counters, HopLatency
from orstream.metadata.intake import MAX_CONTEXT_BYTES, ContextError, read_json, read_part10
from orstream.metadata.pseudonyms import Pseudonyms
from orstream.metadata.settings import MetadataSettings
from orstream.metadata.views import Rendered, ViewSet
from orstream.metadata.worklist import WorklistPoller

log = logging.getLogger(__name__)

#: Log the first failure of a kind, then one in this many (the counters keep the full count).
LOG_EVERY = 100
SPAN_DEIDENTIFY = "metadata.deidentify"
CONTEXT_ROUTE = "/api/v1/rooms/{site}/{room}/context"
tracer = trace.get_tracer("orstream.metadata")


@dataclass(frozen=True, slots=True)
class Arrival:
    """One context dataset to render: where it is for, where it came from, how to read it."""

    site: str
    room: str
    source: str
    stream: str
    capture_ns: int
    read: Callable[[], Dataset]
    #: The trace the dataset came with (ingest's ``traceparent`` on ``meta.in``), if any.
    parent: Context | None = None


class MetadataService:
    name = "metadata"
    uses_bus = True
    uses_health_port = False  # /livez /readyz /stats share the REST intake's port

    def __init__(self, settings: MetadataSettings) -> None:
        self.settings = settings
        self.counters = Counters("orstream.metadata")
        self.latency = HopLatency(HOP_METADATA, {"site": settings.site})
        self._deid_errors = metrics.get_meter("orstream").create_counter(
            DEID_ERRORS, description="Datasets or role views the de-identification could not make"
        )
        self.views: ViewSet | None = None
        self.http: HttpServer | None = None
        self.worklist: WorklistPoller | None = None
        self._bus: Bus | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="deid")
        self._backlog = 0
        self._failures: Tally[str] = Tally()

    async def start(self, ctx: ServiceContext) -> None:
        bus = ctx.require_bus()
        self._bus = bus
        policy = Policy.load(self.settings.policy_file)
        self.views = ViewSet(policy, Pseudonyms(self.settings.deid_key_bytes()))
        ctx.stack.callback(self._executor.shutdown, wait=True, cancel_futures=True)
        await bus.subscribe(all_meta_in(self.settings.site), self._on_meta_in)
        app = Starlette(
            routes=[
                *health_routes(self.ready, self.stats),
                Route(CONTEXT_ROUTE, self._post_context, methods=["POST"]),
            ]
        )
        self.http = HttpServer(app, self.settings.health_host, self.settings.health_port)
        await self.http.start()
        ctx.stack.push_async_callback(self.http.stop)
        if self.settings.worklist is not None:
            self.worklist = WorklistPoller(self.settings.worklist, self._on_worklist, self.counters)
            self.worklist.start()
            ctx.stack.push_async_callback(self.worklist.stop)
        log.info(
            "metadata on http://%s:%d; roles %s",
            self.settings.health_host,
            self.http.port,
            ", ".join(f"{r}={v}" for r, v in self.views.role_view.items()),
        )

    # -- intake -----------------------------------------------------------------------------

    async def _on_meta_in(self, msg: Msg) -> None:
        self.counters.add("datasets_in")
        try:
            site, room = meta_in_room(msg.subject)
            meta = ContextMeta.from_headers(msg.headers)
        except (ValueError, MessageError) as exc:
            self._fail("context_rejected", f"{msg.subject}: {exc}")
            self._count_deid_error("", "rejected")
            return
        data = msg.data
        source = "rtv" if meta.flow else "file"
        parent = propagate.extract(msg.headers) if TRACEPARENT in (msg.headers or {}) else None
        await self.handle(
            Arrival(
                site, room, source, meta.stream, meta.capture_ns, lambda: read_part10(data), parent
            )
        )

    async def _on_worklist(self, room: str, item: Dataset) -> None:
        self.counters.add("datasets_in")
        await self.handle(
            Arrival(self.settings.site, room, "worklist", "", time.time_ns(), lambda: item)
        )

    async def _post_context(self, request: Request) -> Response:
        """The REST intake; a request is always traced (a server span), and the dataset's
        de-identification is its child."""
        with tracer.start_as_current_span(
            "POST /api/v1/rooms/{site}/{room}/context",
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": CONTEXT_ROUTE},
        ) as span:
            response = await self._accept_context(request)
            span.set_attribute("http.response.status_code", response.status_code)
            return response

    async def _accept_context(self, request: Request) -> Response:
        expected = self.settings.context_api_key
        if expected is None:
            return _refuse(503, "REST context intake is off (set ORSTREAM_CONTEXT_API_KEY)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.get_secret_value().encode()
        ):
            self.counters.add("rest_denied")
            return _refuse(401, "missing or wrong Authorization: Bearer <context API key>")
        site, room = request.path_params["site"], request.path_params["room"]
        try:
            check_token(room, "room")
            check_token(site, "site")
        except ValueError as exc:
            return _refuse(404, str(exc))
        if site != self.settings.site:
            return _refuse(404, f"this metadata service serves site {self.settings.site!r}")
        stream = request.query_params.get("stream", "")
        if stream:
            try:
                check_token(stream, "stream")
            except ValueError as exc:
                return _refuse(400, str(exc))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_CONTEXT_BYTES:
            return _refuse(413, f"context larger than {MAX_CONTEXT_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_CONTEXT_BYTES:
            return _refuse(413, f"context larger than {MAX_CONTEXT_BYTES} bytes")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == DICOM_PART10:
            read: Callable[[], Dataset] = lambda: read_part10(body)  # noqa: E731
        elif kind in (DICOM_JSON, "application/json"):
            read = lambda: read_json(body)  # noqa: E731
        else:
            return _refuse(415, f"send {DICOM_PART10} or {DICOM_JSON}, not {kind or 'nothing'}")
        self.counters.add("datasets_in")
        try:
            published = await self.handle(
                Arrival(site, room, "rest", stream, time.time_ns(), read), raise_errors=True
            )
        except ContextError as exc:
            return _refuse(400, str(exc))
        except OverflowError as exc:
            return _refuse(503, str(exc))
        return JSONResponse({"room": room, "roles": published}, status_code=202)

    # -- rendering and publishing -----------------------------------------------------------

    async def handle(self, arrival: Arrival, raise_errors: bool = False) -> dict[str, str]:
        """Render ``arrival`` for every role and publish; returns each role's outcome."""
        with tracer.start_as_current_span(
            SPAN_DEIDENTIFY,
            context=arrival.parent,
            attributes={
                "orstream.site": arrival.site,
                "orstream.room": arrival.room,
                "orstream.source": arrival.source,
            },
        ) as span:
            outcome = await self._handle(arrival, raise_errors)
            for role, result in outcome.items():
                span.set_attribute(f"orstream.role.{role}", result)
            return outcome

    async def _handle(self, arrival: Arrival, raise_errors: bool) -> dict[str, str]:
        assert self.views is not None
        assert self._bus is not None
        if self._backlog >= self.settings.max_backlog:
            self._fail("datasets_dropped_backlog", f"backlog of {self._backlog} datasets")
            if raise_errors:
                raise OverflowError("de-identification backlog full; try again")
            return {}
        self._backlog += 1
        views = self.views
        try:
            loop = asyncio.get_running_loop()
            rendered = await loop.run_in_executor(self._executor, _render, views, arrival.read)
        except ContextError as exc:
            self._fail("datasets_unreadable", f"{arrival.site}/{arrival.room}: {exc}")
            self._count_deid_error(arrival.room, "unreadable")
            if raise_errors:
                raise
            return {}
        finally:
            self._backlog -= 1
        outcome: dict[str, str] = {}
        published_ns = time.time_ns()
        for item in rendered:
            outcome[item.role] = await self._publish(arrival, item, published_ns)
        self.latency.record((time.time_ns() - arrival.capture_ns) / 1e6, arrival.capture_ns)
        return outcome

    async def _publish(self, arrival: Arrival, item: Rendered, published_ns: int) -> str:
        assert self._bus is not None
        if item.payload is None:
            self._fail("deid_errors", f"role {item.role!r} gets nothing: {item.error}")
            self.counters.add(f"withheld_{item.role}")
            self._count_deid_error(arrival.room, "withheld", item.role)
            return "withheld"
        meta = RoleMeta(
            arrival.source,
            arrival.stream,
            arrival.capture_ns,
            published_ns,
            item.view,
            item.patient,
        )
        subject = meta_role(arrival.site, arrival.room, item.role)
        await self._bus.publish(subject, item.payload, meta.to_headers())
        self.counters.add(f"published_{item.role}")
        return "published"

    def _count_deid_error(self, room: str, reason: str, role: str = "") -> None:
        self._deid_errors.add(
            1, {"site": self.settings.site, "room": room, "reason": reason, "role": role}
        )

    def _fail(self, counter: str, reason: str) -> None:
        self.counters.add(counter)
        self._failures[counter] += 1
        n = self._failures[counter]
        if n == 1 or n % LOG_EVERY == 0:
            log.warning("%s (%s #%d)", reason, counter, n)

    # -- health -----------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.views is not None and self._bus is not None and self._bus.connected

    def stats(self, since_ns: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "counters": self.counters.snapshot(),
            "backlog": self._backlog,
            "latency": self.latency.summary(since_ns),
        }
        if self.views is not None:
            out["roles"] = dict(self.views.role_view) | dict.fromkeys(self.views.broken, None)
        if self.worklist is not None:
            out["worklist"] = self.worklist.status()
        return out


def _render(views: ViewSet, read: Callable[[], Dataset]) -> list[Rendered]:
    return views.render(read())


def _refuse(status: int, reason: str) -> PlainTextResponse:
    return PlainTextResponse(reason + "\n", status_code=status)
