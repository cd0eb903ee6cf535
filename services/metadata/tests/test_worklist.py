"""The Modality Worklist client against DCMTK's ``wlmscpfs``, and against peers that misbehave.

A real SCP answers the queries (worklist files made with ``dump2dcm``); a tiny TCP server stands in
for peers that are not DICOM at all. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pydantic
import pydicom
import pytest
from pydicom import Dataset
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from orstream.common.telemetry import Counters
from orstream.metadata.worklist import (
    RESEND_EVERY,
    RoomWorklist,
    WorklistError,
    WorklistPoller,
    WorklistSettings,
    choose_item,
    find_scheduled,
    worklist_context,
)

pytestmark = pytest.mark.integration


LOOPBACK = "127.0.0.1"
CALLED_AE = "WORKLIST"
TODAY = datetime.date.today()
OR1 = RoomWorklist(station_ae="OR1")
#: The poller's clock in these tests: midday, so "started" and "upcoming" never depend on when
#: the tests run.
NOON = datetime.datetime.combine(TODAY, datetime.time(12, 0))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def settings_for(port: int, **changes: object) -> WorklistSettings:
    values: dict[str, object] = {
        "host": LOOPBACK,
        "port": port,
        "called_ae": CALLED_AE,
        "timeout_s": 1.0,
        "interval_s": 0.1,
        "rooms": {"or1": OR1},
    }
    return WorklistSettings.model_validate(values | changes)


def pynetdicom_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if isinstance(t, Association | DULServiceProvider)}


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@dataclass
class Item:
    """One scheduled procedure step, as a worklist file holds it."""

    patient: str
    patient_id: str
    study_uid: str
    station: str
    location: str
    day: datetime.date = TODAY
    start: str = "0000"
    step_id: str = "SPS1"


JANE = Item("DOE^JANE", "PID1", "1.2.826.0.1.3680043.10.543.1", "OR1", "OR 1")
JOHN = Item("SMITH^JOHN", "PID2", "1.2.826.0.1.3680043.10.543.2", "OR2", "OR 2")
TOMORROW = Item(
    "ROE^RICHARD",
    "PID3",
    "1.2.826.0.1.3680043.10.543.3",
    "OR1",
    "OR 1",
    day=TODAY + datetime.timedelta(days=1),
)
LATE = Item("LATE^LARRY", "PID4", "1.2.826.0.1.3680043.10.543.4", "OR1", "OR 1", start="2359")


@pytest.fixture
def scp(worklist: Any) -> int:
    """A running wlmscpfs with Jane (OR1, today), John (OR2, today), Richard (OR1, tomorrow)."""
    for name, item in (("jane", JANE), ("john", JOHN), ("tomorrow", TOMORROW)):
        worklist.add_step(name, **asdict(item))
    port = free_port()
    worklist.start(port)
    return port


class BadPeer:
    """A TCP peer on loopback that is no DICOM SCP: junk, hang-up, silence, or half a PDU."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"bad-peer-{behaviour}")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.1)
                with contextlib.suppress(OSError):
                    if self.behaviour == "junk":
                        conn.recv(65536)
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(range(256)))
                    elif self.behaviour == "truncated":  # an A-ASSOCIATE-AC of 1 MiB, begun
                        conn.recv(65536)
                        conn.sendall(b"\x02\x00" + (1 << 20).to_bytes(4, "big") + bytes(64))
                if self.behaviour != "close":
                    self._hold(conn)

    def _hold(self, conn: socket.socket) -> None:
        """Keep the connection open, reading and ignoring, until the client goes."""
        deadline = time.monotonic() + 10
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if not conn.recv(65536):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def bad_peer() -> Iterator[Callable[[str], BadPeer]]:
    peers: list[BadPeer] = []

    def start(behaviour: str) -> BadPeer:
        peers.append(BadPeer(behaviour))
        return peers[-1]

    yield start
    for peer in peers:
        peer.close()


@dataclass
class Received:
    contexts: list[tuple[str, Dataset]] = field(default_factory=list)

    def callback(self) -> Callable[[str, Dataset], Awaitable[None]]:
        async def on_context(room: str, ds: Dataset) -> None:
            self.contexts.append((room, ds))

        return on_context

    def names(self) -> list[str]:
        return [str(ds.PatientName) for _, ds in self.contexts]


def query_failure(settings: WorklistSettings) -> tuple[WorklistError, float]:
    """The error a query for today raises, and how long it took."""
    started = time.monotonic()
    with pytest.raises(WorklistError) as caught:
        find_scheduled(settings, OR1, TODAY)
    return caught.value, time.monotonic() - started


# --- settings ---------------------------------------------------------------------------------


