"""One stream's encoding: always the newest frame, each watched rendition, off the event loop.

::

    .frame notification ──offer()──► latest (one slot: older unencoded frames are dropped)
                                        │  encode thread
                                        ▼
    ring slot ──seqlock read──► I420 ──┬─ libx264 ───────────────► AU ──► .enc.src
                                       └─ swscale 360p ─ libx264 ─► AU ──► .enc.360p

Nothing queues between the notification and the encoder: if encoding falls behind, the frames
it could not get to are skipped and counted, so latency never builds up. A rendition nobody
watches has no encoder at all, and with no rendition watched the ring is not even read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import av
from av.video.reformatter import Interpolation, VideoReformatter
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context

from orstream.common.bus import Bus
from orstream.common.messages import (
    HDR_PUBLISHED_NS,
    TRACEPARENT,
    AccessUnitMeta,
    FrameReady,
    StreamDescriptor,
)
from orstream.common.observability import (
    HOP_ENCODER_ENCODE,
    HOP_ENCODER_PUBLISH,
    HOP_ENCODER_READ,
    KEYFRAME_REQUESTS,
)
from orstream.common.shm import RingError, RingReader
from orstream.common.subjects import StreamId
from orstream.common.telemetry import (
    Counters,
    FrameCounts,
    HopLatency,
    QueueDelay,
)
from orstream.encoder.codec import VIDEO_CLOCK_HZ, EncoderOpenError, VideoEncoder
from orstream.encoder.control import EXIT_REFUSED
from orstream.encoder.convert import to_i420
from orstream.encoder.interest import InterestTable
from orstream.encoder.keyframes import KeyframePolicy
from orstream.encoder.renditions import (
    bitrate_changed,
    open_encoder,
    output_size,
    target_bitrate,
)
from orstream.encoder.settings import EncoderSettings, Rendition

log = logging.getLogger(__name__)
tracer = trace.get_tracer("orstream.encoder")

#: What the encode thread hands the event loop per AU: the rendition, the AU, its headers, its
#: ``encoder.publish`` span (sampled frames only), capture and encoded times.
Outgoing = tuple["RenditionState", bytes, dict[str, str], trace.Span | None, int, int]
#: Consecutive unreadable frames after which the ring is attached afresh (ingest restarted).
REATTACH_AFTER_MISSES = 25
STOP_JOIN_S = 5.0
#: AUs waiting for the event loop; past this the loop is stalled and AUs are dropped.
OUTBOX_LIMIT = 64
#: A rendition's bitrate changes at most this often (each change reopens its encoder: an IDR).
BITRATE_HOLD_S = 2.0
#: Repeated complaints about the same fault are logged at most this often.
COMPLAIN_EVERY_S = 5.0


def hop_span(name: str, parent: Context | None, start_ns: int) -> trace.Span | None:
    """A hop's span, the child of the hop before; none for a frame that is not traced."""
    if parent is None:
        return None
    return tracer.start_span(name, context=parent, start_time=start_ns)


def context_of(span: trace.Span | None) -> Context | None:
    """The context the next hop's span is the child of."""
    return None if span is None else trace.set_span_in_context(span)


def pts_of(capture_ns: int) -> int:
    """Presentation time in 90 kHz units from the wall-clock capture time."""
    return capture_ns * VIDEO_CLOCK_HZ // 1_000_000_000


@dataclass(eq=False)
class RenditionState:
    """One rendition of the stream: its subject, its encoder while watched, its latency."""

    spec: Rendition
    subject: str
    #: Hops ``encoder.encode`` (frame read → AU out of the encoder) and ``encoder.publish``
    #: (→ handed to NATS by the event loop).
    encode_ms: HopLatency
    latency: HopLatency
    frames: FrameCounts
    #: Per rendition, so an IDR one rendition makes anyway never answers another's request.
    keyframes: KeyframePolicy
    encoder: VideoEncoder | None = None
    reformatter: VideoReformatter = field(default_factory=VideoReformatter)
    bitrate_set_s: float = 0.0
    access_units: int = 0

    def describe(self) -> dict[str, object]:
        enc = self.encoder
        return {
            "active": enc is not None,
            "codec": self.spec.codec,
            "implementation": enc.implementation if enc else None,
            "size": f"{enc.width}x{enc.height}" if enc else None,
            "bitrate_bps": enc.bitrate_bps if enc else None,
            "access_units": self.access_units,
        }

    def close(self) -> None:
        if self.encoder is not None:
            with contextlib.suppress(Exception):
                self.encoder.close()
            self.encoder = None


