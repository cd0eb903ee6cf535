"""Encoder replicas on a real nats-server, each service its own process: streams shared between
replicas, a killed replica's streams taken over while a viewer keeps playing, keyframes on
request, renditions encoded only while watched, and bad input kept to the stream it concerns."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import nats
import pytest
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig, StreamSpec
from orstream.common.bus import Bus
from orstream.common.messages import (
    AccessUnitMeta,
    EncoderClaim,
    FrameReady,
    Interest,
    StreamDescriptor,
)
from orstream.common.registry import Registry
from orstream.common.shm import RingWriter
from orstream.common.subjects import ENCODER_BUCKET, StreamId
from orstream.viewer.probe import Probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SOURCE = "testpattern:?size=640x360&fps=25"


def _config(
    nats_url: str, state_dir: Path, tmp_path: Path, streams: int, encoders: int
) -> StackConfig:
    return StackConfig(
        site=f"enc{uuid.uuid4().hex[:6]}",
        streams=[StreamSpec(f"cam{i}", SOURCE) for i in range(1, streams + 1)],
        nats_url=nats_url,
        state_dir=state_dir,
        log_dir=tmp_path / "logs",
        ice_host_addresses=["127.0.0.1"],
        services=("ingest", "encoder", "signaling"),
        encoders=encoders,
    )


async def _until(check: Callable[[], Any], timeout_s: float, message: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.1)


def _streams_of(stack: Stack, replica: str) -> set[str]:
    try:
        return set(stack.stats(replica)["streams"])
    except OSError:
        return set()


async def _holder(kv: KeyValue, stream: StreamId) -> str:
    try:
        entry = await kv.get(stream.claim_key)
    except KeyNotFoundError:
        return ""
    return EncoderClaim.decode(entry.value).replica if entry.value else ""


async def _worker_up(
    stack: Stack, stream: StreamId | None = None, replica: str = "encoder"
) -> None:
    key = str(stream or stack.stream)
    await _until(
        lambda: stack.stats(replica)["streams"].get(key, {}).get("up"),
        30,
        f"no worker for {key} came up",
    )


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


async def test_two_replicas_share_four_streams_and_one_takes_over_when_the_other_dies(
    nats_url: str, state_dir: Path, tmp_path: Path
) -> None:
    with Stack(_config(nats_url, state_dir, tmp_path, streams=4, encoders=2)) as stack:
        every = {str(s) for s in stack.streams}
        await _until(
            lambda: (
                len(_streams_of(stack, "encoder-1")) == 2
                and len(_streams_of(stack, "encoder-2")) == 2
            ),
            30,
            "the replicas never settled on two streams each",
        )
        first, second = _streams_of(stack, "encoder-1"), _streams_of(stack, "encoder-2")
        assert first | second == every and not first & second
        doomed_workers = [e["pid"] for e in stack.stats("encoder-1")["streams"].values()]
        watched = next(s for s in stack.streams if str(s) in first)

        token = make_token("surgeon", [f"{stack.config.site}/*"])
        async with Probe(stack.whep_url(watched), token) as probe:
            before = await probe.measure(seconds=3.0)
            assert len(before.samples) >= 50, "the viewer did not play before the failover"
            replica = next(p for p in stack.processes if p.name == "encoder-1")
            killed_ns = time.time_ns()
            bus = await Bus.connect(stack.nats_url, "failover-test")
            kv = await bus.key_value(ENCODER_BUCKET)
            replica.popen.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            try:
                for _ in range(300):  # the claims themselves, not stats (workers still starting)
                    holders = [await _holder(kv, s) for s in stack.streams]
                    if holders == ["encoder-2"] * 4:
                        break
                    await asyncio.sleep(0.05)
                took_over_s = time.monotonic() - killed
            finally:
                await bus.close()
            assert holders == ["encoder-2"] * 4, f"claims after 15 s: {holders}"
            await _until(
                lambda: _streams_of(stack, "encoder-2") == every,
                10,
                "the surviving replica does not run workers for the streams it took",
            )
            after = await probe.measure(seconds=6.0)

        around = sorted(
            (s for s in after.samples if s.capture_ns > killed_ns - 1_000_000_000),
            key=lambda s: s.seq,
        )
        outage_s, lost, resumed_at = max(
            ((b.capture_ns - a.capture_ns) / 1e9, b.seq - a.seq - 1, b.capture_ns)
            for a, b in itertools.pairwise(around)
        )
        resumed = [s for s in around if s.capture_ns >= resumed_at]
        print(f"take-over {took_over_s:.2f} s; no picture for {outage_s:.2f} s, {lost} frames lost")
        assert len(resumed) >= 25, "the viewer did not get video again after the take-over"
        assert outage_s < 8.0, f"the viewer saw no new frame for {outage_s:.1f} s"
        assert took_over_s < 3.0, f"streams re-claimed only after {took_over_s:.1f} s"
        counters = stack.stats("encoder-2")["counters"]
        assert counters["claims_taken"] >= 4
        await _until(
            lambda: not any(_alive(pid) for pid in doomed_workers),
            5,
            "the dead replica's workers outlived it",
        )


@pytest.fixture
def one_stream(
    nats_url: str, state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    monkeypatch.setenv(
        "ORSTREAM_RENDITIONS",
        '[{"name": "src"}, {"name": "180p", "height": 180, "bitrate_bps": 300000}]',
    )
    with Stack(_config(nats_url, state_dir, tmp_path, streams=1, encoders=1)) as stack:
        asyncio.run(_worker_up(stack))
        yield stack


class Watcher:
    """A test-side watcher: announces interest and collects the access units that arrive."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.stream = stack.stream
        self.units: dict[str, list[tuple[float, AccessUnitMeta, bytes]]] = {}
        self.nc: nats.NATS | None = None

    async def __aenter__(self) -> Watcher:
        self.nc = await nats.connect(self.stack.nats_url)

        async def on_au(msg: Msg) -> None:
            rendition = msg.subject.rsplit(".", 1)[1]
            meta = AccessUnitMeta.from_headers(msg.headers)
            self.units.setdefault(rendition, []).append((time.monotonic(), meta, msg.data))

        await self.nc.subscribe(f"{self.stream.encoded('src')[:-4]}.>", cb=on_au)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.nc is not None
        await self.nc.close()

    async def want(self, renditions: dict[str, int], seconds: float) -> None:
        assert self.nc is not None
        for _ in range(max(1, round(seconds / 0.5))):
            await self.nc.publish(
                self.stream.interest(), Interest("test-watcher", renditions).encode()
            )
            await asyncio.sleep(0.5)

    def count(self, rendition: str, since: float = 0.0) -> int:
        return sum(1 for t, _, _ in self.units.get(rendition, []) if t >= since)


