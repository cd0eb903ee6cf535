from __future__ import annotations

import asyncio
import io

import numpy as np
import pydicom
import pytest

from orstream.common import samples, timecode
from orstream.ingest.source import Context, RawFrame
from orstream.ingest.sources import SourceError, open_source
from orstream.ingest.testpattern import TestPattern


def _render(pattern: TestPattern, seq: int, capture_ns: int) -> np.ndarray:
    buf = bytearray(pattern.format.frame_bytes)
    assert pattern.render(seq, capture_ns, memoryview(buf)) == len(buf)
    return np.frombuffer(buf, dtype=np.uint8)


def test_frames_carry_their_timecode_and_move() -> None:
    pattern = TestPattern(1280, 720, 50)
    w, h = 1280, 720
    first = _render(pattern, 0, 1_000)
    later = _render(pattern, 25, 2_000)
    assert timecode.read(first[: w * h].reshape(h, w)) == timecode.Timecode(0, 1_000)
    assert timecode.read(later[: w * h].reshape(h, w)) == timecode.Timecode(25, 2_000)
    centre = (slice(300, 420), slice(580, 700))
    moved = np.abs(
        first[: w * h].reshape(h, w)[centre].astype(int) - later[: w * h].reshape(h, w)[centre]
    )
    assert moved.mean() > 5, "the tissue should have moved in half a second"


def test_endoscope_field_is_round_and_black_outside() -> None:
    pattern = TestPattern(1280, 720, 50)
    y = _render(pattern, 3, 0)[: 1280 * 720].reshape(720, 1280)
    assert y[700, 5] == 16 and y[360, 1275] == 16  # corners outside the scope's circle
    assert y[360, 640] > 16


def test_url_options_are_parsed() -> None:
    source = open_source("testpattern:?size=640x360&fps=25")
    assert (source.format.width, source.format.height, source.format.fps) == (640, 360, 25.0)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("nonsense", "not of the form"),
        ("rtsp://camera", "not supported"),
        ("testpattern:?size=100x100", "width a multiple of 16"),
        ("testpattern:?fps=1000", "out of 1..120"),
        ("testpattern:?size=abc", "testpattern"),
        ("testpattern:?context=real", "'demo' or 'none'"),
    ],
)
def test_bad_source_urls_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(SourceError, match=reason):
        open_source(url)


async def test_frames_are_paced_with_consecutive_seqs() -> None:
    pattern = TestPattern(320, 180, 10)  # 100 ms a frame: no skip-ahead on a busy machine
    seqs = []

    async def take() -> None:
        async for frame in pattern.frames(None):  # type: ignore[arg-type]
            seqs.append(frame.seq)
            if len(seqs) == 5:
                return

    await asyncio.wait_for(take(), 5)
    assert seqs == list(range(5))


async def test_demo_context_goes_with_the_frames_once_a_second() -> None:
    pattern = open_source("testpattern:?size=320x180&fps=10&context=demo")
    assert "demo context" in pattern.description
    events: list[object] = []

    async def take() -> None:
        async for event in pattern.frames(None):  # type: ignore[arg-type]
            events.append(event)
            if sum(isinstance(e, RawFrame) for e in events) == 13:
                return

    await asyncio.wait_for(take(), 5)
    contexts = [e for e in events if isinstance(e, Context)]
    # One dataset a second by the clock: frame 0, then frame 10 (11 if the clock is a hair short).
    assert [c.seq for c in contexts][:1] == [0] and contexts[1].seq in (10, 11), contexts
    ds = pydicom.dcmread(io.BytesIO(contexts[1].part10))
    assert ds.PatientName == samples.PATIENT_NAME
    assert ds.StudyInstanceUID == contexts[1].study_uid and contexts[1].modality == "ES"
    plain = open_source("testpattern:?size=320x180&fps=10")
    assert not getattr(plain, "demo_context", True)
