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


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metadata_grains_are_published_tied_to_their_frames(
    tmp_path: Path, run_ingest, st2110_sdp, rtv_sender
) -> None:
    video_port, metadata_port = udp_port(), udp_port()
    sdp = tmp_path / "endoscope.sdp"
    sdp.write_text(st2110_sdp(video_port, WIDTH, HEIGHT, "25", 8, metadata_port=metadata_port))
    base = 0x7FFF0000
    sender = rtv_sender(video_port, metadata_port, width=WIDTH, height=HEIGHT)
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


async def test_repeated_or_reordered_packets_never_make_a_torn_or_lost_frame(
    tmp_path: Path, run_ingest, st2110_sdp, rtv_sender
) -> None:
    video_port = udp_port()
    sdp = tmp_path / "camera.sdp"
    sdp.write_text(st2110_sdp(video_port, WIDTH, HEIGHT, "25", 8))
    sender = rtv_sender(video_port, udp_port(), width=WIDTH, height=HEIGHT)
    base = 1000

    def packets(ts: int, luma: int, lines: list[int]) -> list[bytes]:
        out = []
        for n, line in enumerate(lines):
            marker = 0x80 if n == len(lines) - 1 else 0
            header = RTP.pack(0x80, 96 | marker, sender.video_seq, ts, 7)
            sender.video_seq = (sender.video_seq + 1) & 0xFFFF
            segment = struct.pack("!HHHH", 0, WIDTH * 2, line, 0)
            out.append(header + segment + bytes([128, luma]) * WIDTH)
        return out

    try:
        async with run_ingest(f"sdp:{sdp}", lambda view, info: bytes(view)) as run:
            sender.frame(base, luma=10)  # a good frame
            # In sequence, right byte count, but line 6 is line 5 again: line 6 is not covered.
            torn = packets(base + FRAME_TICKS, 20, [0, 1, 2, 3, 4, 5, 5, *range(7, HEIGHT)])
            # Frame 3's marker packet arrives after frame 4's first packet (reordered).
            third = packets(base + 2 * FRAME_TICKS, 30, list(range(HEIGHT)))
            fourth = packets(base + 3 * FRAME_TICKS, 40, list(range(HEIGHT)))
            for datagram in [*torn, *third[:-1], fourth[0], third[-1], *fourth[1:]]:
                sender.sock.sendto(datagram, sender.video)
            sender.frame(base + 4 * FRAME_TICKS, luma=50)
            await run.until(lambda: len(run.frames) >= 3, 5, "the good frames")
            await asyncio.sleep(0.2)
            counters = run.service.stats(0)["counters"]
    finally:
        sender.close()
    lumas = [picture[1] for _, picture in run.frames]
    assert lumas == [10, 40, 50], "the torn and the reordered frame were dropped, nothing else"
    for _, picture in run.frames:
        assert len(set(picture[1::2])) == 1, "every line of a committed frame is from that frame"
    assert counters["video_frames_dropped"] == 2
    assert counters["video_packets_late"] == 1


async def test_a_grain_with_a_malformed_identifier_does_not_stop_the_flow(
    tmp_path: Path, run_ingest, st2110_sdp, rtv_sender
) -> None:
    video_port, metadata_port = udp_port(), udp_port()
    sdp = tmp_path / "endoscope.sdp"
    sdp.write_text(st2110_sdp(video_port, WIDTH, HEIGHT, "25", 8, metadata_port=metadata_port))
    good = grain(1)
    ds = pydicom.dcmread(BytesIO(good))
    ds.file_meta["RTVFlowIdentifier"].VR = "UI"
    ds.file_meta.RTVFlowIdentifier = "1.2.3.4.5.6.7.8"
    out = BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    sender = rtv_sender(video_port, metadata_port, width=WIDTH, height=HEIGHT)
    try:
        async with run_ingest(f"sdp:{sdp}") as run:
            sender.grain(1000, out.getvalue())
            sender.grain(1000 + FRAME_TICKS, good)
            await run.until(lambda: len(run.contexts) >= 2, 5, "both grains")
    finally:
        sender.close()
    flows = [ContextMeta.from_headers(headers).flow for headers, _ in run.contexts]
    assert flows == ["", str(FLOW)], "an identifier that is not 16 bytes is no UUID"
