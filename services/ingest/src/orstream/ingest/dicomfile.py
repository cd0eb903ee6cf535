"""``dicom:<path>[?loop=1]``: a multi-frame DICOM object replayed at its frame time.

Video Endoscopic, Video Photographic, US Multi-frame, XA… objects carry their frames either
natively (one frame after another, read one at a time by pydicom) or encapsulated: MPEG-2,
MPEG-4 AVC/H.264 and HEVC transfer syntaxes hold one video bitstream (decoded by FFmpeg through
PyAV); JPEG and JPEG 2000 hold one compressed frame per fragment (decoded by PyAV as well). The
header, without its pixel data, is published as the stream's context at start and periodically.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import av
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_fragmented_frames, generate_fragments
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pixel_array
from pydicom.uid import (
    HEVCM10P51,
    HEVCMP51,
    JPEG2000,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    MPEGTransferSyntaxes,
)

from orstream.common.shm import RingWriter
from orstream.ingest.avframes import conform, filler
from orstream.ingest.avsource import DEFAULT_FPS, Pacer, ThreadedIterator
from orstream.ingest.source import Context, RawFrame, SourceCounters, SourceEvent, VideoFormat

log = logging.getLogger(__name__)

#: Per-fragment image codecs FFmpeg decodes, by transfer syntax.
FRAME_CODECS: dict[str, str] = {
    JPEGBaseline8Bit: "mjpeg",
    JPEGExtended12Bit: "mjpeg",
    JPEG2000Lossless: "jpeg2000",
    JPEG2000: "jpeg2000",
}
HEVC_SYNTAXES = frozenset({HEVCMP51, HEVCM10P51})
#: The header is published again this often, so a metadata service that starts later has it.
CONTEXT_REPEAT_S = 10.0
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class DicomSourceError(ValueError):
    """The object cannot be replayed: unreadable, not multi-frame video, or an unknown syntax."""


def _frame_rate(ds: Dataset) -> float:
    """Frames per second from Frame Time, Frame Time Vector, Cine Rate or the display rate."""
    try:
        if "FrameTime" in ds and float(ds.FrameTime) > 0:
            return 1000.0 / float(ds.FrameTime)
        if "FrameTimeVector" in ds:
            steps = [float(v) for v in ds.FrameTimeVector[1:] if float(v) > 0]
            if steps:
                return 1000.0 / (sum(steps) / len(steps))
        for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
            if keyword in ds and float(ds[keyword].value) > 0:
                return float(ds[keyword].value)
    except (TypeError, ValueError):
        pass
    return 0.0


def header_part10(ds: Dataset) -> bytes:
    """The object's header without pixel data, as a Part 10 stream in Explicit VR Little Endian."""
    header = Dataset()
    for elem in ds:
        if elem.keyword not in PIXEL_TAGS:
            header.add(elem)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.77.1.1.1")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", pydicom.uid.generate_uid())
    header.file_meta = meta
    out = BytesIO()
    pydicom.dcmwrite(out, header, enforce_file_format=True)
    return out.getvalue()


