"""The audit trail on a real nats-server: records land in the AUDIT stream, once, and a trail
whose NATS is gone or whose queue is full never raises into the service."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import pytest
from lxml import etree
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig

from orstream.cli.stack import EmbeddedNats
from orstream.common import audit
from orstream.common.audit import AuditRecord, Outcome
from orstream.common.audit_trail import AuditTrail
from orstream.common.bus import Bus
from orstream.common.subjects import AUDIT_STREAM, all_audit
from orstream.common.syslog import BOM, SyslogForwarder
from orstream.common.telemetry import Counters

SOURCE = "signaling-test"
PSEUDONYM = "PSN-QX81Z0LLM2B7C44"
#: The patient's identified name in the OR context the edge saw: never in an audit record.
IDENTIFIED_NAME = b"Doe^Jane"


@pytest.fixture
def site() -> str:
    """A site of its own per test, so tests sharing the session's AUDIT stream stay apart."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_url, "audit-test")
    yield bus
    await bus.close()


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    with audit.schema_file("rng").open("rb") as f:
        return etree.RelaxNG(etree.parse(f))


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own, which the test may stop."""
    server = EmbeddedNats(tmp_path, log_file=None)
    yield server
    server.stop()


def records(site: str) -> list[AuditRecord]:
    """One record of each kind the edge writes, about one patient."""
    common = {"site": site, "source_id": SOURCE, "client_address": "10.1.2.3"}
    session = {
        **common,
        "user": "alice@hospital.example",
        "role": "surgeon",
        "room": "or1",
        "streams": ["endoscope"],
        "session_id": "sess-1",
        "patient_pseudonym": PSEUDONYM,
    }
    return [
        audit.user_authentication(
            **common, user="alice@hospital.example", outcome_ok=True, reason="ok", role="surgeon"
        ),
        audit.user_authentication(**common, user="mallory", outcome_ok=False, reason="expired"),
        audit.session_started(**session),
        audit.session_stopped(**session, reason="peer left"),
        audit.access_denied(
            **common,
            user="bob",
            role="student",
            room="or1",
            stream="endoscope",
            action="view",
            status=403,
            reason="room not granted",
            patient_pseudonym=PSEUDONYM,
        ),
    ]


async def stored(bus: Bus, site: str, expected: int, timeout_s: float = 10.0) -> list[Msg]:
    """The site's messages in AUDIT, read with a JetStream consumer (waits for ``expected``)."""
    sub = await bus.js.pull_subscribe(all_audit(site), stream=AUDIT_STREAM)
    out: list[Msg] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            try:
                batch = await sub.fetch(expected - len(out), timeout=1.0)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for msg in batch:
                await msg.ack()
                out.append(msg)
    finally:
        await sub.unsubscribe()
    return out


async def count_stored(bus: Bus, site: str) -> int:
    info = await bus.js.stream_info(AUDIT_STREAM, subjects_filter=all_audit(site))
    return sum((info.state.subjects or {}).values())


async def test_records_of_every_kind_are_in_the_stream(
    bus: Bus, site: str, schema: etree.RelaxNG
) -> None:
    trail = AuditTrail(bus, site, SOURCE)
    await trail.start()
    sent = records(site)
    assert all(trail.record(rec) for rec in sent)
    await trail.stop()
    assert trail.stats()["audit_written"] == len(sent)

    info = await bus.js.stream_info(AUDIT_STREAM)
    assert info.config.storage == StorageType.FILE and "audit.>" in info.config.subjects
    assert info.config.deny_delete and info.config.deny_purge

    msgs = await stored(bus, site, len(sent))
    assert len(msgs) == len(sent) == await count_stored(bus, site)
    by_id = {rec.record_id: rec for rec in sent}
    for msg in msgs:
        assert msg.headers is not None and msg.headers["Content-Type"] == "application/xml"
        original = by_id.pop(msg.headers["Nats-Msg-Id"])
        assert msg.subject == f"audit.{site}.{original.kind}"
        assert schema.validate(etree.fromstring(msg.data)), schema.error_log
        assert IDENTIFIED_NAME not in msg.data
        parsed = AuditRecord.from_xml(msg.data, kind=msg.subject.rsplit(".", 1)[1])
        assert parsed.event_id == original.event_id and parsed.event_types == original.event_types
        assert parsed.outcome == original.outcome and parsed.action == original.action
        assert parsed.requestor is not None
        assert parsed.requestor.user_id == original.requestor.user_id  # type: ignore[union-attr]
        assert parsed.objects == original.objects
        if original.kind in ("session", "denial"):
            assert parsed.objects[0].detail("Room") == ["or1"]
            assert parsed.patient is not None and parsed.patient.object_id == PSEUDONYM
            assert parsed.patient.name == PSEUDONYM
    assert not by_id, "every record was read back"
    kinds = sorted(m.subject.rsplit(".", 1)[1] for m in msgs)
    assert kinds == ["auth", "auth", "denial", "session", "session"]
    outcomes = sorted(AuditRecord.from_xml(m.data, kind="x").outcome for m in msgs)
    assert outcomes == [Outcome.SUCCESS] * 3 + [Outcome.MINOR_FAILURE] * 2


