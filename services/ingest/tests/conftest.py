"""Run the real ingest service against a real NATS and watch what it publishes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orstream.common.bus import Bus
from orstream.common.messages import FrameReady, StreamDescriptor
from orstream.common.registry import Registry
from orstream.common.runner import ServiceContext
from orstream.common.shm import RingReader, SlotInfo
from orstream.common.subjects import StreamId, meta_in
from orstream.ingest.service import IngestService
from orstream.ingest.settings import IngestSettings

Consume = Callable[[memoryview, SlotInfo], Any]


def frame_index(view: memoryview, info: SlotInfo) -> int:
    """The index burned into a sample picture's top row (8 blocks of 16 px, black/white)."""
    data = np.frombuffer(view, dtype=np.uint8)
    if info.pix_fmt == "rgb24":
        top = data[: 16 * info.width * 3].reshape(16, info.width, 3)[..., 0]
    else:  # yuv420p / gray: the luma plane comes first
        top = data[: 16 * info.width].reshape(16, info.width)
    return sum(1 << bit for bit in range(8) if top[4:12, bit * 16 + 4 : bit * 16 + 12].mean() > 128)


@dataclass
class IngestRun:
    service: IngestService
    stream: StreamId
    registry: Registry
    frames: list[tuple[FrameReady, Any]] = field(default_factory=list)
    contexts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def descriptor(self) -> StreamDescriptor | None:
        return await self.registry.get(self.stream)

    async def until(
        self, check: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = check()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    async def state(self) -> str:
        d = await self.descriptor()
        return d.state.value if d else ""


@pytest.fixture
def run_ingest(nats_url: str) -> Callable[..., contextlib.AbstractAsyncContextManager[IngestRun]]:
    @contextlib.asynccontextmanager
    async def run(
        source: str,
        consume: Consume | None = None,
        stream: str = "cam",
        site: str = "ingsite",
        **extra: Any,
    ) -> AsyncIterator[IngestRun]:
        settings = IngestSettings(
            nats_url=nats_url, site=site, room="or1", stream=stream, source=source, **extra
        )
        service = IngestService(settings)
        observer = await Bus.connect(nats_url, "observer")
        registry = await Registry.open(observer)
        run = IngestRun(service, service.stream, registry)
        readers: dict[str, RingReader] = {}

        async def on_frame(msg: Any) -> None:
            note = FrameReady.decode(msg.data)
            value = None
            if consume is not None:
                reader = readers.get(note.ring) or readers.setdefault(
                    note.ring, RingReader.attach(note.ring)
                )
                value = reader.read(note.seq, consume)
            run.frames.append((note, value))

        async def on_context(msg: Any) -> None:
            run.contexts.append((dict(msg.headers or {}), msg.data))

        await observer.subscribe(service.stream.frame(), on_frame)
        await observer.subscribe(meta_in(site, "or1"), on_context)
        try:
            async with contextlib.AsyncExitStack() as stack:
                bus = await Bus.connect(nats_url, "ingest")
                stack.push_async_callback(bus.close)
                await service.start(ServiceContext(settings=settings, bus=bus, stack=stack))
                yield run
        finally:
            await observer.close()
            for reader in readers.values():
                reader.close()

    return run


@pytest.fixture
def read_index() -> Consume:
    """Reads the index a sample picture carries (see the root conftest's ``moving_picture``)."""
    return frame_index


# --- RFC 4175 senders the project did not write: GStreamer's rtpvrawpay -----------------------

GST_LAUNCH = shutil.which("gst-launch-1.0")
#: ST 2110-20 sampling/depth → GStreamer caps format.
GST_FORMATS = {("YCbCr-4:2:2", 8): "UYVY", ("YCbCr-4:2:2", 10): "UYVP"}
SENDER_SSRC = 0x2110


def require_gstreamer() -> str:
    if GST_LAUNCH is None:
        hint = (
            "apt-get install gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
        )
        if os.environ.get("CI"):
            pytest.fail(f"GStreamer is required in CI ({hint})")
        pytest.skip(f"GStreamer not installed ({hint})")
    return GST_LAUNCH


def st2110_sdp(
    port: int,
    width: int,
    height: int,
    fps: str,
    depth: int,
    address: str = "127.0.0.1",
    sources: tuple[str, ...] = (),
    metadata_port: int | None = None,
) -> str:
    """An SDP as an ST 2110 / DICOM-RTV sender publishes it (ST 2110-10 Annex B style)."""
    lines = [
        "v=0",
        "o=- 1443716955 1443716955 IN IP4 127.0.0.1",
        "s=OR camera 1",
        "t=0 0",
        f"m=video {port} RTP/AVP 96",
        f"c=IN IP4 {address}/32" if address.startswith("239.") else f"c=IN IP4 {address}",
    ]
    if sources:
        lines.append(f"a=source-filter: incl IN IP4 {address} {' '.join(sources)}")
    lines += [
        "a=rtpmap:96 raw/90000",
        f"a=fmtp:96 sampling=YCbCr-4:2:2; width={width}; height={height}; exactframerate={fps}; "
        f"depth={depth}; TCS=SDR; colorimetry=BT709; PM=2110GPM; SSN=ST2110-20:2017; TP=2110TPN;",
        "a=mediaclk:direct=0",
        "a=ts-refclk:localmac=00-00-00-00-00-00",
    ]
    if metadata_port is not None:
        lines += [
            f"m=application {metadata_port} RTP/AVP 104",
            f"c=IN IP4 {address}",
            "a=rtpmap:104 dicom/90000",
        ]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class GstFlow:
    """A finite RFC 4175 flow from GStreamer; ``sent`` holds each frame's bytes as sent."""

    frame_bytes: int
    raw_path: Path
    process: subprocess.Popen[bytes] | None = None

    def sent(self) -> list[bytes]:
        data = self.raw_path.read_bytes()
        return [data[i : i + self.frame_bytes] for i in range(0, len(data), self.frame_bytes)]

    async def wait(self, timeout_s: float = 60) -> None:
        assert self.process is not None
        rc = await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout_s)
        assert rc == 0, self.process.stderr.read().decode() if self.process.stderr else rc