class StreamPipeline:
    """Encodes one stream's watched renditions; owns a thread and a ring reader."""

    def __init__(
        self,
        stream: StreamId,
        descriptor: StreamDescriptor,
        settings: EncoderSettings,
        bus: Bus,
        loop: asyncio.AbstractEventLoop,
        counters: Counters,
        interest: InterestTable,
        on_failure: Callable[[str, int], None],
    ) -> None:
        self.stream = stream
        self.descriptor = descriptor
        self.settings = settings
        self.bus = bus
        self.loop = loop
        self.counters = counters
        self.interest = interest
        #: Called (on the loop) with a reason and an exit status when the stream cannot go on.
        self.on_failure = on_failure
        attrs = {"site": stream.site, "room": stream.room, "stream": stream.stream}
        #: Notified → the encode thread took the frame (part of the ``encoder.read`` hop).
        self.queue_ms = QueueDelay(attrs)
        self.read_ms = HopLatency(HOP_ENCODER_READ, attrs)
        self.frames = FrameCounts("encoder", attrs)
        self._keyframe_requests = metrics.get_meter("orstream").create_counter(KEYFRAME_REQUESTS)
        self._attrs = attrs
        self.renditions = [
            RenditionState(
                spec,
                stream.encoded(spec.name),
                HopLatency(HOP_ENCODER_ENCODE, {**attrs, "rendition": spec.name}),
                HopLatency(HOP_ENCODER_PUBLISH, {**attrs, "rendition": spec.name}),
                FrameCounts("encoder", {**attrs, "rendition": spec.name}),
                KeyframePolicy(settings.keyframe_min_interval_s),
            )
            for spec in settings.renditions
        ]
        self._latest: tuple[FrameReady, dict[str, str] | None] | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._complained: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name=f"encode-{stream}", daemon=True)
        #: AUs from the encode thread to the event loop, which publishes them in order.
        self._outbox: asyncio.Queue[Outgoing | None] = asyncio.Queue(OUTBOX_LIMIT)
        self._publisher: asyncio.Task[None] | None = None

    # -- event loop side ------------------------------------------------------------------

    def start(self) -> None:
        self._publisher = self.loop.create_task(self._publish_loop())
        self._thread.start()

    async def _publish_loop(self) -> None:
        while (item := await self._outbox.get()) is not None:
            r, data, headers, span, capture_ns, encoded_ns = item
            published_ns = time.time_ns()
            headers[HDR_PUBLISHED_NS] = str(published_ns)
            try:
                await self.bus.publish(r.subject, data, headers)
            except Exception as exc:  # a reconnecting client buffers; a closed one raises
                self.counters.add("publish_errors")
                r.frames.dropped("publish")
                log.warning("%s: publish failed: %s", self.stream, exc)
            else:
                r.latency.record((published_ns - encoded_ns) / 1e6, capture_ns)
                r.frames.sent()
            if span is not None:
                span.end(published_ns)

    def _enqueue(self, item: Outgoing) -> None:
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            self.counters.add("access_units_dropped")
            item[0].frames.dropped("outbox_full")
            if item[3] is not None:
                item[3].end()

    def offer(self, note: FrameReady, headers: dict[str, str] | None) -> None:
        """Hand over the newest frame; one the thread has not taken yet is dropped."""
        self.frames.received()
        with self._wake:
            if self._latest is not None:
                self.counters.add("frames_skipped")
                self.frames.dropped("superseded")
            self._latest = (note, headers)
            self._wake.notify()

    def request_keyframe(self) -> None:
        # The request names the stream, not the rendition whose peer lost the picture.
        fresh = [r.keyframes.request() for r in self.renditions]
        outcome = "requested" if any(fresh) else "coalesced"
        self.counters.add("keyframe_requests" if any(fresh) else "keyframe_requests_coalesced")
        self._keyframe_requests.add(1, {**self._attrs, "stage": "encoder", "outcome": outcome})

    def update_descriptor(self, descriptor: StreamDescriptor) -> None:
        """Ingest re-announced the stream (e.g. a new source format): frames follow it."""
        self.descriptor = descriptor

    async def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join, STOP_JOIN_S)
        if self._publisher is not None:
            if self._outbox.full():
                self._publisher.cancel()
            else:
                self._outbox.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher

    def stats(self, since_ns: int) -> dict[str, object]:
        return {
            "hops": {
                HOP_ENCODER_READ: self.read_ms.summary(since_ns),
                QueueDelay.HOP: self.queue_ms.summary(since_ns),
            },
            "watchers": self.interest.watchers(),
            "renditions": {
                r.spec.name: {
                    **r.describe(),
                    "hops": {
                        HOP_ENCODER_ENCODE: r.encode_ms.summary(since_ns),
                        HOP_ENCODER_PUBLISH: r.latency.summary(since_ns),
                    },
                }
                for r in self.renditions
            },
        }

    # -- encode thread --------------------------------------------------------------------

    def _complain(self, what: str, message: str, *args: object) -> None:
        """Count every occurrence; log the first, then at most every few seconds."""
        self.counters.add(what)
        now = time.monotonic()
        if now - self._complained.get(what, -COMPLAIN_EVERY_S) >= COMPLAIN_EVERY_S:
            self._complained[what] = now
            log.warning("%s: " + message, self.stream, *args)

    def _take(self) -> tuple[FrameReady, dict[str, str] | None, int] | None:
        with self._wake:
            while self._latest is None and not self._stopping:
                self._wake.wait()
            if self._stopping or self._latest is None:
                return None
            (note, headers), self._latest = self._latest, None
            return note, headers, time.time_ns()

    def _format_matches(self, note: FrameReady) -> bool:
        d = self.descriptor
        if (note.ring, note.width, note.height, note.pix_fmt) == (
            d.ring,
            d.width,
            d.height,
            d.pix_fmt,
        ):
            return True
        self._complain(
            "frames_format_mismatch",
            "frame %d is %s %dx%d in ring %s but the registry says %s %dx%d in %s; dropped",
            note.seq,
            note.pix_fmt,
            note.width,
            note.height,
            note.ring,
            d.pix_fmt,
            d.width,
            d.height,
            d.ring,
        )
        return False

    def _run(self) -> None:
        reader: RingReader | None = None
        misses = 0
        try:
            while (item := self._take()) is not None:
                note, headers, taken_ns = item
                self.queue_ms.record((taken_ns - note.notified_ns) / 1e6, note.capture_ns)
                if not self._format_matches(note):
                    self.frames.dropped("format")
                    continue
                wanted = self.interest.wanted(time.monotonic())
                active = [r for r in self.renditions if r.spec.name in wanted]
                for r in self.renditions:
                    if r.encoder is not None and r not in active:
                        log.info("%s: %s has no watchers; encoder closed", self.stream, r.spec.name)
                        r.close()
                if not active:
                    self.counters.add("frames_unwatched")
                    self.frames.dropped("unwatched")
                    continue
                if reader is None or misses >= REATTACH_AFTER_MISSES:
                    if reader is not None:
                        reader.close()
                    try:
                        reader = RingReader.attach(note.ring)
                    except RingError as exc:
                        self._complain("ring_missing", "%s", exc)
                        self.frames.dropped("ring_missing")
                        reader = None
                        continue
                    misses = 0
                # Only a frame ingest traced carries a traceparent; the others get no spans.
                parent = propagate.extract(headers) if headers and TRACEPARENT in headers else None
                if self._encode_frame(reader, note, active, wanted, parent):
                    misses = 0
                else:
                    misses += 1
        except EncoderOpenError as exc:
            self.counters.add("encoder_open_failures")
            log.error("%s: refusing the stream: %s", self.stream, exc)
            self.loop.call_soon_threadsafe(self.on_failure, str(exc), EXIT_REFUSED)
        except Exception as exc:
            log.exception("%s: encoder thread failed", self.stream)
            self.counters.add("encoder_failures")
            self.loop.call_soon_threadsafe(self.on_failure, f"encoder thread failed: {exc!r}", 1)
        finally:
            if reader is not None:
                reader.close()
            for r in self.renditions:
                r.close()

    def _encode_frame(
        self,
        reader: RingReader,
        note: FrameReady,
        active: list[RenditionState],
        wanted: dict[str, int],
        parent: Context | None,
    ) -> bool:
        read_span = hop_span(HOP_ENCODER_READ, parent, note.notified_ns)
        try:
            frame = reader.read(note.seq, to_i420)
        except (RingError, ValueError) as exc:  # a slot that does not hold what it says
            self._complain("frames_rejected", "frame %d rejected: %s", note.seq, exc)
            self.frames.dropped("rejected")
            return True
        finally:
            read_ns = time.time_ns()
            if read_span is not None:
                read_span.end(read_ns)
        if frame is None:
            self.counters.add("frames_torn")
            self.frames.dropped("torn")
            return False
        self.read_ms.record((read_ns - note.notified_ns) / 1e6, note.capture_ns)
        frame.pts = pts_of(note.capture_ns)
        now_ns = time.monotonic_ns()
        read_ctx = context_of(read_span)
        for r in active:
            force = r.keyframes.force_now(now_ns)
            if force:
                self.counters.add("keyframes_forced")
                self._keyframe_requests.add(
                    1, {**self._attrs, "stage": "encoder", "outcome": "forced"}
                )
            self._encode_rendition(
                r, frame, note, wanted[r.spec.name], force, now_ns, read_ns, read_ctx
            )
        return True

    def _encoder_for(
        self, r: RenditionState, width: int, height: int, estimate: int
    ) -> VideoEncoder:
        bitrate = target_bitrate(r.spec, estimate, self.settings.min_bitrate_share)
        enc = r.encoder
        now = time.monotonic()
        if enc is not None and (enc.width, enc.height) != (width, height):
            log.info("%s: %s size now %dx%d", self.stream, r.spec.name, width, height)
            r.close()
        elif (
            enc is not None
            and bitrate_changed(enc.bitrate_bps, bitrate)
            and now - r.bitrate_set_s >= BITRATE_HOLD_S
        ):
            log.info(
                "%s: %s bitrate %d → %d kbit/s (watchers' estimate %d)",
                self.stream,
                r.spec.name,
                enc.bitrate_bps // 1000,
                bitrate // 1000,
                estimate // 1000,
            )
            self.counters.add("bitrate_changes")
            r.close()
        if r.encoder is None:
            r.encoder = open_encoder(
                r.spec, width, height, self.descriptor.fps, bitrate, self.settings
            )
            r.bitrate_set_s = now
            log.info(
                "%s: encoding %s with %s, %dx%d at %d kbit/s",
                self.stream,
                r.spec.name,
                r.encoder.implementation,
                width,
                height,
                bitrate // 1000,
            )
        return r.encoder

    def _encode_rendition(
        self,
        r: RenditionState,
        frame: av.VideoFrame,
        note: FrameReady,
        estimate: int,
        force: bool,
        now_ns: int,
        read_ns: int,
        read_ctx: Context | None,
    ) -> None:
        width, height = output_size(r.spec, frame.width, frame.height)
        encoder = self._encoder_for(r, width, height, estimate)
        encode_span = hop_span(HOP_ENCODER_ENCODE, read_ctx, read_ns)
        try:
            if (width, height) != (frame.width, frame.height):
                frame = r.reformatter.reformat(
                    frame, width, height, "yuv420p", interpolation=Interpolation.BILINEAR
                )
            units = encoder.encode(frame, force)
        finally:
            encoded_ns = time.time_ns()
            if encode_span is not None:
                encode_span.set_attribute("orstream.rendition", r.spec.name)
                encode_span.end(encoded_ns)
        r.encode_ms.record((encoded_ns - read_ns) / 1e6, note.capture_ns)
        encode_ctx = context_of(encode_span)
        for unit in units:
            carrier: dict[str, str] = {}
            span = hop_span(HOP_ENCODER_PUBLISH, encode_ctx, encoded_ns)
            if span is not None:
                propagate.inject(carrier, context=context_of(span))
            meta = AccessUnitMeta(
                seq=note.seq,
                pts=unit.pts,
                key=unit.key,
                codec=encoder.codec,
                capture_ns=note.capture_ns,
                notified_ns=note.notified_ns,
                published_ns=encoded_ns,  # stamped again when the loop hands it to NATS
                traceparent=carrier.get(TRACEPARENT),
            )
            self.loop.call_soon_threadsafe(
                self._enqueue,
                (r, unit.data, meta.to_headers(), span, note.capture_ns, encoded_ns),
            )
            r.access_units += 1
            self.counters.add("access_units_out")
            if unit.key:
                self.counters.add("keyframes_out")
                if not force:
                    r.keyframes.keyframe_sent(now_ns)