async def test_write_returns_once_stored_and_a_retry_is_stored_once(bus: Bus, site: str) -> None:
    trail = AuditTrail(bus, site, SOURCE)
    await trail.start()
    rec = records(site)[2]
    assert await trail.write(rec)
    assert await count_stored(bus, site) == 1, "stored before write returned"
    assert await trail.write(rec), "a second publish of the same record is acknowledged"
    await trail.stop()
    assert await count_stored(bus, site) == 1, "and deduplicated by its Nats-Msg-Id"


async def test_a_full_queue_drops_and_counts(bus: Bus, site: str) -> None:
    counters = Counters("orstream-test")
    trail = AuditTrail(bus, site, SOURCE, counters=counters, queue_size=2)
    sent = records(site)
    # Not started yet: nothing drains the queue.
    assert [trail.record(rec) for rec in sent] == [True, True, False, False, False]
    assert trail.stats()["audit_dropped"] == 3 and counters.snapshot()["audit_dropped"] == 3
    await trail.start()
    await trail.stop()
    assert counters.snapshot()["audit_written"] == 2
    assert await count_stored(bus, site) == 2
    assert not trail.record(sent[0]), "a stopped trail drops"
    assert trail.stats()["audit_dropped"] == 4


async def test_nats_down_never_raises_into_the_caller(private_nats: EmbeddedNats) -> None:
    site = "down"
    bus = await Bus.connect(private_nats.url, "audit-down-test")
    try:
        trail = AuditTrail(bus, site, SOURCE, ack_timeout_s=0.3, publish_attempts=2)
        await trail.start()
        first, second, third = records(site)[:3]
        assert await trail.write(first)
        private_nats.stop()
        assert trail.record(second), "queued: record() does not wait for NATS"
        assert await trail.write(third) is False, "write() reports the failure, never raises"
        await trail.stop(timeout_s=5.0)
        stats = trail.stats()
        assert stats["audit_written"] == 1 and stats["audit_errors"] == 2, stats
        assert stats["audit_dropped"] == 0 and stats["audit_queued"] == 0
    finally:
        # Bus.close() lets nats-py's ConnectionResetError through when the server is gone.
        with contextlib.suppress(ConnectionResetError):
            await bus.close()


async def test_an_existing_stream_is_kept_and_given_the_audit_subjects(
    private_nats: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    bus = await Bus.connect(private_nats.url, "audit-existing-test")
    try:
        await bus.js.add_stream(
            StreamConfig(name=AUDIT_STREAM, subjects=["legacy.audit"], storage=StorageType.MEMORY)
        )
        trail = AuditTrail(bus, "site1", SOURCE)
        await trail.start()
        info = await bus.js.stream_info(AUDIT_STREAM)
        assert set(info.config.subjects) == {"legacy.audit", "audit.>"}
        assert info.config.storage == StorageType.MEMORY, "storage is left to the operators"
        assert "not on file storage" in caplog.text
        assert await trail.write(records("site1")[0])
        await trail.stop()
    finally:
        await bus.close()


async def test_replicas_starting_together_share_one_stream(private_nats: EmbeddedNats) -> None:
    buses = [await Bus.connect(private_nats.url, f"audit-race-{i}") for i in range(4)]
    try:
        trails = [AuditTrail(b, "site1", f"edge-{i}") for i, b in enumerate(buses)]
        await asyncio.gather(*(t.ensure_stream() for t in trails))
        info = await buses[0].js.stream_info(AUDIT_STREAM)
        assert info.config.subjects == ["audit.>"] and info.config.num_replicas == 1
    finally:
        for b in buses:
            await b.close()


async def test_records_are_also_forwarded_to_syslog(bus: Bus, site: str) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Collector(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.put_nowait(data)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        Collector, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        trail = AuditTrail(bus, site, SOURCE, syslog=SyslogForwarder(f"udp://127.0.0.1:{port}"))
        await trail.start()
        ok, refused = records(site)[:2]
        trail.record(ok)
        assert await trail.write(refused)
        got = [await asyncio.wait_for(received.get(), 5.0) for _ in range(2)]
        await trail.stop()
    finally:
        transport.close()
    assert [g[:4] for g in got] == [b"<85>", b"<84>"], "notice, then warning for the failure"
    assert got[0].endswith(BOM + ok.to_xml()) and got[1].endswith(BOM + refused.to_xml())
    assert trail.stats()["audit_syslog"]["sent"] == 2


async def test_a_record_of_another_site_is_a_bug(bus: Bus, site: str) -> None:
    trail = AuditTrail(bus, site, SOURCE)
    with pytest.raises(ValueError, match="site"):
        trail.record(records("elsewhere")[0])
