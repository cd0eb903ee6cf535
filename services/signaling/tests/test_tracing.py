"""The edge's spans of a sampled AU, and the viewer's receipt that ends its trace."""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orstream.common.messages import AccessUnitMeta
from orstream.common.telemetry import HopLatency
from orstream.signaling import tracing
from orstream.signaling.tracing import FrameTrace, ReceiptTraces

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _exporter(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    return exporter


def _meta(seq: int, traceparent: str | None, now: int) -> AccessUnitMeta:
    return AccessUnitMeta(
        seq, 0, True, "h264", now - 30_000_000, now - 20_000_000, now - 1_000_000, traceparent
    )


def test_only_sampled_aus_get_spans_and_the_receipt_closes_the_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = _exporter(monkeypatch)
    now = time.time_ns()
    assert FrameTrace.of(_meta(1, None, now), now, {}) is None
    frame = FrameTrace.of(_meta(2, PARENT, now), now, {"stream": "cam"})
    assert frame is not None
    frame.sent(now + 2_000_000, peers_sent=3, peers_dropped=1)
    viewer = HopLatency("viewer")
    receipts = ReceiptTraces("abcd1234", "student")
    receipts.sent("cam", 2, frame, now + 2_000_000, now - 30_000_000, viewer)
    assert receipts.received("cam", 2, now + 12_000_000)
    assert not receipts.received("cam", 2, now + 12_000_000), "answered once"
    spans = {s.name: s for s in exporter.get_finished_spans()}
    receive, send, receipt = spans["edge.receive"], spans["edge.send"], spans["viewer.receipt"]
    assert format(receive.parent.span_id, "016x") == PARENT.split("-")[2]
    assert receive.context.trace_id == int(PARENT.split("-")[1], 16)
    assert send.parent.span_id == receive.context.span_id
    assert receipt.parent.span_id == send.context.span_id
    assert send.attributes["orstream.peers.sent"] == 3
    assert receipt.attributes["orstream.glass_to_glass_ms"] == 42.0
    assert viewer.summary()["p50"] == 10.0


def test_a_peer_cannot_put_implausible_times_into_the_viewer_hop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _exporter(monkeypatch)
    now = time.time_ns()
    viewer = HopLatency("viewer")
    receipts = ReceiptTraces("s", "student")
    for seq in (1, 2, 3):
        frame = FrameTrace.of(_meta(seq, PARENT, now), now, {})
        assert frame is not None
        receipts.sent("cam", seq, frame, now, now - 30_000_000, viewer)
    assert not receipts.received("cam", 1, now + 10**17), "far in the future"
    assert not receipts.received("cam", 9, now + 1_000_000), "never asked about"
    assert not receipts.received("other", 2, now + 1_000_000), "another stream's frame"
    assert receipts.received("cam", 3, now - 5_000_000)  # the peer's clock is behind: no sample
    assert viewer.summary()["n"] == 0


def test_the_awaited_frames_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    _exporter(monkeypatch)
    now = time.time_ns()
    receipts = ReceiptTraces("s", "student")
    viewer = HopLatency("viewer")
    for seq in range(tracing.PENDING_LIMIT + 10):
        frame = FrameTrace.of(_meta(seq, PARENT, now), now, {})
        assert frame is not None
        receipts.sent("cam", seq, frame, now, now, viewer)
    assert not receipts.received("cam", 0, now + 1_000_000), "the oldest were forgotten"
    assert receipts.received("cam", tracing.PENDING_LIMIT + 9, now + 1_000_000)
