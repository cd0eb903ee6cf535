"""Modality Worklist (DICOM Basic Worklist Management, C-FIND) as a source of the OR's context.

Many OR video sources send no DICOM context at all, yet the hospital's RIS knows what is scheduled
in each room. Polling the worklist SCP per room gives the metadata service the same patient and
procedure facts an imaging modality would take from it, so viewers know who is on the table even
when the endoscope is anonymous.

The query is blocking pynetdicom code run in a thread; every phase of it has a timeout and the
whole of it a deadline, because a RIS that hangs must never stall the service or leave threads
and associations behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import VR
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ
from pynetdicom.status import (
    MODALITY_WORKLIST_SERVICE_CLASS_STATUS,
    STATUS_PENDING,
    STATUS_SUCCESS,
    STATUS_WARNING,
    code_to_category,
)
from pynetdicom.transport import AddressInformation, AssociationSocket

from orstream.common.runner import cancel_and_wait
from orstream.common.subjects import check_token
from orstream.common.telemetry import Counters

log = logging.getLogger(__name__)

#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.1).
MODALITY_WORKLIST_FIND = UID("1.2.840.10008.5.1.4.31")

#: A whole query (connect, associate, find, release) ends within this many ``timeout_s``.
DEADLINE_TIMEOUTS = 3
#: Allowance beyond the deadline for pynetdicom's threads to wind down after an abort.
TEARDOWN_S = 1.0
#: An unchanged context is sent again after this many polls, so a late joiner heals.
RESEND_EVERY = 10

#: Top-level return keys of the query, copied as they are into the context.
PATIENT_STUDY_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
)
#: Return keys of the Scheduled Procedure Step item, flattened to top level in the context.
STEP_KEYS = (
    "Modality",
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepLocation",
)

# AE titles: up to 16 characters of the default repertoire, no backslash (PS3.5 6.2).
_AE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{0,16}$"


class RoomWorklist(BaseModel):
    """Which worklist items belong to one room: its station AE title and/or its location."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Scheduled Station AE Title (0040,0001) the RIS schedules this room's procedures on.
    station_ae: str = Field(default="", pattern=_AE_PATTERN)
    #: Scheduled Procedure Step Location (0040,0011), an SH value.
    location: str = Field(default="", max_length=16, pattern=r"^[^\\\x00-\x1f]*$")

    @field_validator("station_ae", "location")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()  # DICOM pads with spaces; they never tell values apart

    @model_validator(mode="after")
    def _one_key(self) -> RoomWorklist:
        if not (self.station_ae or self.location):
            raise ValueError("a room needs station_ae or location (or both) to match its items")
        return self


class WorklistSettings(BaseModel):
    """Where the worklist SCP is and how its rooms are matched (a JSON field of the settings)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    called_ae: str = Field(default="WORKLIST", pattern=_AE_PATTERN)
    calling_ae: str = Field(default="ORSTREAM", pattern=_AE_PATTERN)
    interval_s: float = Field(default=30.0, gt=0)
    #: Each network phase (connect, association, one response, release) waits at most this long.
    timeout_s: float = Field(default=5.0, gt=0)
    rooms: dict[str, RoomWorklist] = Field(min_length=1)

    @field_validator("called_ae", "calling_ae")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("an AE title must not be blank")
        return value.strip()

    @field_validator("rooms")
    @classmethod
    def _room_tokens(cls, rooms: dict[str, RoomWorklist]) -> dict[str, RoomWorklist]:
        for room in rooms:
            check_token(room, "room")
        return rooms

    @property
    def address(self) -> str:
        """``host:port`` as people write it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def bound_s(self) -> float:
        """The longest :func:`find_scheduled` blocks, whatever the SCP does."""
        return DEADLINE_TIMEOUTS * self.timeout_s + TEARDOWN_S