class DicomSource:
    def __init__(self, path: Path, loop: bool = False) -> None:
        self.path = path
        self.loop = loop
        self._counters = SourceCounters()
        try:
            ds = pydicom.dcmread(path, force=False)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise DicomSourceError(f"cannot read DICOM object {path}: {exc}") from exc
        if "PixelData" not in ds:
            raise DicomSourceError(f"{path} has no pixel data")
        self.dataset = ds
        self.syntax = UID(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
        self.frame_count = int(ds.get("NumberOfFrames", 1) or 1)
        self.video_syntax = self.syntax in MPEGTransferSyntaxes
        self.header = header_part10(ds)
        if self.syntax.is_compressed and not self.video_syntax and self.syntax not in FRAME_CODECS:
            supported = ["native (uncompressed)", "MPEG-2", "MPEG-4 AVC/H.264", "HEVC"]
            supported += sorted({UID(u).name for u in FRAME_CODECS})
            raise DicomSourceError(
                f"{path}: transfer syntax {self.syntax.name} is not supported; "
                f"supported: {', '.join(supported)}"
            )
        fps = _frame_rate(ds)
        width, height = int(ds.Columns), int(ds.Rows)
        if self.video_syntax:
            container = self._open_video()
            stream = container.streams.video[0]
            width = stream.codec_context.width or width
            height = stream.codec_context.height or height
            if not fps and stream.average_rate:
                fps = float(stream.average_rate)
            container.close()
        self.fps = fps or DEFAULT_FPS
        if not _frame_rate(ds) and not self.video_syntax:
            log.warning("%s states no frame time; replaying at %g fps", path, self.fps)
        mono = str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME")
        pix_fmt = "yuv420p" if self.syntax.is_compressed else "gray" if mono else "rgb24"
        if pix_fmt == "yuv420p":
            width, height = width - width % 2, height - height % 2
        self.format = VideoFormat(width, height, self.fps, pix_fmt)
        self.description = (
            f"DICOM {ds.get('Modality', '?')} {self.frame_count} frame(s) {width}x{height}"
            f"@{self.fps:g} ({self.syntax.name}) from {path}"
        )

    @classmethod
    def from_url(cls, url: str) -> DicomSource:
        parts = urlsplit(url.partition(":")[2])
        query = parse_qs(parts.query)
        loop = query.get("loop", ["0"])[0].lower() in ("1", "true", "yes", "on")
        return cls(Path(unquote(parts.path)), loop=loop)

    def counters(self) -> dict[str, int]:
        return dict(self._counters.values)

    def _open_video(self) -> Any:
        stream = b"".join(generate_fragments(self.dataset.PixelData))
        fmt = "hevc" if self.syntax in HEVC_SYNTAXES else None
        if self.syntax.name.startswith("MPEG-4 AVC"):
            fmt = "h264"
        try:
            return av.open(BytesIO(stream), "r", format=fmt)
        except av.FFmpegError as exc:
            raise DicomSourceError(f"{self.path}: undecodable video bitstream: {exc}") from exc

    def _pictures(self) -> Iterator[av.VideoFrame]:
        """Every frame of the object, decoded (runs in a worker thread)."""
        fmt = self.format
        if self.video_syntax:
            container = self._open_video()
            try:
                for packet in container.demux(video=0):
                    try:
                        yield from packet.decode()
                    except av.FFmpegError as exc:
                        if isinstance(exc, av.error.EOFError):
                            break
                        self._counters.add("decode_errors")
                        log.warning("%s: undecodable packet skipped (%s)", self.path, exc)
            finally:
                container.close()
        elif self.syntax.is_compressed:
            codec: Any = av.CodecContext.create(FRAME_CODECS[self.syntax], "r")
            frames = generate_fragmented_frames(
                self.dataset.PixelData, number_of_frames=self.frame_count
            )
            for fragments in frames:
                try:
                    yield from codec.decode(av.Packet(b"".join(fragments)))
                except av.FFmpegError as exc:
                    self._counters.add("decode_errors")
                    log.warning("%s: undecodable frame skipped (%s)", self.path, exc)
        else:
            for index in range(self.frame_count):
                array = pixel_array(self.dataset, index=index)
                yield _native_frame(array, self.dataset, fmt.pix_fmt)

    async def frames(self, ring: RingWriter) -> AsyncGenerator[SourceEvent, None]:
        ds = self.dataset
        context_at = 0.0
        seq = 0
        pacer = Pacer()
        fmt = self.format
        while True:
            pictures = ThreadedIterator(self._pictures(), lambda: None)
            pacer.reset()
            n = 0
            try:
                while (frame := await pictures.next()) is not None:
                    if time.monotonic() - context_at > CONTEXT_REPEAT_S:
                        context_at = time.monotonic()
                        yield Context(
                            part10=self.header,
                            capture_ns=time.time_ns(),
                            study_uid=str(ds.get("StudyInstanceUID", "")),
                            series_uid=str(ds.get("SeriesInstanceUID", "")),
                            modality=str(ds.get("Modality", "")),
                        )
                    await pacer.wait(n / self.fps)
                    n += 1
                    frame = await asyncio.to_thread(
                        conform, frame, fmt.width, fmt.height, fmt.pix_fmt
                    )
                    yield RawFrame(seq, time.time_ns(), filler(frame))
                    seq += 1
            finally:
                await pictures.close()
            if n == 0:
                raise DicomSourceError(f"{self.path}: no decodable frame")
            if not self.loop:
                log.info("%s: all %d frames replayed", self.path, n)
                return
            self._counters.add("loops")


def _native_frame(array: np.ndarray[Any, Any], ds: Dataset, pix_fmt: str) -> av.VideoFrame:
    """A native frame as PyAV frame: RGB (pydicom converts YBR) or 8-bit gray."""
    if array.dtype != np.uint8:
        bits = int(ds.get("BitsStored", 8))
        array = (array.astype(np.uint32) >> max(0, bits - 8)).clip(0, 255).astype(np.uint8)
    if array.ndim == 2:
        gray = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="gray")
        return gray if pix_fmt == "gray" else gray.reformat(format=pix_fmt)
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
