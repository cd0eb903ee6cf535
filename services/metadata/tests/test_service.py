"""The metadata service on a real NATS: each role's view of the OR's context on its own subject,
bad input refused and counted, a broken role withheld, REST intake guarded."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset

from orstream.common.bus import Bus
from orstream.common.messages import ContextMeta, RoleMeta
from orstream.common.runner import ServiceContext
from orstream.common.samples import IDENTIFYING, PATIENT_ID, PATIENT_NAME, or_context, rtv_grain
from orstream.common.subjects import meta_in
from orstream.metadata.service import MetadataService
from orstream.metadata.settings import MetadataSettings

pytestmark = pytest.mark.integration

SITE = "metasite"
API_KEY = "context-api-key-for-tests"


class Received:
    def __init__(self) -> None:
        self.by_role: dict[str, list[tuple[RoleMeta, bytes]]] = defaultdict(list)

    async def on_msg(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.by_role[msg.subject.rsplit(".", 1)[1]].append(
            (RoleMeta.from_headers(msg.headers), msg.data)
        )

    async def until(self, role: str, count: int, timeout_s: float = 5.0) -> None:
        for _ in range(int(timeout_s / 0.02)):
            if len(self.by_role[role]) >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{role}: {len(self.by_role[role])} of {count} datasets arrived")


@asynccontextmanager
async def running(
    nats_url: str, tmp_path: Path, policy: str | None = None
) -> AsyncIterator[tuple[MetadataService, Bus, Received]]:
    extra = {}
    if policy is not None:
        (tmp_path / "policy.yaml").write_text(policy)
        extra["policy_file"] = tmp_path / "policy.yaml"
    settings = MetadataSettings(
        nats_url=nats_url,
        site=SITE,
        state_dir=tmp_path,
        context_api_key=API_KEY,
        **extra,  # type: ignore[arg-type]
    )
    service = MetadataService(settings)
    received = Received()
    async with AsyncExitStack() as stack:
        observer = await Bus.connect(nats_url, "observer")
        stack.push_async_callback(observer.close)
        await observer.subscribe(f"or.{SITE}.*.meta.role.*", received.on_msg)
        bus = await Bus.connect(nats_url, "metadata")
        stack.push_async_callback(bus.close)
        await service.start(ServiceContext(settings=settings, bus=bus, stack=stack))
        assert service.ready()
        yield service, observer, received


async def publish_grain(bus: Bus, frame: int, data: bytes | None = None) -> None:
    meta = ContextMeta(stream=f"{SITE}.or1.cam", capture_ns=1, rtp_ts=frame, flow="flow-1")
    await bus.publish(meta_in(SITE, "or1"), data or rtv_grain(frame), meta.to_headers())


def model(payload: bytes) -> dict[str, dict[str, object]]:
    parsed: dict[str, dict[str, object]] = json.loads(payload)
    return parsed


def values(view: dict[str, dict[str, object]], tag: str) -> list[object]:
    found = view.get(tag, {}).get("Value", [])
    assert isinstance(found, list)
    return found


async def test_each_role_gets_its_own_view_on_its_own_subject(
    nats_url: str, tmp_path: Path
) -> None:
    async with running(nats_url, tmp_path) as (service, observer, received):
        for frame in range(3):
            await publish_grain(observer, frame)
        for role in ("surgeon", "expert", "student", "ops"):
            await received.until(role, 3)
        stats = service.stats(0)
    surgeon_meta, surgeon = received.by_role["surgeon"][0]
    assert surgeon_meta.view == "identified" and surgeon_meta.source == "rtv"
    assert surgeon_meta.stream == f"{SITE}.or1.cam"
    identified = model(surgeon)
    assert values(identified, "00100010") == [{"Alphabetic": PATIENT_NAME}]
    assert values(identified, "00100020") == [PATIENT_ID]
    assert received.by_role["expert"][0][1] == surgeon, "surgeon and expert share one view"
    student_meta, student = received.by_role["student"][0]
    assert student_meta.view == "basic+clean-descriptors"
    for value in IDENTIFYING:
        assert value.encode() not in student, f"{value!r} reached the student"
    deidentified = model(student)
    assert values(deidentified, "00120062") == ["YES"]
    assert [c["00080100"]["Value"] for c in values(deidentified, "00120064")] == [  # type: ignore[index]
        ["113100"],
        ["113105"],
    ]
    pseudonym = values(deidentified, "00100020")
    assert pseudonym and str(pseudonym[0]).startswith("ORS-")
    # The same patient keeps the same pseudonym and UIDs from frame to frame.
    later = model(received.by_role["student"][2][1])
    # Every role's message names the patient by that pseudonym (for the edge's audit records).
    assert {m.patient for msgs in received.by_role.values() for m, _ in msgs} == {pseudonym[0]}
    assert values(later, "00100020") == pseudonym
    assert values(later, "0020000D") == values(deidentified, "0020000D")
    ops = model(received.by_role["ops"][0][1])
    assert set(ops) <= {
        "00080016",
        "00080060",
        "00080070",
        "00081010",
        "00081090",
        "00181000",
        "00181020",
        "00280010",
        "00280011",
        "00120062",
        "00120063",
    }
    assert values(ops, "00080060") == ["ES"] and values(ops, "00280011") == [1920]
    assert stats["counters"]["published_student"] == 3
    assert stats["latency"]["n"] == 3


async def test_bad_context_is_counted_and_nothing_is_published(
    nats_url: str, tmp_path: Path
) -> None:
    good = rtv_grain(0)
    async with running(nats_url, tmp_path) as (service, observer, received):
        await observer.publish(meta_in(SITE, "or1"), b"garbage", {"Content-Type": "text/plain"})
        await publish_grain(observer, 1, b"\0" * 128 + b"DICM" + b"\x02\x00")  # truncated
        await publish_grain(observer, 2, good[:200])  # cut in the middle of group 0002
        await publish_grain(observer, 3, good[:-40])  # cut in the middle of the dataset
        await publish_grain(observer, 4, b"\0" * (300 * 1024))  # enormous
        await publish_grain(observer, 5)  # and the service still works
        await received.until("student", 1)
        await asyncio.sleep(0.3)
        counters = service.stats(0)["counters"]
    assert counters["context_rejected"] == 1
    assert counters["datasets_unreadable"] == 4
    for role in ("surgeon", "student", "ops"):
        assert len(received.by_role[role]) == 1, f"{role} saw a damaged dataset"
    assert values(model(received.by_role["surgeon"][0][1]), "00100020") == [PATIENT_ID]


async def test_a_role_whose_profile_is_broken_gets_nothing(nats_url: str, tmp_path: Path) -> None:
    policy = """
