"""The probe's jitter buffer completes a frame at its marker packet, as a browser does."""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from orstream.viewer.probe import MarkerJitterBuffer


def _packet(seq: int, ts: int, marker: bool, data: bytes) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, marker=int(marker))
    p._data = data  # type: ignore[attr-defined]  # what aiortc's depayloader sets
    return p


def test_frame_is_complete_at_the_marker_packet() -> None:
    jb = MarkerJitterBuffer(capacity=128, is_video=True)
    assert jb.add(_packet(100, 9000, False, b"a"))[1] is None
    assert jb.add(_packet(101, 9000, False, b"b"))[1] is None
    frame = jb.add(_packet(102, 9000, True, b"c"))[1]
    assert frame is not None
    assert (frame.data, frame.timestamp) == (b"abc", 9000)
    frame = jb.add(_packet(103, 10800, True, b"d"))[1]
    assert frame is not None
    assert (frame.data, frame.timestamp) == (b"d", 10800)


def test_a_gap_holds_the_frame_back() -> None:
    jb = MarkerJitterBuffer(capacity=128, is_video=True)
    jb.add(_packet(200, 1, False, b"a"))
    assert jb.add(_packet(202, 1, True, b"c"))[1] is None  # 201 missing: not complete
    frame = jb.add(_packet(201, 1, False, b"b"))[1]
    assert frame is not None
    assert frame.data == b"abc"