def test_settings_come_from_json_and_refuse_a_room_without_a_key() -> None:
    settings = WorklistSettings.model_validate_json(
        '{"host": "ris.example", "port": 104, "rooms": {"or1": {"station_ae": "OR1"},'
        ' "or2": {"location": "OR 2"}}}'
    )
    assert (settings.called_ae, settings.calling_ae, settings.interval_s) == (
        "WORKLIST",
        "ORSTREAM",
        30,
    )
    assert settings.address == "ris.example:104" and settings.bound_s < 30
    with pytest.raises(pydantic.ValidationError, match="station_ae or location"):
        RoomWorklist()
    with pytest.raises(pydantic.ValidationError):
        RoomWorklist(station_ae="A_TITLE_LONGER_THAN_16")
    with pytest.raises(pydantic.ValidationError, match="room"):
        settings_for(104, rooms={"or 1": OR1})
    with pytest.raises(pydantic.ValidationError):
        settings_for(104, interval_s=0)


# --- queries against wlmscpfs ------------------------------------------------------------------


def test_a_query_returns_the_rooms_procedure_for_the_day(scp: int) -> None:
    settings = settings_for(scp)
    [item] = find_scheduled(settings, OR1, TODAY)
    context = worklist_context(item)
    assert "ScheduledProcedureStepSequence" not in context
    assert context.SpecificCharacterSet == "ISO_IR 192"
    assert {
        keyword: str(context[keyword].value)
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyInstanceUID",
            "AccessionNumber",
            "ReferringPhysicianName",
            "RequestedProcedureID",
            "RequestedProcedureDescription",
            "Modality",
            "ScheduledStationAETitle",
            "ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepStartTime",
            "ScheduledPerformingPhysicianName",
            "ScheduledProcedureStepDescription",
            "ScheduledProcedureStepID",
            "ScheduledProcedureStepLocation",
        )
    } == {
        "PatientName": "DOE^JANE",
        "PatientID": "PID1",
        "PatientBirthDate": "19700101",
        "PatientSex": "F",
        "StudyInstanceUID": JANE.study_uid,
        "AccessionNumber": "ACC-PID1",
        "ReferringPhysicianName": "REFERRER^RITA",
        "RequestedProcedureID": "RP-PID1",
        "RequestedProcedureDescription": "Laparoscopic cholecystectomy",
        "Modality": "ES",
        "ScheduledStationAETitle": "OR1",
        "ScheduledProcedureStepStartDate": f"{TODAY:%Y%m%d}",
        "ScheduledProcedureStepStartTime": "0000",
        "ScheduledPerformingPhysicianName": "SURGEON^SAM",
        "ScheduledProcedureStepDescription": "Cholecystectomy",
        "ScheduledProcedureStepID": "SPS1",
        "ScheduledProcedureStepLocation": "OR 1",
    }
    by_location = find_scheduled(settings, RoomWorklist(location="OR 2"), TODAY)
    assert [str(i.PatientName) for i in by_location] == ["SMITH^JOHN"]
    tomorrow = find_scheduled(settings, OR1, TOMORROW.day)
    assert [str(i.PatientName) for i in tomorrow] == ["ROE^RICHARD"]
    assert find_scheduled(settings, RoomWorklist(station_ae="OR9"), TODAY) == []
    assert pynetdicom_threads() == set()


def test_a_wrong_called_ae_title_is_rejected(scp: int) -> None:
    error, elapsed = query_failure(settings_for(scp, called_ae="NOSUCHAE"))
    assert f"{LOOPBACK}:{scp}" in str(error) and "rejected" in error.reason
    assert "Called AE title not recognised" in error.reason and elapsed < 2


def test_an_scp_that_stalls_is_given_up_on_in_time(worklist: Any) -> None:
    worklist.add_step("jane", **asdict(JANE))
    port = free_port()
    worklist.start(port, "--sleep-before", "5")
    settings = settings_for(port, timeout_s=0.5)
    error, elapsed = query_failure(settings)
    assert error.reason == "no C-FIND response within 0.5 s" and error.connected
    assert elapsed < settings.bound_s
    assert pynetdicom_threads() == set()


def test_a_name_in_another_character_set_arrives_as_text_and_encodes(worklist: Any) -> None:
    muller = Item("MÜLLER^JÖRG", "PID6", "1.2.826.0.1.3680043.10.543.6", "OR1", "OR 1")
    worklist.add_step("muller", **asdict(muller))
    port = free_port()
    worklist.start(port, "--keep-char-set")  # answers say ISO_IR 100, as the file does
    [item] = find_scheduled(settings_for(port), RoomWorklist(station_ae=" OR1 "), TODAY)
    context = worklist_context(item)
    assert str(context.PatientName) == "MÜLLER^JÖRG"
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, context, implicit_vr=False, little_endian=True)
    buffer.seek(0)
    assert str(pydicom.dcmread(buffer, force=True).PatientName) == "MÜLLER^JÖRG"


