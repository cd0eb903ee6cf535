"""A DICOM-RTV metadata flow built per PS3.22 beside its video flow: grains are reassembled,
read with pydicom, tied to their video frame and published on ``meta.in``; damaged ones are not."""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from orstream.common.dicomrtv import (
    CURRENT_FRAME_FUNCTIONAL_GROUPS,
    ST2110_20_PROGRESSIVE,
    VIDEO_ENDOSCOPIC_RTV,
)
from orstream.common.messages import ContextMeta

pytestmark = pytest.mark.integration

RTP = struct.Struct("!BBHII")
WIDTH, HEIGHT = 64, 16
SOURCE = uuid.UUID("6f1c5a52-1d0b-4c3e-9a57-7d0c9b1f2a01")
FLOW = uuid.UUID("0b7a3c9e-55c2-4f0e-8d3d-2f6f4b8e9c02")
FRAME_TICKS = 3600  # 90 kHz / 25 fps


def grain(index: int) -> bytes:
    """One frame's metadata: preamble, DICM, RTV Meta Information, static + dynamic dataset."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ST2110_20_PROGRESSIVE  # the video flow's; metadata is Explicit LE
    meta.MediaStorageSOPClassUID = VIDEO_ENDOSCOPIC_RTV
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.2001"
    meta.RTVMetaInformationVersion = b"\x00\x01"
    meta.RTVCommunicationSOPClassUID = VIDEO_ENDOSCOPIC_RTV
    meta.RTVCommunicationSOPInstanceUID = "1.2.826.0.1.3680043.8.498.2001"
    meta.RTVSourceIdentifier = SOURCE.bytes
    meta.RTVFlowIdentifier = FLOW.bytes
    meta.RTVFlowRTPSamplingRate = 90000
    meta.RTVFlowActualFrameDuration = 40.0
    ds = Dataset()
    ds.file_meta = meta
    item = Dataset()
    content = Dataset()
    content.FrameAcquisitionNumber = index
    item.FrameContentSequence = [content]
    ds.add_new(CURRENT_FRAME_FUNCTIONAL_GROUPS, "SQ", [item])
    ds.SOPClassUID = VIDEO_ENDOSCOPIC_RTV
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2001"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-0042"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.3001"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3002"
    ds.Modality = "ES"
    ds.Manufacturer = "Endoscopy Co"
    out = BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


class Sender:
    """Video (RFC 4175, one line per packet) and metadata flows of one DICOM-RTV source."""

    def __init__(self, video_port: int, metadata_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.video = ("127.0.0.1", video_port)
        self.metadata = ("127.0.0.1", metadata_port)
        self.video_seq = 1000
        self.meta_seq = 50000

    def close(self) -> None:
        self.sock.close()

    def frame(self, ts: int, luma: int) -> None:
        line_bytes = WIDTH * 2
        for line in range(HEIGHT):
            header = RTP.pack(0x80, 96 | (0x80 if line == HEIGHT - 1 else 0), self.video_seq, ts, 7)
            segment = struct.pack("!HHHH", 0, line_bytes, line, 0)
            self.sock.sendto(header + segment + bytes([128, luma]) * WIDTH, self.video)
            self.video_seq = (self.video_seq + 1) & 0xFFFF

    def grain(self, ts: int, payload: bytes, skip_packet: int | None = None) -> None:
        chunks = [payload[i : i + 300] for i in range(0, len(payload), 300)]
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            # The first packet carries an RTP header extension (RFC 8285 one-byte form), as
            # ST 2110-10 / NMOS senders put their identity and timing extensions there.
            first = n == 0
            b0 = 0x90 if first else 0x80
            header = RTP.pack(b0, 104 | (0x80 if last else 0), self.meta_seq, ts, 9)
            if first:
                header += struct.pack("!HH", 0xBEDE, 1) + b"\x00" * 4
            if n != skip_packet:
                self.sock.sendto(header + chunk, self.metadata)
            self.meta_seq = (self.meta_seq + 1) & 0xFFFF


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metadata_grains_are_published_tied_to_their_frames(
    tmp_path: Path, run_ingest, st2110_sdp
) -> None:
    video_port, metadata_port = udp_port(), udp_port()
    sdp = tmp_path / "endoscope.sdp"
    sdp.write_text(st2110_sdp(video_port, WIDTH, HEIGHT, "25", 8, metadata_port=metadata_port))
    base = 0x7FFF0000
    sender = Sender(video_port, metadata_port)
    try:
        async with run_ingest(f"sdp:{sdp}", lambda view, info: bytes(view[1:2])) as run:
            assert "DICOM-RTV metadata" in run.service.source.description
            payload = grain(0)
            assert len(payload) > 600, "the grain spans several RTP packets"
            for i in range(10):
                sender.frame(base + i * FRAME_TICKS, luma=100 + i)
                sender.grain(base + i * FRAME_TICKS, grain(i))
                await asyncio.sleep(0.04)
            # A corrupt grain and a grain that lost a packet are dropped, not published.
            corrupt = payload[:132] + b"\x08\x00\x05\x00CS\xff\xff" + b"\x00" * 50
            sender.grain(base + 10 * FRAME_TICKS, corrupt)
            sender.grain(base + 11 * FRAME_TICKS, grain(11), skip_packet=1)
            sender.grain(base + 12 * FRAME_TICKS, grain(12))
            await run.until(lambda: len(run.contexts) >= 11, 5, "the grains on meta.in")
            await asyncio.sleep(0.2)
            counters = run.service.stats(0)["counters"]
            d = await run.descriptor()
    finally:
        sender.close()
    assert len(run.frames) == 10
    seq_of_ts = {base + i * FRAME_TICKS: note.seq for i, (note, _) in enumerate(run.frames)}
    assert [luma for _, luma in run.frames] == [bytes([100 + i]) for i in range(10)]
    assert len(run.contexts) == 11
    for i, (headers, part10) in enumerate(run.contexts):
        meta = ContextMeta.from_headers(headers)
        index = i if i < 10 else 12
        assert meta.rtp_ts == base + index * FRAME_TICKS
        assert meta.flow == str(FLOW)
        assert meta.seq == seq_of_ts.get(meta.rtp_ts), "tied to the frame with its timestamp"
        ds = pydicom.dcmread(BytesIO(part10))
        assert ds.PatientName == "Doe^Jane"
        assert ds.file_meta.RTVSourceIdentifier == SOURCE.bytes
        current = ds[CURRENT_FRAME_FUNCTIONAL_GROUPS].value[0]
        assert current.FrameContentSequence[0].FrameAcquisitionNumber == index
    assert counters["metadata_frames_complete"] == 11
    assert counters["metadata_frames_dropped"] == 2
    assert counters["metadata_packets_lost"] == 1
    assert d is not None
    assert (d.study_uid, d.series_uid, d.modality) == (
        "1.2.826.0.1.3680043.8.498.3001",
        "1.2.826.0.1.3680043.8.498.3002",
        "ES",
    )