@pytest.fixture
def gst_flow(tmp_path: Path) -> Iterator[Callable[..., GstFlow]]:
    """Starts ``gst-launch-1.0 videotestsrc ! rtpvrawpay ! udpsink`` (and saves what it sent)."""
    started: list[GstFlow] = []

    def start(
        port: int,
        width: int,
        height: int,
        fps: int,
        depth: int,
        frames: int,
        host: str = "127.0.0.1",
        pattern: str = "snow",
    ) -> GstFlow:
        gst = require_gstreamer()
        fmt = GST_FORMATS[("YCbCr-4:2:2", depth)]
        frame_bytes = width * height * (2 if depth == 8 else 5) // (1 if depth == 8 else 2)
        raw = tmp_path / f"sent-{len(started)}.raw"
        cmd = [
            gst, "-q",
            "videotestsrc", f"num-buffers={frames}", f"pattern={pattern}", "is-live=true", "!",
            f"video/x-raw,format={fmt},width={width},height={height},framerate={fps}/1", "!",
            "tee", "name=t",
            "t.", "!", "queue", "!", "filesink", f"location={raw}",
            "t.", "!", "queue", "!", "rtpvrawpay", "mtu=1400", f"ssrc={SENDER_SSRC}", "!",
            "udpsink", f"host={host}", f"port={port}", "sync=false",
        ]  # fmt: skip
        if host.startswith("239."):
            cmd += ["multicast-iface=lo", "bind-address=127.0.0.1"]
        flow = GstFlow(frame_bytes, raw)
        flow.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(flow)
        return flow

    yield start
    for flow in started:
        assert flow.process is not None
        if flow.process.poll() is None:
            flow.process.kill()
            flow.process.wait()
        if flow.process.stderr is not None:
            flow.process.stderr.close()


@pytest.fixture(name="st2110_sdp")
def st2110_sdp_fixture() -> Callable[..., str]:
    return st2110_sdp
