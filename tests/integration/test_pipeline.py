"""The whole data path with every service as its own process, on a real nats-server:
ingest → shm ring → encoder → NATS → edge → WebRTC → probe, decoded and timecode-checked.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig
from orstream.common.messages import FrameReady
from orstream.common.shm import SHM_DIR
from orstream.viewer.probe import Probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def stack(nats_url: str, state_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    config = StackConfig(
        site=f"it{uuid.uuid4().hex[:6]}",
        source="testpattern:?size=640x360&fps=25",
        nats_url=nats_url,
        state_dir=state_dir,
        log_dir=tmp_path / "logs",
        ice_host_addresses=["127.0.0.1"],
        services=("ingest", "encoder", "signaling"),
    )
    with Stack(config) as s:
        yield s
    assert not (SHM_DIR / s.stream.ring_name).exists(), "ingest left its ring behind"


def _token(stack: Stack) -> str:
    return make_token("surgeon", [f"{stack.config.site}/*"])


async def test_decoded_frames_arrive_in_order_with_the_timecodes_sent(
    stack: Stack, state_dir: Path
) -> None:
    sent: dict[int, int] = {}
    nc = await nats.connect(stack.nats_url)

    async def on_frame(msg: nats.aio.msg.Msg) -> None:
        note = FrameReady.decode(msg.data)
        sent[note.seq] = note.capture_ns

    await nc.subscribe(stack.stream.frame(), cb=on_frame)
    try:
        async with Probe(stack.whep_url(), _token(stack)) as probe:
            result = await probe.measure(seconds=6.0)
            await _picture_loss_becomes_one_keyframe_request(stack, probe)
    finally:
        await nc.drain()

    samples = result.samples
    assert len(samples) >= 75, f"expected ~6 s of 25 fps, got {len(samples)} readable frames"
    assert result.frames_unreadable == 0
    seqs = [s.seq for s in samples]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "frames out of order or repeated"
    unknown = [s for s in samples if sent.get(s.seq) != s.capture_ns]
    assert not unknown, f"timecodes that ingest never sent: {unknown[:3]}"
    span = seqs[-1] - seqs[0] + 1
    assert len(seqs) / span > 0.9, f"only {len(seqs)} of {span} frames arrived"
    assert all(s.received_ns > s.capture_ns for s in samples)


async def _picture_loss_becomes_one_keyframe_request(stack: Stack, probe: Probe) -> None:
    """Three PLIs in a burst from the peer → one ``.keyframe`` request → one forced IDR."""
    before_edge = stack.stats("signaling")["counters"]
    before_encoder = stack.stats("encoder")["counters"]
    stats = await probe.pc.getStats()
    ssrc = next(s.ssrc for s in stats.values() if s.type == "inbound-rtp")
    receiver = probe.pc.getReceivers()[0]
    for _ in range(3):
        await receiver._send_rtcp_pli(ssrc)  # what aiortc sends when its decoder loses the picture
    await probe.measure(seconds=1.0)
    edge = stack.stats("signaling")["counters"]
    encoder = stack.stats("encoder")["counters"]
    assert edge["keyframe_requests"] - before_edge["keyframe_requests"] == 1
    assert (
        edge.get("keyframe_requests_coalesced", 0)
        - before_edge.get("keyframe_requests_coalesced", 0)
        == 2
    )
    assert encoder["keyframes_forced"] - before_encoder["keyframes_forced"] == 1


async def test_a_vanished_peer_is_reaped_and_others_keep_playing(
    stack: Stack, state_dir: Path
) -> None:
    token = _token(stack)
    async with Probe(stack.whep_url(), token) as steady:
        await steady.measure(seconds=1.0)
        doomed = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orstream.viewer.probe",
                stack.whep_url(),
                "--token",
                token,
                "--seconds",
                "120",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await _until(
                lambda: stack.stats("signaling")["sessions"] == 2, 20, "second peer never joined"
            )
            await asyncio.sleep(1.0)
            doomed.send_signal(signal.SIGKILL)  # no DELETE, no DTLS close: it just vanishes
            doomed.wait(10)
            before = len(steady.result.samples)
            # meanwhile a malformed offer is refused and disturbs nobody
            async with httpx.AsyncClient() as http:
                r = await http.post(
                    stack.whep_url(),
                    content="v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
                    headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 400, r.text
                r = await http.post(
                    stack.whep_url().replace(stack.stream.stream, "nosuchstream"),
                    content="v=0",
                    headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 404 and "not live" in r.text
            deadline = time.monotonic() + 75
            while stack.stats("signaling")["sessions"] != 1:
                assert time.monotonic() < deadline, "the vanished peer was never reaped"
                await steady.measure(seconds=1.0)
            await steady.measure(seconds=2.0)
        finally:
            if doomed.poll() is None:
                doomed.kill()
        assert len(steady.result.samples) - before >= 40, (
            "the steady peer stalled while the other vanished"
        )
    counters = stack.stats("signaling")["counters"]
    assert (
        counters.get("peer_connections_failed", 0) + counters.get("peer_connections_closed", 0) >= 1
    )


async def _until(check, timeout_s: float, message: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.2)


def test_stack_stops_cleanly_on_sigterm(nats_url: str, state_dir: Path, tmp_path: Path) -> None:
    stack = Stack(
        StackConfig(
            site=f"it{uuid.uuid4().hex[:6]}",
            nats_url=nats_url,
            state_dir=state_dir,
            log_dir=tmp_path / "logs",
        )
    )
    stack.start()
    pids = [p.popen.pid for p in stack.processes]
    assert len(pids) == 5
    ring = SHM_DIR / stack.stream.ring_name
    assert ring.exists()
    stack.stop()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), (
            f"process {pid} outlived the stack"
        )
    assert not ring.exists()
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert "Traceback" not in logs, logs[-3000:]
    for name in ("ingest", "encoder", "metadata", "signaling", "viewer"):
        assert f"{name} stopped" in logs, f"{name} did not shut down gracefully"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
