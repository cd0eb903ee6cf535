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
from opentelemetry import context, propagate, trace

from orstream.common.bus import Bus
from orstream.common.messages import AccessUnitMeta, FrameReady, StreamDescriptor
from orstream.common.shm import RingError, RingReader
from orstream.common.subjects import StreamId
from orstream.common.telemetry import Counters, HopLatency
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

HOP = "encoder"
#: Consecutive unreadable frames after which the ring is attached afresh (ingest restarted).
REATTACH_AFTER_MISSES = 25
STOP_JOIN_S = 5.0
#: AUs waiting for the event loop; past this the loop is stalled and AUs are dropped.
OUTBOX_LIMIT = 64
#: A rendition's bitrate changes at most this often (each change reopens its encoder: an IDR).
BITRATE_HOLD_S = 2.0
#: Repeated complaints about the same fault are logged at most this often.
COMPLAIN_EVERY_S = 5.0


def pts_of(capture_ns: int) -> int:
    """Presentation time in 90 kHz units from the wall-clock capture time."""
    return capture_ns * VIDEO_CLOCK_HZ // 1_000_000_000


@dataclass(eq=False)
class RenditionState:
    """One rendition of the stream: its subject, its encoder while watched, its latency."""

    spec: Rendition
    subject: str
    latency: HopLatency
    encode_ms: HopLatency
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
        self.queue_ms = HopLatency("queue", attrs)
        self.renditions = [
            RenditionState(
                spec,
                stream.encoded(spec.name),
                HopLatency(HOP, {**attrs, "rendition": spec.name}),
                HopLatency("encode", {**attrs, "rendition": spec.name}),
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
        self._outbox: asyncio.Queue[tuple[str, bytes, dict[str, str]] | None] = asyncio.Queue(
            OUTBOX_LIMIT
        )
        self._publisher: asyncio.Task[None] | None = None

    # -- event loop side ------------------------------------------------------------------

    def start(self) -> None:
        self._publisher = self.loop.create_task(self._publish_loop())
        self._thread.start()

    async def _publish_loop(self) -> None:
        while (item := await self._outbox.get()) is not None:
            subject, data, headers = item
            try:
                await self.bus.publish(subject, data, headers)
            except Exception as exc:  # a reconnecting client buffers; a closed one raises
                self.counters.add("publish_errors")
                log.warning("%s: publish failed: %s", self.stream, exc)

    def _enqueue(self, item: tuple[str, bytes, dict[str, str]]) -> None:
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            self.counters.add("access_units_dropped")

    def offer(self, note: FrameReady, headers: dict[str, str] | None) -> None:
        """Hand over the newest frame; one the thread has not taken yet is dropped."""
        with self._wake:
            if self._latest is not None:
                self.counters.add("frames_skipped")
            self._latest = (note, headers)
            self._wake.notify()

    def request_keyframe(self) -> None:
        # The request names the stream, not the rendition whose peer lost the picture.
        fresh = [r.keyframes.request() for r in self.renditions]
        if any(fresh):
            self.counters.add("keyframe_requests")
        else:
            self.counters.add("keyframe_requests_coalesced")

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
        source = self.renditions[0]
        return {
            "encoder": source.latency.summary(since_ns),
            "encode": source.encode_ms.summary(since_ns),
            "queue": self.queue_ms.summary(since_ns),
            "watchers": self.interest.watchers(),
            "renditions": {
                r.spec.name: {
                    **r.describe(),
                    "encoder": r.latency.summary(since_ns),
                    "encode": r.encode_ms.summary(since_ns),
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
                    continue
                wanted = self.interest.wanted(time.monotonic())
                active = [r for r in self.renditions if r.spec.name in wanted]
                for r in self.renditions:
                    if r.encoder is not None and r not in active:
                        log.info("%s: %s has no watchers; encoder closed", self.stream, r.spec.name)
                        r.close()
                if not active:
                    self.counters.add("frames_unwatched")
                    continue
                if reader is None or misses >= REATTACH_AFTER_MISSES:
                    if reader is not None:
                        reader.close()
                    try:
                        reader = RingReader.attach(note.ring)
                    except RingError as exc:
                        self._complain("ring_missing", "%s", exc)
                        reader = None
                        continue
                    misses = 0
                parent = propagate.extract(headers) if headers else None
                token = context.attach(parent) if parent is not None else None
                try:
                    if self._encode_frame(reader, note, active, wanted):
                        misses = 0
                    else:
                        misses += 1
                finally:
                    if token is not None:
                        context.detach(token)
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
    ) -> bool:
        with tracer.start_as_current_span("encoder.read"):
            try:
                frame = reader.read(note.seq, to_i420)
            except (RingError, ValueError) as exc:  # a slot that does not hold what it says
                self._complain("frames_rejected", "frame %d rejected: %s", note.seq, exc)
                return True
        if frame is None:
            self.counters.add("frames_torn")
            return False
        frame.pts = pts_of(note.capture_ns)
        now_ns = time.monotonic_ns()
        for r in active:
            force = r.keyframes.force_now(now_ns)
            if force:
                self.counters.add("keyframes_forced")
            self._encode_rendition(r, frame, note, wanted[r.spec.name], force, now_ns)
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
    ) -> None:
        width, height = output_size(r.spec, frame.width, frame.height)
        encoder = self._encoder_for(r, width, height, estimate)
        started = time.perf_counter()
        with tracer.start_as_current_span("encoder.encode"):
            if (width, height) != (frame.width, frame.height):
                frame = r.reformatter.reformat(
                    frame, width, height, "yuv420p", interpolation=Interpolation.BILINEAR
                )
            units = encoder.encode(frame, force)
        r.encode_ms.record((time.perf_counter() - started) * 1e3, note.capture_ns)
        for unit in units:
            with tracer.start_as_current_span("encoder.publish") as span:
                carrier: dict[str, str] = {}
                if span.is_recording():
                    propagate.inject(carrier)
                published_ns = time.time_ns()
                meta = AccessUnitMeta(
                    seq=note.seq,
                    pts=unit.pts,
                    key=unit.key,
                    codec=encoder.codec,
                    capture_ns=note.capture_ns,
                    notified_ns=note.notified_ns,
                    published_ns=published_ns,
                    traceparent=carrier.get("traceparent"),
                )
                self.loop.call_soon_threadsafe(
                    self._enqueue, (r.subject, unit.data, meta.to_headers())
                )
            r.latency.record((published_ns - note.notified_ns) / 1e6, note.capture_ns)
            r.access_units += 1
            self.counters.add("access_units_out")
            if unit.key:
                self.counters.add("keyframes_out")
                if not force:
                    r.keyframes.keyframe_sent(now_ns)
