"""The edge's access matrix with real aiortc peers and a real nats-server: who gets in, who is
refused and why, what each peer receives, when sessions end — and the audit trail of all of it.

The metadata service runs too, so the privacy test follows the identified context from
``meta.in`` through de-identification to every byte a student's peer connection receives.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats.errors
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from lxml import etree

from orstream.cli.main import make_token
from orstream.cli.stack import free_port
from orstream.common import audit
from orstream.common.audit import AuditRecord
from orstream.common.bus import Bus
from orstream.common.messages import ContextMeta, StreamDescriptor, StreamState
from orstream.common.registry import Registry
from orstream.common.runner import ServiceContext
from orstream.common.samples import IDENTIFYING, PATIENT_NAME, rtv_grain
from orstream.common.subjects import AUDIT_STREAM, all_audit, meta_in
from orstream.common.tokens import mint_token
from orstream.metadata.service import MetadataService
from orstream.metadata.settings import MetadataSettings
from orstream.signaling.revocation import publish_revocation
from orstream.signaling.service import SignalingService
from orstream.signaling.settings import SignalingSettings
from orstream.viewer.probe import Probe, WhepError

pytestmark = pytest.mark.integration

SITE = "acc"
POLICY = """
roles:
  surgeon: {rooms: ["acc/*"], metadata: identified, annotate: true, chat: true, record: true}
  expert: {rooms: ["acc/*"], metadata: identified, annotate: true, chat: true}
  student:
    rooms: ["acc/or1"]
    streams: ["endoscope"]
    metadata: basic+clean-descriptors
    chat: true
  ops: {rooms: ["acc/*"], metadata: technical}