class _QueryAE(AE):
    """An AE that keeps hold of its sockets, to cut them at the deadline and close them after.

    pynetdicom 3.0.4 can block on a socket past every timeout it has (a peer that sends a bogus
    PDU length and keeps the connection open pins its reader), and it only closes a socket whose
    ``shutdown()`` succeeded, which is not the case after a refused or dropped connection (fixed
    upstream in pynetdicom#999, unreleased). Shutting the socket down wakes every wait; closing
    it keeps a poller that runs for months from leaking a descriptor per failed attempt.
    """

    def __init__(self, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        self.sockets: list[socket.socket] = []
        self.cut = threading.Event()

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> AssociationSocket:
        wrapper = super()._create_socket(assoc, address, tls_args)
        if wrapper.socket is not None:
            self.sockets.append(wrapper.socket)
        return wrapper

    def shutdown_sockets(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):  # not connected, or closed already
                sock.shutdown(socket.SHUT_RDWR)

    def cut_at_deadline(self) -> None:
        self.cut.set()
        self.shutdown_sockets()


class WorklistError(Exception):
    """A worklist query failed; ``reason`` says why in words an IT person can act on."""

    def __init__(self, address: str, reason: str, *, connected: bool = True) -> None:
        super().__init__(f"worklist SCP {address}: {reason}")
        self.address = address
        self.reason = reason
        #: False when not even a TCP connection was made (the SCP is down or unreachable).
        self.connected = connected


class _Wire:
    """What pynetdicom saw of the peer, so a failure gets a reason rather than a bare flag."""

    def __init__(self) -> None:
        self.connected = False
        self.accepted = False
        self.fsm_events: set[str] = set()
        self.reject: A_ASSOCIATE_RJ | None = None
        self.abort: A_ABORT_RQ | None = None

    def handlers(self) -> list[evt.EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_FSM_TRANSITION, self._on_transition),
            (evt.EVT_PDU_RECV, self._on_pdu),
        ]

    def _on_open(self, event: evt.Event) -> None:
        self.connected = True

    def _on_transition(self, event: evt.Event) -> None:
        self.fsm_events.add(str(getattr(event, "fsm_event", "")))

    def _on_pdu(self, event: evt.Event) -> None:
        pdu = getattr(event, "pdu", None)
        if isinstance(pdu, A_ASSOCIATE_AC):
            self.accepted = True
        elif isinstance(pdu, A_ASSOCIATE_RJ):
            self.reject = pdu
        elif isinstance(pdu, A_ABORT_RQ):
            self.abort = pdu

    def lost(self, waited_for: str, timeout_s: float) -> str:
        """Why the peer stopped answering, from PS3.8 state machine events.

        Evt19 is an invalid PDU, Evt16 an A-ABORT from the peer, Evt15 our own abort when a
        timeout expired (the connection closes after it, so it is checked before Evt17, the
        connection closed by the peer).
        """
        if "Evt19" in self.fsm_events:
            return "answered with data that is not DICOM (invalid PDU)"
        if self.abort is not None:
            return f"aborted the association ({_describe(self.abort)})"
        if "Evt17" in self.fsm_events and "Evt15" not in self.fsm_events:
            return f"closed the connection; no {waited_for}"
        return f"no {waited_for} within {timeout_s:g} s"

    def refusal(self, timeout_s: float, elapsed_s: float) -> str:
        """Why no association was established."""
        if not self.connected:
            if elapsed_s >= 0.9 * timeout_s:
                return f"no TCP connection within {timeout_s:g} s"
            return "connection refused or host unreachable"
        if self.reject is not None:
            return f"association rejected ({_describe(self.reject)})"
        if self.accepted:
            return "accepted the association but not Modality Worklist FIND"
        return self.lost("answer to the association request", timeout_s)


def _describe(pdu: A_ASSOCIATE_RJ | A_ABORT_RQ) -> str:
    try:
        if isinstance(pdu, A_ASSOCIATE_RJ):
            return f"{pdu.result_str}, {pdu.source_str}: {pdu.reason_str}"
        return f"{pdu.source_str}: {pdu.reason_str}"
    except (KeyError, ValueError):  # values outside PS3.8's tables
        return "reason not given in a known form"


def worklist_query(room: RoomWorklist, day: datetime.date) -> Dataset:
    """The C-FIND identifier: the room's step on ``day``, asking for every key the context uses."""
    query = Dataset()
    for keyword in PATIENT_STUDY_KEYS:
        setattr(query, keyword, "")
    step = Dataset()
    for keyword in STEP_KEYS:
        setattr(step, keyword, "")
    step.ScheduledStationAETitle = room.station_ae
    step.ScheduledProcedureStepLocation = room.location
    step.ScheduledProcedureStepStartDate = day.strftime("%Y%m%d")
    query.ScheduledProcedureStepSequence = [step]
    return query