roles:
  expert: {rooms: ["*/*"], metadata: identified}
  student: {rooms: ["*/*"], metadata: "basic+retain-everything"}
"""
    async with running(nats_url, tmp_path, policy) as (service, observer, received):
        await publish_grain(observer, 0)
        await received.until("expert", 1)
        await asyncio.sleep(0.2)
        stats = service.stats(0)
    assert received.by_role["student"] == []
    assert stats["roles"] == {"expert": "identified", "student": None}
    assert stats["counters"]["withheld_student"] == 1


async def test_rest_intake(nats_url: str, tmp_path: Path) -> None:
    context = or_context(0)
    context.PatientName = "Postman^Pat"
    as_json = json.dumps(context.to_json_dict()).encode()
    async with running(nats_url, tmp_path) as (service, _, received):
        assert service.http is not None
        url = f"http://127.0.0.1:{service.http.port}/api/v1/rooms/{SITE}/or2/context"
        auth = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(timeout=5) as http:
            no_key = await http.post(url, content=as_json)
            wrong = await http.post(url, content=as_json, headers={"Authorization": "Bearer x"})
            kind = await http.post(url, content=b"x", headers=auth | {"Content-Type": "text/csv"})
            junk = await http.post(
                url, content=b"{not json", headers=auth | {"Content-Type": "application/dicom+json"}
            )
            wrong_vr = await http.post(
                url,
                content=b'{"00100010": {"vr": "US", "Value": ["Smith"]}}',
                headers=auth | {"Content-Type": "application/dicom+json"},
            )
            other_site = await http.post(
                url.replace(SITE, "elsewhere"),
                content=as_json,
                headers=auth | {"Content-Type": "application/dicom+json"},
            )
            ok = await http.post(
                url + "?stream=cam2",
                content=as_json,
                headers=auth | {"Content-Type": "application/dicom+json"},
            )
            part10 = await http.post(
                url, content=rtv_grain(1), headers=auth | {"Content-Type": "application/dicom"}
            )
        await received.until("student", 2)
    assert (no_key.status_code, wrong.status_code) == (401, 401)
    assert kind.status_code == 415 and "application/dicom" in kind.text
    assert junk.status_code == 400 and "not JSON" in junk.text
    assert wrong_vr.status_code == 400, wrong_vr.text
    assert other_site.status_code == 404
    assert ok.status_code == 202, ok.text
    assert ok.json()["roles"] == dict.fromkeys(("surgeon", "expert", "student", "ops"), "published")
    assert part10.status_code == 202
    meta, student = received.by_role["student"][0]
    assert (meta.source, meta.stream) == ("rest", "cam2")
    assert b"Postman" not in student
    assert values(model(received.by_role["expert"][0][1]), "00100010") == [
        {"Alphabetic": "Postman^Pat"}
    ]


async def test_rest_intake_is_off_without_a_key(nats_url: str, tmp_path: Path) -> None:
    settings = MetadataSettings(nats_url=nats_url, site=SITE, state_dir=tmp_path)
    service = MetadataService(settings)
    async with AsyncExitStack() as stack:
        bus = await Bus.connect(nats_url, "metadata")
        stack.push_async_callback(bus.close)
        await service.start(ServiceContext(settings=settings, bus=bus, stack=stack))
        assert service.http is not None
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.post(
                f"http://127.0.0.1:{service.http.port}/api/v1/rooms/{SITE}/or1/context",
                content=b"{}",
                headers={"Authorization": "Bearer anything"},
            )
    assert response.status_code == 503 and "ORSTREAM_CONTEXT_API_KEY" in response.text
    assert (tmp_path / "deid-key").stat().st_mode & 0o777 == 0o600


def test_unused_dataset_import_keeps_types_honest() -> None:
    assert isinstance(or_context(), Dataset)