async def test_a_keyframe_request_yields_an_idr_within_200_ms(one_stream: Stack) -> None:
    async with Watcher(one_stream) as w:
        await w.want({"src": 0}, seconds=3.0)
        assert w.count("src") > 10, "the watched source rendition is not encoded"
        assert w.nc is not None
        delays = []
        for _ in range(5):
            await w.want({"src": 0}, seconds=0.5)  # past the periodic IDR's pull, keep watching
            asked = time.monotonic()
            await w.nc.publish(w.stream.keyframe(), b"")
            await w.want({"src": 0}, seconds=0.5)
            keys = [t for t, meta, _ in w.units["src"] if meta.key and t > asked]
            assert keys, "no IDR after the request"
            delays.append((keys[0] - asked) * 1000)
        print(f"IDR after a request: {[round(d, 1) for d in delays]} ms")
        assert max(delays) < 200, delays
        # a burst of requests inside one frame interval makes one forced IDR
        forced = one_stream.stats("encoder")["counters"]["keyframes_forced"]
        for _ in range(10):
            await w.nc.publish(w.stream.keyframe(), b"")
        await w.want({"src": 0}, seconds=0.5)
        assert one_stream.stats("encoder")["counters"]["keyframes_forced"] - forced == 1


async def test_an_unwatched_rendition_is_not_encoded(one_stream: Stack) -> None:
    await asyncio.sleep(1.5)
    counters = one_stream.stats("encoder")["counters"]
    assert counters.get("access_units_out", 0) == 0, "encoded with nobody watching"
    assert counters["frames_unwatched"] > 10
    async with Watcher(one_stream) as w:
        await w.want({"src": 0}, seconds=2.0)
        assert w.count("src") > 20
        assert w.count("180p") == 0, "the 180p layer was encoded though nobody watched it"

        await w.want({"src": 0, "180p": 0}, seconds=2.0)
        layer = w.units.get("180p", [])
        assert len(layer) > 20, "the 180p layer did not start when watched"
        first_key = next(data for _, meta, data in layer if meta.key)
        decoder = av.CodecContext.create("h264", "r")
        frames = decoder.decode(av.Packet(first_key))
        assert frames and (frames[0].width, frames[0].height) == (320, 180)
        rendition = one_stream.stats("encoder")["streams"][str(w.stream)]["renditions"]["180p"]
        assert rendition["active"] and rendition["size"] == "320x180"

        assert w.nc is not None
        await w.nc.publish(w.stream.interest(), Interest("test-watcher", {"src": 0}).encode())
        await w.want({"src": 0}, seconds=1.0)
        stopped = time.monotonic()
        await w.want({"src": 0}, seconds=1.5)
        assert w.count("180p", since=stopped) == 0, "180p still encoded after its watcher left"
        assert w.count("src", since=stopped) > 20, "src stopped with it"

        await w.nc.publish(w.stream.interest(), Interest("test-watcher", {}).encode())
        await asyncio.sleep(1.0)
        gone = time.monotonic()
        await asyncio.sleep(1.0)
        assert w.count("src", since=gone) == 0, "encoding went on with no watcher at all"