def find_scheduled(
    settings: WorklistSettings, room: RoomWorklist, day: datetime.date
) -> list[Dataset]:
    """The worklist items scheduled for ``room`` on ``day`` (blocking, within ``bound_s``).

    Raises :class:`WorklistError` on any failure, with the association aborted and pynetdicom's
    threads and sockets gone, so a caller never has anything to clean up.
    """
    ae = _QueryAE(settings.calling_ae)
    try:
        return _find(settings, ae, room, day)
    except Exception as exc:  # pynetdicom and pydicom raise many kinds; the caller needs one
        if ae.cut.is_set():
            connected = not isinstance(exc, WorklistError) or exc.connected
            raise WorklistError(settings.address, _overdue(settings), connected=connected) from exc
        if isinstance(exc, WorklistError):
            raise
        raise WorklistError(settings.address, f"query failed: {exc!r}") from exc


def _overdue(settings: WorklistSettings) -> str:
    return f"no complete answer within {DEADLINE_TIMEOUTS * settings.timeout_s:g} s"


def _find(
    settings: WorklistSettings, ae: _QueryAE, room: RoomWorklist, day: datetime.date
) -> list[Dataset]:
    timeout = settings.timeout_s
    started = time.monotonic()
    deadline = started + DEADLINE_TIMEOUTS * timeout
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    watchdog = threading.Timer(deadline - started, ae.cut_at_deadline)
    watchdog.name, watchdog.daemon = "worklist-deadline", True
    watchdog.start()
    wire = _Wire()
    assoc: Association | None = None
    try:
        assoc = ae.associate(
            settings.host, settings.port, ae_title=settings.called_ae, evt_handlers=wire.handlers()
        )
        if not assoc.is_established:
            reason = wire.refusal(timeout, time.monotonic() - started)
            raise WorklistError(settings.address, reason, connected=wire.connected)
        responses = assoc.send_c_find(worklist_query(room, day), MODALITY_WORKLIST_FIND)
        items = _collect(settings, assoc, responses, wire, deadline)
        assoc.release()
    finally:
        _close(ae, assoc, deadline + TEARDOWN_S)
        watchdog.cancel()
        watchdog.join()
    return [item for item in items if _belongs(item, room, day)]


def _collect(
    settings: WorklistSettings,
    assoc: Association,
    responses: Iterator[tuple[Dataset, Dataset | None]],
    wire: _Wire,
    deadline: float,
) -> list[Dataset]:
    """The pending responses' identifiers, each fully decoded, until the final status."""
    items: list[Dataset] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WorklistError(settings.address, _overdue(settings))
        # pynetdicom reads the DIMSE timeout per response: the last wait ends at the deadline.
        assoc.dimse_timeout = min(settings.timeout_s, remaining)
        status, identifier = next(responses, (Dataset(), None))
        if "Status" not in status:
            reason = wire.lost("C-FIND response", settings.timeout_s)
            raise WorklistError(settings.address, reason)
        code = int(status.Status)
        category = code_to_category(code)
        if category == STATUS_PENDING:
            items.append(_decoded(settings, identifier))
        elif category in (STATUS_SUCCESS, STATUS_WARNING):
            return items
        else:
            meaning = MODALITY_WORKLIST_SERVICE_CLASS_STATUS.get(code, (category, ""))[1]
            comment = f": {status.ErrorComment}" if "ErrorComment" in status else ""
            reason = f"C-FIND failed with status 0x{code:04X} ({meaning or category}){comment}"
            raise WorklistError(settings.address, reason)


def _decoded(settings: WorklistSettings, identifier: Dataset | None) -> Dataset:
    """``identifier`` with every value decoded now, so a bad one fails here, not downstream."""
    if identifier is None:  # pynetdicom could not parse it
        raise WorklistError(settings.address, "sent a match that does not decode")
    try:
        _walk(identifier)
    except Exception as exc:
        raise WorklistError(settings.address, f"sent a match that does not decode: {exc}") from exc
    return identifier


def _walk(ds: Dataset) -> None:
    for elem in ds:  # iterating converts each raw element: VR, value, character set
        if elem.VR == VR.SQ:
            for item in elem.value:
                _walk(item)


