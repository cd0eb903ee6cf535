"""One stream's encoder: always the newest frame, encoded off the event loop.

::

    .frame notification ──offer()──► latest (one slot: older unencoded frames are dropped)
                                        │  encode thread
                                        ▼
    ring slot ──seqlock read──► av.VideoFrame ──libx264──► AU ──► .enc.<rendition>

Nothing queues between the notification and the encoder: if encoding falls behind, the frames
it could not get to are skipped and counted, so latency never builds up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

from opentelemetry import context, propagate, trace

from orstream.common.bus import Bus
from orstream.common.messages import AccessUnitMeta, FrameReady
from orstream.common.shm import RingError, RingReader
from orstream.common.subjects import SOURCE_RENDITION, StreamId
from orstream.common.telemetry import Counters, HopLatency
from orstream.encoder.codec import VIDEO_CLOCK_HZ
from orstream.encoder.convert import to_i420
from orstream.encoder.h264 import H264Encoder
from orstream.encoder.settings import EncoderSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("orstream.encoder")

HOP = "encoder"
#: Consecutive unreadable frames after which the ring is attached afresh (ingest restarted).
REATTACH_AFTER_MISSES = 25
STOP_JOIN_S = 5.0
#: AUs waiting for the event loop; past this the loop is stalled and AUs are dropped.
OUTBOX_LIMIT = 64


def pts_of(capture_ns: int) -> int:
    """Presentation time in 90 kHz units from the wall-clock capture time."""
    return capture_ns * VIDEO_CLOCK_HZ // 1_000_000_000


class StreamEncoder:
    """Encodes one stream's source rendition; owns a thread and a ring reader."""

    def __init__(
        self,
        stream: StreamId,
        fps: float,
        settings: EncoderSettings,
        bus: Bus,
        loop: asyncio.AbstractEventLoop,
        counters: Counters,
    ) -> None:
        self.stream = stream
        self.fps = fps
        self.settings = settings
        self.bus = bus
        self.loop = loop
        self.counters = counters
        self.subject = stream.encoded(SOURCE_RENDITION)
        attrs = {"site": stream.site, "room": stream.room, "stream": stream.stream}
        self.latency = HopLatency(HOP, attrs)
        self.encode_ms = HopLatency("encode", attrs)
        self._latest: FrameReady | None = None
        self._latest_headers: dict[str, str] | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._force_keyframe = False
        self._last_forced_ns = 0
        self._thread = threading.Thread(target=self._run, name=f"encode-{stream}", daemon=True)
        #: AUs from the encode thread to the event loop, which publishes them in order.
        self._outbox: asyncio.Queue[tuple[bytes, dict[str, str]] | None] = asyncio.Queue(
            OUTBOX_LIMIT
        )
        self._publisher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._publisher = self.loop.create_task(self._publish_loop())
        self._thread.start()

    async def _publish_loop(self) -> None:
        while (item := await self._outbox.get()) is not None:
            data, headers = item
            try:
                await self.bus.publish(self.subject, data, headers)
            except Exception as exc:  # a reconnecting client buffers; a closed one raises
                self.counters.add("publish_errors")
                log.warning("%s: publish failed: %s", self.stream, exc)

    def _enqueue(self, item: tuple[bytes, dict[str, str]] | None) -> None:
        try:
            self._outbox.put_nowait(item)
        except asyncio.QueueFull:
            self.counters.add("access_units_dropped")

    def offer(self, note: FrameReady, headers: dict[str, str] | None) -> None:
        """Hand over the newest frame; one the thread has not taken yet is dropped."""
        with self._wake:
            if self._latest is not None:
                self.counters.add("frames_skipped")
            self._latest = note
            self._latest_headers = headers
            self._wake.notify()

    def request_keyframe(self) -> None:
        """Next frame is an IDR, unless one was forced less than the minimum interval ago."""
        now = time.monotonic_ns()
        if now - self._last_forced_ns >= self.settings.keyframe_min_interval_s * 1e9:
            self._last_forced_ns = now
            self._force_keyframe = True
            self.counters.add("keyframes_forced")
        else:
            self.counters.add("keyframe_requests_coalesced")

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

    def _take(self) -> tuple[FrameReady, dict[str, str] | None] | None:
        with self._wake:
            while self._latest is None and not self._stopping:
                self._wake.wait()
            if self._stopping or self._latest is None:
                return None
            note, headers = self._latest, self._latest_headers
            self._latest = self._latest_headers = None
            return note, headers

    def _run(self) -> None:
        reader: RingReader | None = None
        encoder: H264Encoder | None = None
        misses = 0
        try:
            while (item := self._take()) is not None:
                note, headers = item
                if reader is None or misses >= REATTACH_AFTER_MISSES:
                    if reader is not None:
                        reader.close()
                    try:
                        reader = RingReader.attach(note.ring)
                    except RingError as exc:
                        log.warning("%s: %s", self.stream, exc)
                        self.counters.add("ring_missing")
                        reader = None
                        continue
                    misses = 0
                if encoder is None:
                    encoder = H264Encoder(
                        note.width,
                        note.height,
                        self.fps,
                        self.settings.bitrate_bps,
                        self.settings.keyframe_interval_s,
                        self.settings.x264_preset,
                        self.settings.threads,
                    )
                parent = propagate.extract(headers) if headers else None
                token = context.attach(parent) if parent is not None else None
                try:
                    if self._encode_one(reader, encoder, note):
                        misses = 0
                    else:
                        misses += 1
                finally:
                    if token is not None:
                        context.detach(token)
        except Exception:
            log.exception("%s: encoder thread failed", self.stream)
            self.counters.add("encoder_failures")
        finally:
            if reader is not None:
                reader.close()
            if encoder is not None:
                encoder.close()

    def _encode_one(self, reader: RingReader, encoder: H264Encoder, note: FrameReady) -> bool:
        with tracer.start_as_current_span("encoder.read"):
            try:
                frame = reader.read(note.seq, to_i420)
            except (RingError, ValueError) as exc:  # a slot that does not hold what it says
                self.counters.add("frames_rejected")
                log.warning("%s: frame %d rejected: %s", self.stream, note.seq, exc)
                return True
        if frame is None:
            self.counters.add("frames_torn")
            return False
        frame.pts = pts_of(note.capture_ns)
        force = self._force_keyframe
        self._force_keyframe = False
        started = time.perf_counter()
        with tracer.start_as_current_span("encoder.encode"):
            units = encoder.encode(frame, force)
        self.encode_ms.record((time.perf_counter() - started) * 1e3, note.capture_ns)
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
                self.loop.call_soon_threadsafe(self._enqueue, (unit.data, meta.to_headers()))
            self.latency.record((published_ns - note.notified_ns) / 1e6, note.capture_ns)
            self.counters.add("access_units_out")
            if unit.key:
                self.counters.add("keyframes_out")
        return True
