from __future__ import annotations

import pytest

from orstream.common.messages import (
    AccessUnitMeta,
    FrameReady,
    MessageError,
    StreamDescriptor,
    StreamState,
)
from orstream.common.subjects import StreamId, meta_role


def test_frame_notification_round_trips() -> None:
    note = FrameReady("orstream-a-b-c", 3, 11, 1280, 720, "yuv420p", 10, 12)
    assert FrameReady.decode(note.encode()) == note


@pytest.mark.parametrize("data", [b"", b"\x93\x01", b"not msgpack at all", b"\x98" + b"\x01" * 8])
def test_malformed_frame_notification_is_a_message_error(data: bytes) -> None:
    with pytest.raises(MessageError):
        FrameReady.decode(data)


def test_access_unit_headers_round_trip() -> None:
    meta = AccessUnitMeta(
        seq=1,
        pts=90_000,
        key=True,
        codec="h264",
        capture_ns=5,
        notified_ns=6,
        published_ns=7,
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    )
    assert AccessUnitMeta.from_headers(meta.to_headers()) == meta


@pytest.mark.parametrize(
    "headers", [None, {}, {"Orstream-Seq": "x"}, {"Orstream-Seq": "1", "Orstream-Pts": "2"}]
)
def test_malformed_access_unit_headers_are_a_message_error(headers: dict[str, str] | None) -> None:
    with pytest.raises(MessageError):
        AccessUnitMeta.from_headers(headers)


def test_descriptor_round_trips_and_rejects_garbage() -> None:
    d = StreamDescriptor(
        site="s",
        room="r",
        stream="x",
        source="testpattern:",
        width=1,
        height=2,
        fps=50.0,
        pix_fmt="yuv420p",
        ring="orstream-s-r-x",
        state=StreamState.LIVE,
    )
    assert StreamDescriptor.decode(d.encode()) == d
    with pytest.raises(MessageError):
        StreamDescriptor.decode(b'{"site": 1}')


def test_subjects_follow_the_design() -> None:
    s = StreamId("site1", "or-3", "endo_1")
    assert s.frame() == "or.site1.or-3.endo_1.frame"
    assert s.encoded() == "or.site1.or-3.endo_1.enc.src"
    assert s.keyframe() == "or.site1.or-3.endo_1.keyframe"
    assert StreamId.parse(s.key) == s
    assert meta_role("site1", "or-3", "student") == "or.site1.or-3.meta.role.student"


@pytest.mark.parametrize("bad", ["a.b", "a b", "", "*", ">", "a/b"])
def test_subject_tokens_cannot_inject_wildcards(bad: str) -> None:
    with pytest.raises(ValueError, match="must match"):
        StreamId("site1", bad, "x")
