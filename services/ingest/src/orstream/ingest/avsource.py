"""Sources FFmpeg opens through PyAV: video files, capture devices, and ``lavfi`` graphs.

``file:<path>[?loop=1]`` plays any file FFmpeg reads, paced in real time by its timestamps.
``lavfi:<graph>``, ``avfoundation:<device>``, ``dshow:<device>`` (and ``v4l2:`` where PyAV was
built with it) open a live input: a device paces itself; a ``lavfi`` graph is paced like a file.
Decoding runs in a worker thread; a decode error skips that frame; a device that disappears is
reopened with backoff while the stream is reported stalled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import av
import av.container

from orstream.common.shm import RingWriter
from orstream.ingest.avframes import carried_format, conform, filler
from orstream.ingest.source import (
    RawFrame,
    SourceCounters,
    SourceEvent,
    Stalled,
    VideoFormat,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEVICE_FORMATS = frozenset({"lavfi", "avfoundation", "dshow", "v4l2"})
REOPEN_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
#: A live input session shorter than this is followed by a backoff before reopening.
MIN_SESSION_S = 1.0
#: On stop, how long to wait for a read in flight before giving up on freeing its input.
CLOSE_WAIT_S = 5.0
#: A frame more than this late against the pacing clock resets the clock (after a stall).
RESYNC_LATE_S = 0.5
DEFAULT_FPS = 25.0


class AvSourceError(ValueError):
    """The file or device cannot be opened, or holds no video."""


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["0"])[0].lower() in ("1", "true", "yes", "on")


def _probe(container: av.container.InputContainer) -> tuple[VideoFormat, float]:
    if not container.streams.video:
        raise AvSourceError(f"{container.name} holds no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    width, height = ctx.width, ctx.height
    if not width or not height:
        raise AvSourceError(f"{container.name}: video stream has no picture size")
    rate = stream.average_rate or stream.guessed_rate or Fraction(DEFAULT_FPS)
    fps = float(rate) if rate else DEFAULT_FPS
    pix_fmt = carried_format(ctx.pix_fmt or "yuv420p")
    if pix_fmt in ("yuv420p", "nv12") and (width % 2 or height % 2):
        width, height = width - width % 2, height - height % 2
    if pix_fmt in ("uyvy422", "yuyv422") and width % 2:
        width -= 1
    return VideoFormat(width, height, fps, pix_fmt), fps


class Pacer:
    """Releases frames at their presentation times against the wall clock."""

    def __init__(self) -> None:
        self._origin: float | None = None

    def reset(self) -> None:
        self._origin = None

    async def wait(self, pts_s: float) -> None:
        now = time.monotonic()
        if self._origin is None or now - (self._origin + pts_s) > RESYNC_LATE_S:
            self._origin = now - pts_s
            return
        delay = self._origin + pts_s - now
        if delay > 0:
            await asyncio.sleep(delay)


class AvSource:
    """A file or live input opened by FFmpeg (see the module docstring for the URL forms)."""

    def __init__(
        self,
        target: str,
        input_format: str | None = None,
        options: dict[str, str] | None = None,
        loop: bool = False,
        paced: bool = True,
        live: bool = False,
    ) -> None:
        self.target = target
        self.input_format = input_format
        self.options = options or {}
        self.loop = loop
        self.paced = paced
        self.live = live
        self._counters = SourceCounters()
        container = self._open()
        try:
            self.format, self.fps = _probe(container)
        finally:
            container.close()
        kind = input_format or "file"
        self.description = (
            f"{kind} {target} ({self.format.width}x{self.format.height}@{self.fps:g}"
            f"{', looped' if loop else ''})"
        )

    @classmethod
    def from_url(cls, url: str) -> AvSource:
        scheme, _, rest = url.partition(":")
        parts = urlsplit(rest)
        query = parse_qs(parts.query)
        options = {k: v[0] for k, v in query.items() if k not in ("loop",)}
        if scheme == "file":
            path = Path(unquote(parts.path))
            if not path.is_file():
                raise AvSourceError(f"no such file: {path}")
            return cls(str(path), loop=_flag(query, "loop"))
        if scheme not in DEVICE_FORMATS:
            raise AvSourceError(f"{scheme!r} is not a PyAV input ({', '.join(DEVICE_FORMATS)})")
        if scheme not in av.formats_available:
            hint = (
                " (PyPI's PyAV wheels for Linux are built without it: install PyAV against the "
                "system FFmpeg, e.g. 'pip install av --no-binary av' with libavdevice-dev)"
                if scheme == "v4l2"
                else ""
            )
            raise AvSourceError(
                f"this PyAV build has no {scheme!r} input{hint}; device inputs it has: "
                f"{', '.join(sorted(DEVICE_FORMATS & set(av.formats_available))) or 'none'}"
            )
        target = unquote(parts.path)
        return cls(target, scheme, options, paced=scheme == "lavfi", live=True)

    def _open(self) -> av.container.InputContainer:
        try:
            container: Any = av.open(
                self.target, "r", format=self.input_format, options=self.options
            )
        except (av.FFmpegError, OSError) as exc:
            raise AvSourceError(f"cannot open {self.target}: {exc}") from exc
        return container  # type: ignore[no-any-return]

    def counters(self) -> dict[str, int]:
        return dict(self._counters.values)

    def _decoded(
        self, container: av.container.InputContainer
    ) -> Iterator[tuple[av.VideoFrame, float]]:
        """Decoded frames with their presentation time in seconds (runs in a worker thread)."""
        stream = container.streams.video[0]
        # Frame threading holds frames back by the thread count: fine for a file, but a live
        # input would gain latency, so it only gets slice threading.
        stream.thread_type = "SLICE" if self.live else "AUTO"
        time_base = float(stream.time_base) if stream.time_base else 1.0 / self.fps
        n = 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                if isinstance(exc, av.error.EOFError):
                    break
                self._counters.add("decode_errors")
                log.warning("%s: undecodable packet skipped (%s)", self.target, exc)
                continue
            for frame in frames:
                pts = frame.pts * time_base if frame.pts is not None else n / self.fps
                n += 1
                yield frame, pts

    async def frames(self, ring: RingWriter) -> AsyncGenerator[SourceEvent, None]:
        fmt = self.format
        seq = 0
        pacer = Pacer()
        attempt = 0
        while True:
            try:
                container = await asyncio.to_thread(self._open)
            except AvSourceError as exc:
                if not self.live:
                    raise
                self._counters.add("reopen_failures")
                attempt += 1
                yield Stalled(f"{self.target} unavailable: {exc}")
                await asyncio.sleep(backoff(attempt))
                continue
            pacer.reset()
            started = time.monotonic()
            session_frames = 0
            reader = ThreadedIterator(self._decoded(container), container.close)
            try:
                while True:
                    try:
                        item = await reader.next()
                    except (av.FFmpegError, OSError) as exc:
                        self._counters.add("input_errors")
                        log.warning("%s: input failed (%s)", self.target, exc)
                        if self.live:
                            yield Stalled(f"{self.target} failed: {exc}")
                        break
                    if item is None:
                        break
                    frame, pts_s = item
                    if self.paced:
                        await pacer.wait(pts_s)
                    frame = await asyncio.to_thread(
                        conform, frame, fmt.width, fmt.height, fmt.pix_fmt
                    )
                    yield RawFrame(seq, time.time_ns(), filler(frame))
                    seq += 1
                    session_frames += 1
            finally:
                await reader.close()
            if session_frames == 0 and not self.live:
                raise AvSourceError(f"{self.target} holds no decodable frame")
            if self.live:
                # A device that went away, or an input that ended: reopen it, but never in a
                # tight loop (an input that ends at once would otherwise spin).
                if session_frames == 0 or time.monotonic() - started < MIN_SESSION_S:
                    attempt += 1
                    self._counters.add("reopens_backed_off")
                    await asyncio.sleep(backoff(attempt))
                else:
                    attempt = 0
                continue
            if not self.loop:
                log.info("%s: end of file", self.target)
                return
            self._counters.add("loops")


def backoff(attempt: int) -> float:
    return REOPEN_BACKOFF_S[min(max(attempt, 1), len(REOPEN_BACKOFF_S)) - 1]


class ThreadedIterator(Generic[T]):
    """Steps a blocking iterator in a worker thread, and closes its resources only once no step
    is running: closing an FFmpeg input while a read is still inside it would crash the process."""

    def __init__(self, iterator: Iterator[T], release: Callable[[], None]) -> None:
        self._iterator = iterator
        self._release = release
        self._step: asyncio.Future[T | None] | None = None

    async def next(self) -> T | None:
        loop = asyncio.get_running_loop()
        self._step = loop.run_in_executor(None, next, self._iterator, None)
        # shield: a cancelled consumer must not abandon the step while it runs.
        item = await asyncio.shield(self._step)
        self._step = None
        return item

    async def close(self) -> None:
        step = self._step
        if step is not None and not step.done():
            await asyncio.wait({step}, timeout=CLOSE_WAIT_S)
            if not step.done():
                log.warning(
                    "an input read did not return within %g s; its resources are left to the "
                    "process exit rather than freed under it",
                    CLOSE_WAIT_S,
                )
                return
        if step is not None and step.done() and not step.cancelled():
            step.exception()  # retrieved: a failed last step is not an unhandled error
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
        self._release()
