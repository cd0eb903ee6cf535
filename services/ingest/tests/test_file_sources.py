"""Files, DICOM multi-frame objects and FFmpeg inputs through the real ingest service."""

from __future__ import annotations

import asyncio
import itertools
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from orstream.common.messages import ContextMeta
from orstream.ingest.sources import SourceError, open_source

pytestmark = pytest.mark.integration


def _in_order(indices: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(indices))


async def test_a_file_plays_in_real_time_then_the_stream_stops(
    run_ingest, read_index, video_file: Path
) -> None:
    async with run_ingest(f"file:{video_file}", read_index) as run:
        await run.until(lambda: len(run.frames) >= 10, 10, "the first frames")
        first = run.frames[0][0].capture_ns
        await run.until(lambda: _state_is(run, "stopped"), 15, "the end of the file")
        d = await run.descriptor()
        assert d is not None
        assert (d.width, d.height, d.pix_fmt, d.reason) == (320, 240, "yuv420p", "source ended")
        assert round(d.fps) == 25
        indices = [i for _, i in run.frames]
        assert len(indices) == 50 and indices == list(range(50)), indices
        # Paced by its timestamps: 50 frames at 25 fps take ~2 s, not as fast as it decodes.
        span_s = (run.frames[-1][0].capture_ns - first) / 1e9
        assert 1.6 < span_s < 3.5, span_s


async def _state_is(run, state: str) -> bool:  # type: ignore[no-untyped-def]
    return await run.state() == state


async def test_a_looped_file_starts_over(run_ingest, read_index, video_file: Path) -> None:
    async with run_ingest(f"file:{video_file}?loop=1", read_index) as run:
        await run.until(lambda: len(run.frames) >= 60, 10, "frames past the end of the file")
        indices = [i for _, i in run.frames]
        restart = indices.index(0, 1)
        assert indices[:restart] == list(range(50)) and _in_order(indices[restart:])
        assert await run.state() == "live"
        assert run.service.stats(0)["counters"]["loops"] >= 1


async def test_an_ffmpeg_input_stands_in_for_a_capture_device(run_ingest) -> None:
    async with run_ingest("lavfi:testsrc2=size=320x240:rate=25") as run:
        await run.until(lambda: len(run.frames) >= 25, 10, "a second of frames")
        d = await run.descriptor()
        assert d is not None and (d.state.value, d.width, d.height) == ("live", 320, 240)
        seqs = [note.seq for note, _ in run.frames]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        span_s = (run.frames[24][0].capture_ns - run.frames[0][0].capture_ns) / 1e9
        assert 0.8 < span_s < 1.5, "paced at its frame rate"


@pytest.mark.parametrize("kind", ["native", "h264"])
async def test_a_dicom_multiframe_is_replayed_with_its_header_as_context(
    run_ingest, read_index, request: pytest.FixtureRequest, kind: str
) -> None:
    path: Path = request.getfixturevalue(f"dicom_{kind}")
    frames = 20 if kind == "native" else 25
    async with run_ingest(f"dicom:{path}", read_index) as run:
        await run.until(lambda: _state_is(run, "stopped"), 15, "the last frame")
        indices = [i for _, i in run.frames]
        assert indices == list(range(frames)), indices
        d = await run.descriptor()
        assert d is not None
        assert d.pix_fmt == ("rgb24" if kind == "native" else "yuv420p")
        assert (d.modality, d.study_uid) == ("ES", "1.2.826.0.1.3680043.8.498.1001")
        assert d.series_uid == "1.2.826.0.1.3680043.8.498.1002"
        span_s = (run.frames[-1][0].capture_ns - run.frames[0][0].capture_ns) / 1e9
        assert abs(span_s - (frames - 1) * 0.040) < 0.4, "replayed at its Frame Time"
    assert len(run.contexts) == 1
    headers, part10 = run.contexts[0]
    meta = ContextMeta.from_headers(headers)
    assert meta.stream == "ingsite.or1.cam"
    ds = pydicom.dcmread(BytesIO(part10))
    assert ds.PatientName == "Doe^Jane" and ds.NumberOfFrames == frames
    assert "PixelData" not in ds, "the context is the header, not the pictures"


def test_sources_that_cannot_be_opened_say_why(tmp_path: Path, dicom_native: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(f"file:{tmp_path}/missing.mp4")
    with pytest.raises(SourceError, match="supported: testpattern, sdp, file, dicom"):
        open_source("rtsp://camera.local/stream")
    not_dicom = tmp_path / "junk.dcm"
    not_dicom.write_bytes(b"\0" * 200)
    with pytest.raises(SourceError, match="cannot read DICOM object"):
        open_source(f"dicom:{not_dicom}")
    ds = pydicom.dcmread(dicom_native)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"  # JPEG-LS lossless
    ds["PixelData"].VR = "OB"
    jpegls = tmp_path / "jpegls.dcm"
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xd9"] * int(ds.NumberOfFrames))
    ds.save_as(jpegls, enforce_file_format=True)
    with pytest.raises(SourceError, match=r"JPEG-LS Lossless.*not supported; supported: native"):
        open_source(f"dicom:{jpegls}")
    with pytest.raises(SourceError, match=r"this PyAV build has no|cannot open"):
        open_source("v4l2:/dev/video99")


async def test_a_device_that_disappears_stalls_the_stream_until_it_is_back(
    nats_url: str, tmp_path: Path, video_file: Path
) -> None:
    """A live input whose node vanishes (a capture card unplugged): stalled, reopened, live."""
    import contextlib
    import shutil

    from orstream.common.bus import Bus
    from orstream.common.registry import Registry
    from orstream.common.runner import ServiceContext
    from orstream.ingest.avsource import AvSource
    from orstream.ingest.service import IngestService
    from orstream.ingest.settings import IngestSettings

    node = tmp_path / "video0.mp4"
    shutil.copy(video_file, node)
    device = AvSource(str(node), live=True, paced=True)
    settings = IngestSettings(nats_url=nats_url, site="devsite", stream="cam", stall_after_s=0.3)
    service = IngestService(settings, source=device)
    async with contextlib.AsyncExitStack() as stack:
        bus = await Bus.connect(nats_url, "ingest")
        stack.push_async_callback(bus.close)
        registry = await Registry.open(bus)
        await service.start(ServiceContext(settings=settings, bus=bus, stack=stack))

        async def state() -> str:
            d = await registry.get(service.stream)
            return d.state.value if d else ""

        async def wait_for(wanted: str, timeout_s: float) -> None:
            for _ in range(int(timeout_s / 0.05)):
                if await state() == wanted:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"state {await state()!r}, wanted {wanted!r}")

        await wait_for("live", 5)
        node.unlink()  # unplugged: the open input plays out, then reopening fails
        await wait_for("stalled", 6)
        d = await registry.get(service.stream)
        assert d is not None and "unavailable" in d.reason
        frames_before = service.counters.snapshot()["frames_out"]
        shutil.copy(video_file, node)  # plugged back in
        await wait_for("live", 8)
        await asyncio.sleep(0.3)
        assert service.counters.snapshot()["frames_out"] > frames_before
        assert service.stats(0)["counters"]["reopen_failures"] >= 1