"""
STREAMS = (("or1", "endoscope"), ("or1", "roomcam"), ("or2", "endoscope"))
BURST = 6


@dataclass
class Edge:
    url: str
    settings: SignalingSettings
    service: SignalingService
    bus: Bus

    def whep(self, room: str, stream: str | None = None) -> str:
        return f"{self.url}/whep/{SITE}/{room}" + (f"/{stream}" if stream else "")

    async def audit_records(self, expected: int, timeout_s: float = 10.0) -> list[AuditRecord]:
        """Every record in AUDIT for this site (waits until at least ``expected`` are there)."""
        sub = await self.bus.js.pull_subscribe(all_audit(SITE), stream=AUDIT_STREAM)
        out: list[AuditRecord] = []
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                try:
                    batch = await sub.fetch(100, timeout=0.5)
                except (nats.errors.TimeoutError, TimeoutError):
                    if len(out) >= expected:
                        break
                    continue
                for msg in batch:
                    assert SCHEMA.validate(etree.fromstring(msg.data)), SCHEMA.error_log
                    kind = msg.subject.rsplit(".", 1)[1]
                    out.append(AuditRecord.from_xml(msg.data, kind=kind))
                    await msg.ack()
        finally:
            await sub.unsubscribe()
        return out


with audit.schema_file("rng").open("rb") as _schema:
    SCHEMA = etree.RelaxNG(etree.parse(_schema))


@pytest.fixture
async def edge(nats_url: str, state_dir: Path, tmp_path: Path) -> AsyncIterator[Edge]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = SignalingSettings(
        nats_url=nats_url,
        site=SITE,
        http_port=free_port(),
        state_dir=state_dir,
        ice_host_addresses=["127.0.0.1"],
        policy_file=policy,
        whep_rate_per_s=0.5,
        whep_burst=BURST,
        stats_interval_s=0.2,
    )
    meta_settings = MetadataSettings(
        nats_url=nats_url, site=SITE, state_dir=state_dir, policy_file=policy
    )
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(nats_url, "test-edge")
        stack.push_async_callback(bus.close)
        # A fresh AUDIT stream per test: each test reads only its own records.
        with suppress(nats.js.errors.NotFoundError):
            await bus.js.delete_stream(AUDIT_STREAM)
        registry = await Registry.open(bus)
        for room, stream in STREAMS:
            await registry.announce(
                StreamDescriptor(
                    site=SITE,
                    room=room,
                    stream=stream,
                    source="testpattern:",
                    width=640,
                    height=360,
                    fps=25.0,
                    pix_fmt="yuv420p",
                    ring=f"orstream-{SITE}-{room}-{stream}",
                    state=StreamState.LIVE,
                )
            )
        metadata = MetadataService(meta_settings)
        meta_bus = await Bus.connect(nats_url, "test-metadata")
        stack.push_async_callback(meta_bus.close)
        await metadata.start(ServiceContext(settings=meta_settings, bus=meta_bus, stack=stack))
        service = SignalingService(settings)
        edge_bus = await Bus.connect(nats_url, "test-edge-service")
        stack.push_async_callback(edge_bus.close)
        await service.start(ServiceContext(settings=settings, bus=edge_bus, stack=stack))
        yield Edge(f"http://127.0.0.1:{settings.http_port}", settings, service, bus)


def token(role: str, *, ttl: int = 600, sub: str | None = None, rooms: str = "acc/*") -> str:
    return make_token(role, [rooms], ttl, sub)


def sdp_headers(bearer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {bearer}", "Content-Type": "application/sdp"}


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def offer_sdp(video: int = 1) -> str:
    probe = Probe("http://unused", "", video=video)
    try:
        for _ in range(video):
            probe.pc.addTransceiver("video", direction="recvonly")
        await probe.pc.setLocalDescription(await probe.pc.createOffer())
        return str(probe.pc.localDescription.sdp)
    finally:
        await probe.close()


async def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


async def test_bad_tokens_are_refused_with_401_and_audited(edge: Edge, state_dir: Path) -> None:
    good = token("student", sub="stu")
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    other_key = ec.generate_private_key(ec.SECP256R1())
    key_path = edge.settings.dev_key_path
    from orstream.common.tokens import load_or_create_signing_key

    dev_key = load_or_create_signing_key(key_path)
    cases = {
        "forged": mint_token(
            other_key, issuer="orstream-dev", audience="orstream", role="expert", rooms=["acc/*"]
        ),
        "alg none": b64({"alg": "none", "typ": "JWT"}) + "." + b64(claims) + ".",
        "expired": mint_token(
            dev_key,
            issuer="orstream-dev",
            audience="orstream",
            role="student",
            rooms=["acc/*"],
            ttl_s=-3600,
        ),
        "wrong audience": mint_token(
            dev_key, issuer="orstream-dev", audience="pacs", role="student", rooms=["acc/*"]
        ),
        "wrong issuer": mint_token(
            dev_key, issuer="evil", audience="orstream", role="student", rooms=["acc/*"]
        ),
        "role edited": header + "." + b64({**claims, "role": "expert"}) + "." + signature,
        "garbage": "not-a-jwt",
    }
    sdp = await offer_sdp()
    async with httpx.AsyncClient(timeout=10) as http:
        for case, bad in cases.items():
            r = await http.post(
                edge.whep("or1", "endoscope"), content=sdp, headers=sdp_headers(bad)
            )
            assert r.status_code == 401, (case, r.status_code, r.text)
            assert r.text.strip(), f"{case}: a refusal says why"
            assert "v=0" not in r.text
        r = await http.post(edge.whep("or1", "endoscope"), content=sdp, headers={})
        assert r.status_code == 401 and "Authorization" in r.text
        # A flood of bad tokens from one address is throttled, so it cannot flood the audit.
        statuses = [
            (await http.post(edge.whep("or1", "endoscope"), content=sdp, headers=sdp_headers("x")))
            for _ in range(30)
        ]
        assert {r.status_code for r in statuses} == {401, 429}
        assert all(int(r.headers["retry-after"]) >= 1 for r in statuses if r.status_code == 429)
    assert not edge.service.sessions or not edge.service.sessions.sessions
    records = await edge.audit_records(20)
    failures = [r for r in records if r.kind == "auth" and r.outcome is not audit.Outcome.SUCCESS]
    # Audited up to the failure burst, then at the limiter's rate (one per second).
    assert 20 <= len(failures) <= 23, len(failures)
    assert all(r.event_id.code == audit.USER_AUTHENTICATION.code for r in failures)
    assert all(r.outcome_description for r in failures), "each failure says why"


async def test_roles_get_only_what_the_policy_grants(edge: Edge) -> None:
    sdp = await offer_sdp()
    student = sdp_headers(token("student", sub="stu"))
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(edge.whep("or2", "endoscope"), content=sdp, headers=student)
        assert r.status_code == 403 and "acc/or2" in r.text, r.text
        r = await http.post(edge.whep("or1", "roomcam"), content=sdp, headers=student)
        assert r.status_code == 403 and "roomcam" in r.text, r.text
        # A token narrower than the policy narrows it further.
        narrow = sdp_headers(token("expert", sub="exp", rooms="acc/or2"))
        r = await http.post(edge.whep("or1", "endoscope"), content=sdp, headers=narrow)
        assert r.status_code == 403 and "limited to rooms" in r.text, r.text
        r = await http.post(edge.whep("or1", "endoscope"), content=sdp, headers=student)
        assert r.status_code == 201, r.text
        assert r.headers["orstream-streams"] == "endoscope"
        await http.delete(edge.url + r.headers["location"])

        rooms = (await http.get(f"{edge.url}/api/v1/rooms", headers=student)).json()
        assert rooms["role"] == "student"
        assert rooms["rights"] == {
            "metadata": "basic+clean-descriptors",
            "annotate": False,
            "chat": True,
            "record": False,
        }
        assert [(r["room"], [s["stream"] for s in r["streams"]]) for r in rooms["rooms"]] == [
            ("or1", ["endoscope"])
        ]
        expert = sdp_headers(token("expert", sub="exp"))
        rooms = (await http.get(f"{edge.url}/api/v1/rooms", headers=expert)).json()
        assert [(r["room"], [s["stream"] for s in r["streams"]]) for r in rooms["rooms"]] == [
            ("or1", ["endoscope", "roomcam"]),
            ("or2", ["endoscope"]),
        ]
        assert all("study_uid" not in s for r in rooms["rooms"] for s in r["streams"])
        r = await http.get(f"{edge.url}/api/v1/rooms")
        assert r.status_code == 401
    records = await edge.audit_records(6)
    denials = [r for r in records if r.kind == "denial"]
    assert len(denials) == 3
    assert {d.requestor.user_id for d in denials if d.requestor} == {"stu", "exp"}
    assert all(d.outcome is audit.Outcome.MINOR_FAILURE for d in denials)
    sessions = [r for r in records if r.kind == "session"]
    assert len(sessions) == 2, "one start, one stop"


async def test_bad_offers_and_a_flood_are_refused(edge: Edge) -> None:
    sdp = await offer_sdp()
    expert = sdp_headers(token("expert", sub="flooder"))
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            edge.whep("or1", "endoscope"), content="v=0\r\n" + "a=x\r\n" * 20000, headers=expert
        )
        assert r.status_code == 413, r.text
        r = await http.post(edge.whep("or1", "endoscope"), content="v=0\r\nm=video", headers=expert)
        assert r.status_code == 400, r.text
        statuses = []
        for _ in range(BURST + 4):
            r = await http.post(edge.whep("or1", "endoscope"), content="v=0\r\n", headers=expert)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and "too many" in r.text
        assert 429 in statuses and statuses[0] == 400
        # Another identity is not held back by the flood.
        r = await http.post(
            edge.whep("or1", "endoscope"), content=sdp, headers=sdp_headers(token("ops"))
        )
        assert r.status_code == 201, r.text
        await http.delete(edge.url + r.headers["location"])
    records = await edge.audit_records(3)
    throttled = [
        r for r in records if r.kind == "denial" and "429" in (r.outcome_description or "")
    ]
    assert throttled, "a flood leaves a trace in the audit trail"


async def test_a_session_ends_when_its_token_expires(edge: Edge) -> None:
    async with Probe(edge.whep("or1", "endoscope"), token("expert", ttl=3, sub="brief")) as probe:
        assert edge.service.sessions and len(edge.service.sessions.sessions) == 1
        await asyncio.wait_for(probe.ended.wait(), 15)
    assert not edge.service.sessions.sessions
    records = await edge.audit_records(2)
    stops = [r for r in records if r.kind == "session" and r.event_types[0] == audit.SESSION_STOP]
    assert stops and "token expired" in (stops[0].outcome_description or "")


async def test_revocation_ends_sessions_at_once_and_refuses_the_token(edge: Edge) -> None:
    bearer = token("expert", sub="dr-revoked")
    other = token("expert", sub="dr-stays")
    async with (
        Probe(edge.whep("or1", "endoscope"), bearer) as revoked,
        Probe(edge.whep("or1", "endoscope"), other) as stays,
    ):
        await until(
            lambda: (
                revoked.pc.connectionState == "connected"
                and stays.pc.connectionState == "connected"
            ),
            15,
            "both peers connected",
        )
        started = time.monotonic()
        await publish_revocation(edge.bus, sub="dr-revoked", reason="badge lost")
        await asyncio.wait_for(revoked.ended.wait(), 5)
        assert time.monotonic() - started < 5
        assert not stays.ended.is_set()
        assert edge.service.sessions and len(edge.service.sessions.sessions) == 1
        with pytest.raises(WhepError) as refused:
            async with Probe(edge.whep("or1", "endoscope"), bearer):
                pass
        assert refused.value.status == 401 and "revoked" in refused.value.reason
    records = await edge.audit_records(4)
    stops = [r for r in records if r.kind == "session" and r.event_types[0] == audit.SESSION_STOP]
    assert any("badge lost" in (r.outcome_description or "") for r in stops)


async def test_annotations_travel_only_from_roles_that_may_annotate(edge: Edge) -> None:
    channels = ("annotations",)
    url = edge.whep("or1", "endoscope")
    async with (
        Probe(url, token("expert", sub="mentor"), channels=channels) as expert,
        Probe(url, token("student", sub="learner"), channels=channels) as student,
        Probe(url, token("surgeon", sub="wall"), channels=channels) as wall,
    ):
        probes = (expert, student, wall)
        await until(
            lambda: all(p.channels["annotations"].readyState == "open" for p in probes),
            15,
            "annotation channels open",
        )
        await asyncio.sleep(0.3)  # the edge attaches channels as they open
        stroke = {
            "type": "stroke",
            "stream": "endoscope",
            "points": [[0.1, 0.2], [0.3, 0.4]],
            "color": "#ff0000",
            "width": 0.01,
            "subject": "forged",
        }
        expert.channels["annotations"].send(json.dumps(stroke))
        await until(
            lambda: bool(wall.received["annotations"]) and bool(student.received["annotations"]),
            5,
            "the stroke at the wall display and the student",
        )
        at_wall = json.loads(wall.received["annotations"][0])
        assert at_wall["type"] == "stroke" and at_wall["subject"] == "mentor"
        assert at_wall["role"] == "expert" and at_wall["points"] == stroke["points"]
        assert not expert.received["annotations"], "no echo to the sender"

        wall.received["annotations"].clear()
        student.channels["annotations"].send(json.dumps({**stroke, "color": "#00ff00"}))
        student.channels["annotations"].send(json.dumps({"type": "chat", "text": "question"}))
        await until(
            lambda: any("error" in str(m) for m in student.received["annotations"]),
            5,
            "the student's refusal",
        )
        await until(lambda: bool(wall.received["annotations"]), 5, "the student's chat")
        arrived = [json.loads(m) for m in wall.received["annotations"]]
        assert [m["type"] for m in arrived] == ["chat"], "the student's stroke went nowhere"
        error = next(json.loads(m) for m in student.received["annotations"] if "error" in str(m))
        assert "may not annotate" in error["reason"]
    records = await edge.audit_records(7)
    refused = [r for r in records if r.kind == "denial"]
    assert len(refused) == 1 and refused[0].requestor and refused[0].requestor.user_id == "learner"


async def test_a_student_never_receives_an_identified_byte(edge: Edge) -> None:
    """Identified context goes in; the student's peer receives only the de-identified view, on
    every channel, while an expert in the same room sees the patient."""
    labels = ("metadata", "annotations", "stats")
    url = edge.whep("or1", "endoscope")
    async with (
        Probe(url, token("student", sub="learner"), channels=labels) as student,
        Probe(url, token("expert", sub="mentor"), channels=labels) as expert,
    ):
        await until(
            lambda: all(
                p.channels[label].readyState == "open"
                for p in (student, expert)
                for label in labels
            ),
            15,
            "all channels open",
        )
        await asyncio.sleep(0.3)
        for frame in range(3):
            meta = ContextMeta(
                stream=f"{SITE}.or1.endoscope", capture_ns=time.time_ns(), rtp_ts=frame, flow="f"
            )
            await edge.bus.publish(meta_in(SITE, "or1"), rtv_grain(frame), meta.to_headers())
        expert.channels["annotations"].send(
            json.dumps({"type": "pointer", "stream": "endoscope", "x": 0.5, "y": 0.5})
        )
        await until(
            lambda: len(student.metadata) >= 3 and len(expert.metadata) >= 3,
            15,
            "three datasets at both peers",
        )
        await until(lambda: bool(student.received["annotations"]), 5, "the pointer")
        await until(lambda: len(student.received["stats"]) >= 2, 5, "stats reports")
    everything = b"".join(
        m if isinstance(m, bytes) else m.encode()
        for messages in student.received.values()
        for m in messages
    )
    for value in IDENTIFYING:
        assert value.encode() not in everything, f"{value!r} reached the student"
    assert PATIENT_NAME.encode() in b"".join(
        m.encode() for m in expert.received["metadata"] if isinstance(m, str)
    )
    assert all(m.message["view"] == "basic+clean-descriptors" for m in student.metadata)
    stats = json.loads(student.received["stats"][-1])
    assert stats["type"] == "stats" and "endoscope" in stats["streams"]
    # The audit trail knows the patient only by pseudonym, the same one the student sees.
    records = await edge.audit_records(4)
    pseudonym = student.metadata[-1].dataset["00100020"]["Value"][0]
    stops = [r for r in records if r.kind == "session" and r.event_types[0] == audit.SESSION_STOP]
    assert {r.patient.object_id for r in stops if r.patient} == {pseudonym}
    trail = b"".join(r.to_xml() for r in records)
    for value in IDENTIFYING:
        assert value.encode() not in trail, f"{value!r} is in the audit trail"


async def test_a_room_session_carries_every_stream_the_role_may_see(edge: Edge) -> None:
    sdp2 = await offer_sdp(video=2)
    sdp3 = await offer_sdp(video=3)
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(edge.whep("or1"), content=sdp2, headers=sdp_headers(token("expert")))
        assert r.status_code == 201, r.text
        assert r.headers["orstream-streams"] == "endoscope,roomcam"
        assert r.text.count("m=video") == 2 and r.text.count("a=sendonly") == 2
        await http.delete(edge.url + r.headers["location"])
        # The student's room session holds only the stream its role may watch.
        r = await http.post(edge.whep("or1"), content=sdp2, headers=sdp_headers(token("student")))
        assert r.status_code == 400 and "has 2" in r.text, r.text
        r = await http.post(
            edge.whep("or1") + "?streams=roomcam",
            content=sdp2,
            headers=sdp_headers(token("student")),
        )
        assert r.status_code == 403, r.text
        r = await http.post(edge.whep("or1"), content=sdp3, headers=sdp_headers(token("expert")))
        assert r.status_code == 400 and "1 to 2 video m-lines" in r.text, r.text
        r = await http.post(edge.whep("or9"), content=sdp2, headers=sdp_headers(token("expert")))
        assert r.status_code == 404, r.text
