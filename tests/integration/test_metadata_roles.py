"""The OR's context reaches each viewer as their role allows: a real worklist SCP (DCMTK's
``wlmscpfs``) and a DICOM-RTV metadata flow go through ingest and the metadata service to the
edge, and a student and an expert receive different views on their ``metadata`` DataChannel."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig, StreamSpec
from orstream.common.samples import IDENTIFYING, PATIENT_ID, PATIENT_NAME, rtv_grain
from orstream.viewer.probe import MetadataMessage, Probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WIDTH, HEIGHT = 64, 16
FRAME_TICKS = 3600
WANDA = "WORKLIST^WANDA"
WANDA_ID = "WL-99812"


@pytest.fixture
def stack(
    nats_url: str,
    state_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    worklist: Any,
    st2110_sdp: Callable[..., str],
    rtv_sender: Callable[..., Any],
) -> Iterator[tuple[Stack, Any]]:
    today = datetime.date.today()
    for name, patient, patient_id, station in (
        ("wanda", WANDA, WANDA_ID, "OR1"),
        ("oliver", "OTHER^OLIVER", "WL-1", "OR2"),
    ):
        worklist.add_step(
            name,
            patient=patient,
            patient_id=patient_id,
            study_uid=f"1.2.826.0.1.3680043.10.543.{patient_id[-1]}",
            station=station,
            location=station,
            day=today,
        )
    port = worklist.start()
    monkeypatch.setenv(
        "ORSTREAM_WORKLIST",
        json.dumps(
            {
                "host": "127.0.0.1",
                "port": port,
                "called_ae": "WORKLIST",
                "interval_s": 1,
                "rooms": {"or1": {"station_ae": "OR1"}},
            }
        ),
    )
    video_port, metadata_port = udp_port(), udp_port()
    sdp = tmp_path / "endoscope.sdp"
    sdp.write_text(st2110_sdp(video_port, WIDTH, HEIGHT, "25", 8, metadata_port=metadata_port))
    sender = rtv_sender(video_port, metadata_port, width=WIDTH, height=HEIGHT)
    config = StackConfig(
        site=f"md{uuid.uuid4().hex[:6]}",
        streams=[StreamSpec("endoscope", f"sdp:{sdp}")],
        nats_url=nats_url,
        state_dir=state_dir,
        log_dir=tmp_path / "logs",
        ice_host_addresses=["127.0.0.1"],
        services=("metadata", "signaling", "ingest"),
    )
    with Stack(config) as s:
        yield s, sender


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _send(sender: Any, stop: asyncio.Event) -> None:
    """25 frames a second, each with its metadata grain, until told to stop (bounded: 60 s)."""
    for i in range(1500):
        if stop.is_set():
            return
        ts = 0x10000000 + i * FRAME_TICKS
        sender.frame(ts, luma=60 + i % 100)
        sender.grain(ts, rtv_grain(i))
        await asyncio.sleep(0.04)


def by_source(messages: list[MetadataMessage], source: str) -> list[MetadataMessage]:
    return [m for m in messages if m.message["source"] == source]


async def _until_both_sources(probe: Probe, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if by_source(probe.metadata, "rtv") and by_source(probe.metadata, "worklist"):
            return
        await asyncio.sleep(0.1)
    sources = {m.message["source"] for m in probe.metadata}
    raise AssertionError(f"metadata from rtv and worklist expected, got {sources or 'nothing'}")


def names(message: MetadataMessage) -> list[Any]:
    value: list[Any] = message.dataset.get("00100010", {}).get("Value", [])
    return value


async def test_student_and_expert_see_their_own_view_of_the_same_procedure(
    stack: tuple[Stack, Any],
) -> None:
    s, sender = stack
    site = s.config.site
    stop = asyncio.Event()
    sending = asyncio.create_task(_send(sender, stop))
    try:
        await _wait_live(s)
        expert_token = make_token("expert", [f"{site}/*"], subject="dr-expert")
        student_token = make_token("student", [f"{site}/*"], subject="student-1")
        async with (
            Probe(s.whep_url(), expert_token, metadata=True) as expert,
            Probe(s.whep_url(), student_token, metadata=True) as student,
        ):
            await asyncio.gather(_until_both_sources(expert), _until_both_sources(student))
            await asyncio.sleep(0.5)
            expert_messages, student_messages = list(expert.metadata), list(student.metadata)
    finally:
        stop.set()
        await sending
    # The expert sees who the patient is, from both sources.
    expert_rtv = by_source(expert_messages, "rtv")[-1]
    assert expert_rtv.message["view"] == "identified"
    assert names(expert_rtv) == [{"Alphabetic": PATIENT_NAME}]
    assert expert_rtv.dataset["00100020"]["Value"] == [PATIENT_ID]
    expert_worklist = by_source(expert_messages, "worklist")[-1]
    assert names(expert_worklist) == [{"Alphabetic": WANDA}]
    assert all(m.message["room"] == "or1" for m in expert_messages)
    # The student sees the procedure, not the patient: not one identifying value, anywhere.
    raw = json.dumps([m.message for m in student_messages])
    for value in (*IDENTIFYING, WANDA_ID, "WORKLIST", "WANDA", "OLIVER"):
        assert value not in raw, f"{value!r} reached the student"
    student_rtv = by_source(student_messages, "rtv")[-1]
    assert student_rtv.message["view"] == "basic+clean-descriptors"
    assert student_rtv.dataset["00120062"]["Value"] == ["YES"]
    assert student_rtv.dataset["00081030"]["Value"] == ["Laparoscopic cholecystectomy"]
    pseudonym = student_rtv.dataset["00100020"]["Value"][0]
    assert pseudonym.startswith("ORS-") and pseudonym != PATIENT_ID
    assert len(by_source(student_messages, "worklist")) >= 1
    # Per-frame context keeps flowing, in order, with its capture time.
    frames = [
        m.dataset["00060001"]["Value"][0]["00209111"]["Value"][0]["00209156"]["Value"][0]
        for m in by_source(student_messages, "rtv")
    ]
    assert len(frames) >= 5 and frames == sorted(frames)
    assert all(0 < m.latency_ms < 5000 for m in by_source(expert_messages, "rtv"))


async def _wait_live(s: Stack, timeout_s: float = 20) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        token = make_token("ops", [f"{s.config.site}/*"])
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(
                    f"{s.edge_url}/api/v1/streams", headers={"Authorization": f"Bearer {token}"}
                )
                if any(x["state"] == "live" for x in response.json().get("streams", [])):
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("the stream never became live")
