"""A sampled frame's trace at the edge, and its last span from the viewer's receipt.

The encoder puts ``traceparent`` only on the AUs of frames ingest sampled, so the edge makes
spans for those alone (no per-frame cost for the rest)::

    encoder.publish ─► edge.receive (published → received) ─► edge.send (received → last RTP
    packet to the last peer; one summary span, peers sent/dropped as attributes)
      ─► viewer.receipt (sent to this peer → the peer decoded or displayed it; one per peer)

For ``viewer.receipt`` the edge asks each peer that has a ``stats`` channel about the frame
(``{"type": "trace", "stream", "seq"}``); the peer answers in its receipt's ``traced`` list with
when it presented that frame (its wall clock, so the span is as good as the clocks agree).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from opentelemetry import propagate, trace
from opentelemetry.context import Context

from orstream.common.messages import TRACEPARENT, AccessUnitMeta
from orstream.common.observability import HOP_EDGE_RECEIVE, HOP_EDGE_SEND, SPAN_VIEWER_RECEIPT
from orstream.common.telemetry import HopLatency

tracer = trace.get_tracer("orstream.signaling")

#: Traced frames a session waits for a receipt of; older ones are forgotten first.
PENDING_LIMIT = 32
#: A receipt later than this after the frame was sent is not matched (the frame was lost).
RECEIPT_WAIT_NS = 10_000_000_000
#: A peer's clock may run this far ahead of ours before its answer is refused as implausible.
CLOCK_AHEAD_NS = 1_000_000_000


class FrameTrace:
    """One sampled AU's spans at the edge."""

    __slots__ = ("received_ns", "send", "send_context")

    def __init__(self, meta: AccessUnitMeta, received_ns: int, attributes: dict[str, str]) -> None:
        self.received_ns = received_ns
        parent = propagate.extract({TRACEPARENT: meta.traceparent or ""})
        receive = tracer.start_span(
            HOP_EDGE_RECEIVE, context=parent, start_time=meta.published_ns, attributes=attributes
        )
        receive.set_attribute("orstream.seq", meta.seq)
        receive.end(received_ns)
        self.send = tracer.start_span(
            HOP_EDGE_SEND,
            context=trace.set_span_in_context(receive),
            start_time=received_ns,
            attributes=attributes,
        )
        self.send_context: Context = trace.set_span_in_context(self.send)

    @classmethod
    def of(
        cls, meta: AccessUnitMeta, received_ns: int, attributes: dict[str, str]
    ) -> FrameTrace | None:
        """The trace of a sampled AU; None (and nothing made) for the others."""
        return cls(meta, received_ns, attributes) if meta.traceparent else None

    def sent(self, done_ns: int, peers_sent: int, peers_dropped: int) -> None:
        """Every peer is done with the AU: ``edge.send`` ends."""
        self.send.set_attribute("orstream.peers.sent", peers_sent)
        self.send.set_attribute("orstream.peers.dropped", peers_dropped)
        self.send.end(max(done_ns, self.received_ns))


@dataclass(frozen=True, slots=True)
class _Awaited:
    trace: FrameTrace
    sent_ns: int
    capture_ns: int
    viewer: HopLatency


class ReceiptTraces:
    """One session's traced frames awaiting the peer's receipt (bounded; old ones expire)."""

    def __init__(self, session: str, role: str) -> None:
        self.session = session
        self.role = role
        self._awaited: OrderedDict[tuple[str, int], _Awaited] = OrderedDict()

    def sent(
        self, stream: str, seq: int, trace_: FrameTrace, sent_ns: int, capture_ns: int,
        viewer: HopLatency,
    ) -> None:  # fmt: skip
        self._awaited[(stream, seq)] = _Awaited(trace_, sent_ns, capture_ns, viewer)
        while len(self._awaited) > PENDING_LIMIT:
            self._awaited.popitem(last=False)

    def received(self, stream: str, seq: int, presented_ns: int) -> bool:
        """The peer presented ``seq`` of ``stream`` at ``presented_ns``: ``viewer.receipt``.

        False when the frame is not awaited (never traced here, answered already, expired) or
        the time is implausible (after now, or long after it was sent): a peer cannot put
        arbitrary figures into the viewer hop.
        """
        now_ns = time.time_ns()
        self._expire(now_ns)
        awaited = self._awaited.pop((stream, seq), None)
        if awaited is None:
            return False
        if presented_ns > now_ns + CLOCK_AHEAD_NS or (
            presented_ns - awaited.sent_ns > RECEIPT_WAIT_NS
        ):
            return False
        end_ns = max(presented_ns, awaited.sent_ns)  # a peer clock behind ours: a zero span
        span = tracer.start_span(
            SPAN_VIEWER_RECEIPT,
            context=awaited.trace.send_context,
            start_time=awaited.sent_ns,
            attributes={
                "orstream.session": self.session,
                "orstream.role": self.role,
                "orstream.stream": stream,
                "orstream.seq": seq,
                "orstream.glass_to_glass_ms": round((presented_ns - awaited.capture_ns) / 1e6, 3),
            },
        )
        span.end(end_ns)
        # A peer clock behind ours gives no sample (rather than a negative one).
        if presented_ns >= awaited.sent_ns:
            awaited.viewer.record((presented_ns - awaited.sent_ns) / 1e6, awaited.capture_ns)
        return True

    def _expire(self, now_ns: int) -> None:
        while self._awaited:
            oldest = next(iter(self._awaited.values()))
            if now_ns - oldest.sent_ns <= RECEIPT_WAIT_NS:
                return
            self._awaited.popitem(last=False)
