"""The ``stats`` DataChannel: the session's numbers to its peer, the peer's receipt timings back.

::

    edge ──{"type":"stats","seq":n,"ts_ns":…, <snapshot>}──► peer     every interval_s
    edge ◄──{"type":"receipt","frames":n,"decode_ms":…}───── peer     kept as last_report
    edge ──{"type":"trace","stream":s,"seq":n}──────────────► peer     a sampled frame was sent
    edge ◄──{"type":"receipt",…,"traced":[{"stream","seq","presented_ms"}]}  when it showed it

The edge supplies the numbers as a ``snapshot()`` callable (plain or async): rendition, AUs
sent and dropped, queue depth, RTT and loss from RTCP (:func:`rtcp_numbers` reads them from an
aiortc peer connection), bitrate estimate. The peer's newest valid receipt is the session's
last report, for ``/stats``; anything malformed is counted and answered with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from orstream.common.runner import cancel_and_wait
from orstream.common.telemetry import Counters
from orstream.signaling.channels import send_text

log = logging.getLogger(__name__)

STATS_CHANNEL = "stats"
DEFAULT_INTERVAL_S = 1.0
#: A receipt is a handful of numbers; anything larger is refused before decoding.
MAX_RECEIPT_BYTES = 4096
#: An async snapshot (e.g. aiortc's getStats) taking longer skips that report.
SNAPSHOT_TIMEOUT_S = 0.5
#: RTP clock rate of video, to turn RTCP jitter into milliseconds.
VIDEO_CLOCK_RATE_HZ = 90_000
#: An RTCP report's fraction lost is a fixed-point number with 8 fractional bits.
RTCP_FRACTION_SCALE = 256.0

Snapshot = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
Millis = Annotated[float, Meta(ge=0.0, le=3_600_000.0)]
Count = Annotated[int, Meta(ge=0, le=2**53)]
#: Wall-clock time in ms since the epoch (a browser's ``performance.timeOrigin + now()``).
EpochMillis = Annotated[float, Meta(gt=0.0, lt=1e14)]
#: Traced frames one receipt may answer.
MAX_TRACED = 16


class TracedFrame(msgspec.Struct, frozen=True):
    """The peer presented (decoded, or displayed) frame ``seq`` of ``stream`` at a time."""

    stream: Annotated[str, Meta(max_length=64)]
    seq: Count
    presented_ms: EpochMillis


class Receipt(msgspec.Struct, tag="receipt", tag_field="type", kw_only=True, frozen=True):
    """What the viewer measured since its previous receipt; ``_ms`` fields are medians."""

    frames: Count
    frames_dropped: Count | None = None
    decode_ms: Millis | None = None
    decode_p95_ms: Millis | None = None
    glass_to_glass_ms: Millis | None = None
    glass_to_glass_p95_ms: Millis | None = None
    #: Frames the edge asked about (``trace``) that the peer has presented since.
    traced: Annotated[list[TracedFrame], Meta(max_length=MAX_TRACED)] | None = None
    #: Set by the edge when the receipt arrived (wall clock).
    received_ns: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        out.pop("traced", None)  # answered once; /stats shows the figures
        return out


class TraceRequest(msgspec.Struct, tag="trace", tag_field="type", frozen=True):
    """Please say when you present this frame (it is part of a sampled trace)."""

    stream: str
    seq: int


class StatsError(msgspec.Struct, tag="error", tag_field="type", frozen=True):
    reason: str


_RECEIPT_DECODER = msgspec.json.Decoder(Receipt)
_ENCODER = msgspec.json.Encoder()


async def rtcp_numbers(pc: Any) -> dict[str, float | int]:
    """Video RTP sent and the peer's RTCP receiver reports, from an aiortc peer connection.

    Keys present only when known: ``packets_sent``, ``bytes_sent``; once the peer has
    reported, ``fraction_lost`` (0..1), ``packets_lost``, ``jitter_ms``; and ``rtt_ms`` once a
    report has answered one of our sender reports.
    """
    numbers: dict[str, float | int] = {}
    for stats in (await pc.getStats()).values():
        if stats.type == "outbound-rtp" and stats.kind == "video":
            numbers["packets_sent"] = numbers.get("packets_sent", 0) + stats.packetsSent
            numbers["bytes_sent"] = numbers.get("bytes_sent", 0) + stats.bytesSent
        elif stats.type == "remote-inbound-rtp" and stats.kind == "video":
            # aiortc passes the report's fields through: loss as 1/256ths, jitter in RTP
            # clock units, and no round trip until a report answers one of our SRs.
            if stats.roundTripTime is not None:
                numbers["rtt_ms"] = stats.roundTripTime * 1000.0
            numbers["fraction_lost"] = stats.fractionLost / RTCP_FRACTION_SCALE
            numbers["packets_lost"] = stats.packetsLost
            numbers["jitter_ms"] = stats.jitter * 1000.0 / VIDEO_CLOCK_RATE_HZ
    return numbers


class SessionStats:
    """One session's ``stats`` channel: a report every ``interval_s`` while it is open."""

    def __init__(
        self,
        channel: Any,
        snapshot: Snapshot,
        interval_s: float,
        counters: Counters,
        on_traced: Callable[[TracedFrame], bool] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.channel = channel
        self.snapshot = snapshot
        self.interval_s = interval_s
        self.counters = counters
        #: Given each traced frame a receipt answers; False: not one the edge waits for.
        self.on_traced = on_traced
        #: The peer's newest valid receipt, stamped with when it arrived.
        self.last_report: Receipt | None = None
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self.channel.on("message", self.on_message)
        self.channel.on("close", self._closed.set)
        self._task = asyncio.get_running_loop().create_task(
            self._report_until_closed(), name=f"stats {self.channel.label}"
        )

    async def stop(self) -> None:
        self._closed.set()
        await cancel_and_wait(self._task)
        with contextlib.suppress(KeyError):
            self.channel.remove_listener("message", self.on_message)
        with contextlib.suppress(KeyError):
            self.channel.remove_listener("close", self._closed.set)

    def on_message(self, data: object) -> None:
        """A message from the peer: a receipt becomes the last report; anything else is refused."""
        try:
            if not isinstance(data, str | bytes):
                raise ValueError(f"unsupported message data {type(data).__name__}")
            if len(data) > MAX_RECEIPT_BYTES:
                raise ValueError(f"message larger than {MAX_RECEIPT_BYTES} bytes")
            receipt = _RECEIPT_DECODER.decode(data)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.counters.add("stats_malformed")
            log.info("stats channel: malformed message: %s", exc)
            self._send(
                _ENCODER.encode(StatsError(f"malformed: {exc}")).decode(), "stats_errors_sent"
            )
            return
        if receipt.frames or not receipt.traced:  # an answer alone is not a new report
            self.last_report = msgspec.structs.replace(receipt, received_ns=time.time_ns())
        self.counters.add("stats_receipts")
        for frame in receipt.traced or ():
            matched = self.on_traced is not None and self.on_traced(frame)
            self.counters.add("traced_receipts" if matched else "traced_receipts_unmatched")

    def request_trace(self, stream: str, seq: int) -> None:
        """Ask the peer when it presents ``seq`` of ``stream`` (a sampled frame)."""
        if self.channel.readyState == "open":
            self._send(_ENCODER.encode(TraceRequest(stream, seq)).decode(), "trace_requests")

    async def _report_until_closed(self) -> None:
        seq = 0
        while not self._closed.is_set() and self.channel.readyState in ("connecting", "open"):
            if self.channel.readyState == "open":
                report = await self._report(seq)
                if report is not None:
                    self._send(report, "stats_sent")
                    seq += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self.interval_s)

    async def _report(self, seq: int) -> str | None:
        try:
            numbers = self.snapshot()
            if inspect.isawaitable(numbers):
                numbers = await asyncio.wait_for(numbers, SNAPSHOT_TIMEOUT_S)
            report = {**numbers, "type": "stats", "seq": seq, "ts_ns": time.time_ns()}
            return _ENCODER.encode(report).decode()
        except Exception as exc:  # the edge's numbers failed this once; try again next tick
            self.counters.add("stats_snapshot_errors")
            log.warning("stats channel: snapshot failed: %r", exc)
            return None

    def _send(self, message: str, counter: str) -> None:
        # A channel closed under us: the loop ends on its own.
        send_text(self.channel, message, self.counters, counter, "stats_send_errors")