def _close(ae: _QueryAE, assoc: Association | None, until: float) -> None:
    """Abort what is still open, end pynetdicom's threads (bounded), close the sockets."""
    if assoc is not None and assoc.is_established:
        assoc.abort()  # waits for the peer to close at most until the deadline cuts the socket
    ae.shutdown_sockets()  # a reader still blocked on a bogus PDU wakes up and ends
    if assoc is not None:
        for thread in (assoc, assoc.dul):
            if thread.is_alive():
                thread.join(max(0.0, until - time.monotonic()))
    for sock in ae.sockets:
        sock.close()


def _values(ds: Dataset, keyword: str) -> list[str]:
    """An attribute's values as stripped strings (AE titles may be multi-valued)."""
    value = ds.get(keyword)
    values = list(value) if isinstance(value, MultiValue) else [value]
    return [text for v in values if v is not None and (text := str(v).strip())]


def _step(item: Dataset) -> Dataset:
    """The item's Scheduled Procedure Step (one per response in a worklist, PS3.4 K.6.1)."""
    steps = item.get("ScheduledProcedureStepSequence")
    return steps[0] if steps else Dataset()


def _belongs(item: Dataset, room: RoomWorklist, day: datetime.date) -> bool:
    """Drop items whose step contradicts the query: not every SCP matches on every key."""
    step = _step(item)
    aes = _values(step, "ScheduledStationAETitle")
    if room.station_ae and aes and room.station_ae not in aes:
        return False
    locations = _values(step, "ScheduledProcedureStepLocation")
    if room.location and locations and room.location not in locations:
        return False
    dates = _values(step, "ScheduledProcedureStepStartDate")
    return not dates or day.strftime("%Y%m%d") in dates


def scheduled_start(item: Dataset, day: datetime.date) -> datetime.datetime:
    """When the item's step is scheduled to start (local time; missing parts → ``day``, 00:00)."""
    step = _step(item)
    try:
        date = datetime.datetime.strptime(
            str(step.get("ScheduledProcedureStepStartDate")), "%Y%m%d"
        )
        start_day = date.date()
    except ValueError:
        start_day = day
    digits = str(step.get("ScheduledProcedureStepStartTime") or "").replace(":", "").strip()
    try:
        hour, minute, second = (int(digits[i : i + 2] or 0) for i in (0, 2, 4))
        start_time = datetime.time(hour, minute, min(second, 59))
    except ValueError:
        start_time = datetime.time()
    return datetime.datetime.combine(start_day, start_time)


def choose_item(items: list[Dataset], now: datetime.datetime) -> Dataset | None:
    """The procedure the room is most likely doing: the latest started, else the next one."""
    if not items:
        return None

    def order(item: Dataset) -> tuple[datetime.datetime, str, str]:
        step_id = str(_step(item).get("ScheduledProcedureStepID", ""))
        return scheduled_start(item, now.date()), str(item.get("StudyInstanceUID", "")), step_id

    started = [item for item in items if scheduled_start(item, now.date()) <= now]
    if started:
        return max(started, key=order)
    return min(items, key=order)


def worklist_context(item: Dataset) -> Dataset:
    """The item as a flat context dataset: patient, study and its scheduled step's facts.

    Empty return keys are left out (absent means unknown). The step's attributes move to top level
    under their own keywords, so consumers of ``meta.in`` need not know the worklist's nesting.
    The values are decoded text by now, so the context declares UTF-8: it encodes without loss
    whatever character set the SCP used.
    """
    context = Dataset()
    context.SpecificCharacterSet = "ISO_IR 192"
    step = _step(item)
    for source, keywords in ((item, PATIENT_STUDY_KEYS), (step, STEP_KEYS)):
        for keyword in keywords:
            if keyword in source and not source[keyword].is_empty:
                context.add(copy.deepcopy(source[keyword]))
    return context


ContextCallback = Callable[[str, Dataset], Awaitable[None]]


@dataclass
class _Room:
    """What the poller knows of one room between polls."""

    config: RoomWorklist
    sent: Dataset | None = None
    polls_since_sent: int = 0
    items: int = 0
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


