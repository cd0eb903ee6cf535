"""``sdp:<path>``: a DICOM-RTV / SMPTE ST 2110 source, described by the sender's SDP file.

::

    video flow ──UDP──► receive thread (rfc4175) ──► ring slot ──┐
    metadata flow ─UDP─► receive thread (rtv) ──► dataset ───────┤ call_soon_threadsafe
                                                                 ▼
                                          frames() ──► FrameInRing / Context events

Each flow has its own socket and thread, so a burst of metadata never delays a video packet.
The event loop is touched once per completed frame or grain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from orstream.common.shm import RingWriter
from orstream.ingest.rfc4175 import Rfc4175Receiver
from orstream.ingest.rtv import RtvGrain, RtvMetadataReceiver
from orstream.ingest.sdp import RawVideo, SdpError, Session, parse_session, raw_video
from orstream.ingest.source import Context, FrameInRing, SourceEvent, VideoFormat
from orstream.ingest.udp import open_flow_socket

log = logging.getLogger(__name__)

#: Frame notices waiting for the event loop; beyond this, new notices are dropped and counted.
EVENT_QUEUE = 16
#: RTP timestamps of recent frames, to tie a metadata grain to its frame's seq.
RECENT_FRAMES = 256
MAX_SDP_BYTES = 64 * 1024
METADATA_BUFFER_BYTES = 4 * 1024 * 1024
#: How long a metadata grain waits for its video frame to complete, in frame intervals.
TIE_WAIT_FRAMES = 2


class St2110Source:
    def __init__(self, sdp_path: Path, interface: str = "0.0.0.0") -> None:
        try:
            data = sdp_path.read_bytes()[: MAX_SDP_BYTES + 1]
        except OSError as exc:
            raise SdpError(f"cannot read SDP file {sdp_path}: {exc.strerror}") from exc
        if len(data) > MAX_SDP_BYTES:
            raise SdpError(f"SDP file {sdp_path} is larger than {MAX_SDP_BYTES} bytes")
        self.session: Session = parse_session(data.decode("utf-8", errors="replace"))
        self.video: RawVideo = raw_video(self.session.video)
        self.interface = interface
        v = self.video
        self.format = VideoFormat(
            v.width, v.height, v.fps, v.pix_fmt, bit_depth=v.depth, colorimetry=v.colorimetry
        )
        flow = self.session.video
        self.description = (
            f"RFC 4175 {v.width}x{v.height}@{v.fps:g} {v.sampling} {v.depth}-bit "
            f"on {flow.address}:{flow.port}"
            + (f" from {','.join(flow.sources)}" if flow.sources else "")
            + (" + DICOM-RTV metadata" if self.session.metadata else "")
        )
        self.video_receiver: Rfc4175Receiver | None = None
        self.metadata_receiver: RtvMetadataReceiver | None = None
        self.events_dropped = 0
        # Bound now, so a port in use or a group that cannot be joined is refused at start,
        # and datagrams are queued by the kernel from the moment the service says it is ready.
        self._sockets: list[socket.socket] = []
        try:
            self._sockets.append(open_flow_socket(flow, interface))
            if (meta_flow := self.session.metadata) is not None:
                self._sockets.append(
                    open_flow_socket(meta_flow, interface, buffer_bytes=METADATA_BUFFER_BYTES)
                )
        except OSError as exc:
            self.close()
            raise SdpError(f"cannot receive {flow.address}:{flow.port}: {exc}") from exc

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    @classmethod
    def from_url(cls, url: str) -> St2110Source:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        path = Path(parts.path)
        interface = query.get("interface", ["0.0.0.0"])[0]
        return cls(path, interface)

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {"events_dropped": self.events_dropped}
        if self.video_receiver is not None:
            for name, value in self.video_receiver.stats.snapshot().items():
                out[f"video_{name}"] = value
        if self.metadata_receiver is not None:
            for name, value in self.metadata_receiver.stats.snapshot().items():
                out[f"metadata_{name}"] = value
        return out

    async def frames(self, ring: RingWriter) -> AsyncGenerator[SourceEvent, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SourceEvent] = asyncio.Queue()
        recent: OrderedDict[int, int] = OrderedDict()  # rtp ts -> frame seq (loop thread only)
        waiting: dict[int, Context] = {}  # grains whose frame has not completed yet
        tie_wait_s = TIE_WAIT_FRAMES / max(self.video.fps, 1.0)
        frames_queued = 0

        def put_frame(event: FrameInRing, rtp_ts: int) -> None:
            nonlocal frames_queued
            recent[rtp_ts] = event.seq
            if len(recent) > RECENT_FRAMES:
                recent.popitem(last=False)
            if frames_queued >= EVENT_QUEUE:
                # The loop is behind: this notice goes (the frame stays in the ring, and the
                # encoder takes the newest one anyway). Contexts are never dropped here.
                self.events_dropped += 1
            else:
                frames_queued += 1
                queue.put_nowait(event)
            if (context := waiting.pop(rtp_ts, None)) is not None:
                queue.put_nowait(dataclasses.replace(context, seq=event.seq))

        def put_context(context: Context) -> None:
            assert context.rtp_ts is not None
            if (seq := recent.get(context.rtp_ts)) is not None:
                queue.put_nowait(dataclasses.replace(context, seq=seq))
                return
            # A grain usually arrives while its frame is still coming in: wait (bounded) for
            # that frame so the context can name its seq, without holding up the next grain.
            waiting[context.rtp_ts] = context
            loop.call_later(tie_wait_s, release, context.rtp_ts)

        def release(rtp_ts: int) -> None:
            if (context := waiting.pop(rtp_ts, None)) is not None:
                queue.put_nowait(context)

        def on_frame(seq: int, capture_ns: int, slot: int, rtp_ts: int) -> None:
            loop.call_soon_threadsafe(put_frame, FrameInRing(seq, capture_ns, slot), rtp_ts)

        def on_grain(grain: RtvGrain) -> None:
            ds = grain.dataset
            context = Context(
                part10=grain.part10,
                capture_ns=grain.capture_ns,
                study_uid=str(ds.get("StudyInstanceUID", "")),
                series_uid=str(ds.get("SeriesInstanceUID", "")),
                modality=str(ds.get("Modality", "")),
                rtp_ts=grain.rtp_ts,
                flow=grain.flow,
            )
            loop.call_soon_threadsafe(put_context, context)

        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            video_flow = self.session.video
            sock = self._sockets[0]
            self.video_receiver = Rfc4175Receiver(
                sock, self.video, video_flow.payload_type, ring, on_frame, video_flow.sources
            )
            threads.append(
                threading.Thread(
                    target=self.video_receiver.run, args=(stop,), name="rfc4175", daemon=True
                )
            )
            if (meta_flow := self.session.metadata) is not None:
                msock = self._sockets[1]
                self.metadata_receiver = RtvMetadataReceiver(
                    msock, meta_flow.payload_type, on_grain, meta_flow.sources
                )
                threads.append(
                    threading.Thread(
                        target=self.metadata_receiver.run,
                        args=(stop,),
                        name="dicom-rtv",
                        daemon=True,
                    )
                )
            for thread in threads:
                thread.start()
            log.info("receiving %s", self.description)
            while True:
                event = await queue.get()
                if isinstance(event, FrameInRing):
                    frames_queued -= 1
                yield event
        finally:
            stop.set()
            for thread in threads:
                await asyncio.to_thread(thread.join)
            self.close()