# --- peers that are not DICOM -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("junk", "answered with data that is not DICOM (invalid PDU)"),
        ("close", "closed the connection; no answer to the association request"),
        ("silent", "no answer to the association request within 0.5 s"),
        # pynetdicom waits for the rest of the PDU past every timeout: the deadline cuts it off
        ("truncated", "no complete answer within 1.5 s"),
    ],
)
def test_a_peer_that_is_not_dicom_fails_the_query_in_time(
    bad_peer: Callable[[str], BadPeer], behaviour: str, reason: str
) -> None:
    peer = bad_peer(behaviour)
    settings = settings_for(peer.port, timeout_s=0.5)
    error, elapsed = query_failure(settings)
    assert str(error) == f"worklist SCP {LOOPBACK}:{peer.port}: {reason}"
    assert elapsed < settings.bound_s
    assert pynetdicom_threads() == set()


async def test_stop_waits_for_the_query_in_flight(bad_peer: Callable[[str], BadPeer]) -> None:
    peer = bad_peer("silent")
    settings = settings_for(peer.port, timeout_s=0.5)
    counters = Counters("test.worklist")
    poller = WorklistPoller(settings, Received().callback(), counters)
    poller.start()
    await until(lambda: counters.snapshot().get("worklist_queries", 0) >= 1)
    started = time.monotonic()
    await poller.stop()
    assert time.monotonic() - started < settings.bound_s
    assert pynetdicom_threads() == set()


# --- the poller ---------------------------------------------------------------------------------


def test_the_procedure_under_way_is_chosen_else_the_next() -> None:
    def item(start: str, uid: str) -> Dataset:
        step = Dataset()
        step.ScheduledProcedureStepStartDate = f"{TODAY:%Y%m%d}"
        step.ScheduledProcedureStepStartTime = start
        ds = Dataset()
        ds.StudyInstanceUID = uid
        ds.ScheduledProcedureStepSequence = [step]
        return ds

    early, mid, late = item("0800", "1.1"), item("1130", "1.2"), item("1500", "1.3")
    assert choose_item([early, late, mid], NOON) is mid
    assert choose_item([late, item("143000.5", "1.4")], NOON).StudyInstanceUID == "1.4"  # type: ignore[union-attr]
    assert choose_item([], NOON) is None


async def test_the_poller_reports_a_room_once_then_on_change_and_periodically(
    worklist: Any,
) -> None:
    worklist.add_step("jane", **asdict(JANE))  # started at 00:00
    worklist.add_step("late", **asdict(LATE))  # starts at 23:59: not yet
    worklist.add_step("john", **asdict(JOHN))  # another room's
    port = free_port()
    worklist.start(port)
    received, counters = Received(), Counters("test.worklist")
    poller = WorklistPoller(settings_for(port), received.callback(), counters, now=lambda: NOON)
    poller.start()
    try:
        await until(lambda: len(received.contexts) == 1)
        assert received.contexts[0][0] == "or1" and received.names() == ["DOE^JANE"]
        await asyncio.sleep(0.5)  # about five polls, fewer than RESEND_EVERY
        assert received.names() == ["DOE^JANE"]

        nora = Item("NOW^NORA", "PID5", "1.2.826.0.1.3680043.10.543.5", "OR1", "OR 1", start="1100")
        worklist.add_step("now", **asdict(nora))
        await until(lambda: len(received.contexts) == 2)
        assert received.names() == ["DOE^JANE", "NOW^NORA"]
        sent_at = counters.snapshot()["worklist_queries"]

        await until(lambda: len(received.contexts) == 3)  # unchanged, sent again for late joiners
        assert received.contexts[2][1] == received.contexts[1][1]
        assert counters.snapshot()["worklist_queries"] - sent_at >= RESEND_EVERY - 1
    finally:
        await poller.stop()
    snapshot = counters.snapshot()
    assert snapshot["worklist_items"] >= 2 * snapshot["worklist_queries"] - 2
    assert "worklist_errors" not in snapshot
    status = poller.status()
    assert status["state"] == "up" and status["rooms"]["or1"]["last_success"] is not None
    assert "DOE" not in json.dumps(status) and "NORA" not in json.dumps(status)


async def test_the_poller_rides_out_an_scp_that_is_down_and_picks_up_when_it_starts(
    worklist: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orstream.metadata.worklist")
    worklist.add_step("jane", **asdict(JANE))
    port = free_port()
    settings = settings_for(port)
    error, elapsed = query_failure(settings)
    assert f"{LOOPBACK}:{port}" in str(error) and not error.connected and elapsed < settings.bound_s

    received, counters = Received(), Counters("test.worklist")
    poller = WorklistPoller(settings, received.callback(), counters, now=lambda: NOON)
    poller.start()
    try:
        await until(lambda: counters.snapshot().get("worklist_errors", 0) >= 3)
        assert received.contexts == [] and poller.status()["state"] == "down"
        worklist.start(port)
        await until(lambda: received.names() == ["DOE^JANE"])
        await until(lambda: poller.status()["state"] == "up")
    finally:
        await poller.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "orstream.metadata.worklist"]
    assert lines == [
        f"worklist SCP {LOOPBACK}:{port} unreachable: connection refused or host unreachable",
        f"worklist SCP {LOOPBACK}:{port} answering again",
    ]
    assert poller.status()["rooms"]["or1"]["last_error"] is None