class WorklistPoller:
    """Polls the worklist for every configured room and reports each room's current procedure.

    ``on_context(room, dataset)`` is awaited when a room's chosen procedure (or what the RIS says
    about it) changes, and again every :data:`RESEND_EVERY` polls. Failures are counted and logged
    once per change between answering and not; the loop itself never ends on an error.
    """

    def __init__(
        self,
        settings: WorklistSettings,
        on_context: ContextCallback,
        counters: Counters,
        *,
        now: Callable[[], datetime.datetime] = datetime.datetime.now,
    ) -> None:
        self.settings = settings
        self._on_context = on_context
        self._counters = counters
        self._now = now
        self._rooms = {name: _Room(config) for name, config in settings.rooms.items()}
        self._down: str | None = None
        self._answered = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            _quiet_pynetdicom()
            self._task = asyncio.create_task(self._run(), name="worklist-poller")

    async def stop(self) -> None:
        """Cancel polling; returns once no query is left running (at most ``bound_s``)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def status(self) -> dict[str, Any]:
        """For ``/stats``: reachability and per-room times; no patient data."""
        state = "down" if self._down else "up" if self._answered else "unknown"
        return {
            "scp": self.settings.address,
            "state": state,
            "reason": self._down,
            "rooms": {
                name: {
                    "last_success": _iso(room.last_success),
                    "last_error": room.last_error,
                    "last_error_at": _iso(room.last_error_at),
                    "items": room.items,
                    "reporting": room.sent is not None,
                }
                for name, room in self._rooms.items()
            },
        }

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            cycle_start = loop.time()
            await self.poll_once()
            await asyncio.sleep(max(0.0, cycle_start + self.settings.interval_s - loop.time()))

    async def poll_once(self) -> None:
        """Query every room once and report what changed."""
        now = self._now()
        failure: WorklistError | None = None
        for name, room in self._rooms.items():
            if failure is not None and not failure.connected:
                self._failed(room, failure)  # no point waiting for a host that is not there
                continue
            self._counters.add("worklist_queries")
            try:
                items = await self._query(room.config, now.date())
            except WorklistError as exc:
                failure = failure or exc
                self._failed(room, exc)
                continue
            self._counters.add("worklist_items", len(items))
            room.items, room.last_success, room.last_error = len(items), time.time(), None
            await self._report(name, room, choose_item(items, now))
        self._health(failure)

    async def _query(self, room: RoomWorklist, day: datetime.date) -> list[Dataset]:
        query = asyncio.ensure_future(asyncio.to_thread(find_scheduled, self.settings, room, day))
        try:
            return await asyncio.shield(query)
        except asyncio.CancelledError:
            # A thread cannot be interrupted: wait for it (bounded) so stop() leaves none behind.
            await asyncio.wait([query])
            if not query.cancelled():
                query.exception()  # retrieved: it died with the poller
            raise

    def _failed(self, room: _Room, exc: WorklistError) -> None:
        self._counters.add("worklist_errors")
        room.last_error, room.last_error_at = exc.reason, time.time()

    async def _report(self, name: str, room: _Room, item: Dataset | None) -> None:
        if item is None:
            room.sent, room.polls_since_sent = None, 0
            return
        context = worklist_context(item)
        room.polls_since_sent += 1
        if context == room.sent and room.polls_since_sent < RESEND_EVERY:
            return
        try:
            await self._on_context(name, context)
        except Exception:
            self._counters.add("worklist_deliver_errors")
            log.exception("worklist context for room %s not delivered", name)
            return
        room.sent, room.polls_since_sent = context, 0

    def _health(self, failure: WorklistError | None) -> None:
        address = self.settings.address
        if failure is not None:
            if self._down is None:
                log.warning("worklist SCP %s unreachable: %s", address, failure.reason)
            self._down = failure.reason
        else:
            if self._down is not None:
                log.info("worklist SCP %s answering again", address)
            self._down, self._answered = None, True


def _iso(wall: float | None) -> str | None:
    if wall is None:
        return None
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="seconds")


def _quiet_pynetdicom() -> None:
    """pynetdicom logs every failed attempt at ERROR; the poller's own lines say it once.

    Left alone when someone configured pynetdicom's logger on purpose.
    """
    logger = logging.getLogger("pynetdicom")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)