async def test_bad_input_is_counted_and_other_streams_go_on(
    nats_url: str, state_dir: Path, tmp_path: Path
) -> None:
    with Stack(_config(nats_url, state_dir, tmp_path, streams=1, encoders=1)) as stack:
        good = stack.stream
        bad = StreamId(good.site, good.room, "p010cam")
        bus = await Bus.connect(stack.nats_url, "bad-input-test")
        ring = RingWriter.create(bad.ring_name, 640 * 360 * 3)
        try:
            registry = await Registry.open(bus)
            await registry.announce(
                StreamDescriptor(
                    site=bad.site,
                    room=bad.room,
                    stream=bad.stream,
                    source="test",
                    width=640,
                    height=360,
                    fps=25.0,
                    pix_fmt="p010le",
                    ring=bad.ring_name,
                    state="live",
                )
            )
            await _worker_up(stack)
            refused = await _until(
                lambda: stack.stats("encoder")["streams"].get(str(bad), {}).get("refused"),
                20,
                "a stream the encoder cannot encode was not refused",
            )
            assert "p010le" in refused

            async with Watcher(stack) as w:
                await w.want({"src": 0}, seconds=2.0)
                assert w.nc is not None
                forged = FrameReady(good.ring_name, 0, 10**9, 1920, 1080, "yuv420p", 1, 1)
                for _ in range(5):
                    await w.nc.publish(good.frame(), forged.encode())
                    await asyncio.sleep(0.1)
                await w.nc.publish(good.frame(), b"\x93not a frame")
                since = time.monotonic()
                await w.want({"src": 0}, seconds=2.0)
                assert w.count("src", since=since) > 30, "the good stream stalled"
            stats = stack.stats("encoder")
            counters = stats["counters"]
            assert counters["frames_format_mismatch"] >= 1
            assert counters["notifications_malformed"] >= 1
            assert counters["workers_refused"] >= 1
            assert stats["streams"][str(good)]["starts"] == 1, "the good stream's worker restarted"
        finally:
            ring.close()
            await bus.close()
        logs = (tmp_path / "logs" / "encoder.log").read_text()
        assert "cannot be encoded" in logs and "registry says" in logs


async def test_a_crashed_worker_is_restarted(
    nats_url: str, state_dir: Path, tmp_path: Path
) -> None:
    with Stack(_config(nats_url, state_dir, tmp_path, streams=1, encoders=1)) as stack:
        key = str(stack.stream)
        pid = await _until(
            lambda: stack.stats("encoder")["streams"].get(key, {}).get("pid"), 20, "no worker"
        )
        os.kill(pid, signal.SIGKILL)
        entry = await _until(
            lambda: (
                (e := stack.stats("encoder")["streams"].get(key, {})).get("pid") not in (None, pid)
                and e.get("up")
                and e
            ),
            15,
            "the killed worker was not restarted",
        )
        assert entry["starts"] == 2
        assert stack.stats("encoder")["counters"]["worker_restarts"] == 1
        async with Watcher(stack) as w:
            await w.want({"src": 0}, seconds=2.0)
            assert w.count("src") > 20, "the restarted worker does not encode"
