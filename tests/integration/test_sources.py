"""``orstream up --source …`` with a file, a DICOM multi-frame object, the test pattern and an
ST 2110-20 flow (from GStreamer): every stream reaches a WHEP viewer, decoded at its size."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orstream.cli.main import make_token
from orstream.cli.stack import free_port
from orstream.viewer.probe import Probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _frames(url: str, token: str, seconds: float) -> tuple[int, tuple[int, int]]:
    async with Probe(url, token) as probe:
        result = await probe.measure(seconds)
    return result.frames_decoded, result.size


def test_every_kind_of_source_plays_through_orstream_up(
    state_dir: Path, tmp_path: Path, video_file: Path, dicom_h264: Path, dicom_native: Path,
    st2110_sdp, gst_flow,
) -> None:  # fmt: skip
    rtp_port = _udp_port()
    sdp = tmp_path / "camera.sdp"
    sdp.write_text(st2110_sdp(rtp_port, 320, 180, "25", 10))
    sources = {
        "endoscope": f"file:{video_file}?loop=1",
        "archive": f"dicom:{dicom_h264}?loop=1",
        "ultrasound": f"dicom:{dicom_native}?loop=1",
        "pattern": "testpattern:?size=640x360&fps=25",
        "camera": f"sdp:{sdp}",
    }
    env = {k: v for k, v in os.environ.items() if k != "ORSTREAM_NATS_URL"}
    env["ORSTREAM_ICE_HOST_ADDRESSES"] = json.dumps(["127.0.0.1"])
    edge_port = free_port()
    args = [f"--source={name}={url}" for name, url in sources.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "orstream.cli.main", "up", "--room", "srcroom", *args,
         "--viewer-port", "0", "--edge-port", str(edge_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        assert "Ctrl-C stops everything" in output, output[-3000:]
        assert "Other streams of the room: add ?stream=NAME" in output
        flow = gst_flow(rtp_port, 320, 180, 25, 10, 150)
        token = make_token("expert", ["site1/srcroom"])
        edge = f"http://127.0.0.1:{edge_port}"
        request = urllib.request.Request(
            f"{edge}/api/v1/streams", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            listed = {s["stream"]: s for s in json.loads(r.read())["streams"]}
        assert set(listed) == set(sources)
        assert listed["archive"]["modality"] == "ES"

        async def watch_all() -> dict[str, tuple[int, tuple[int, int]]]:
            results = await asyncio.gather(
                *(_frames(f"{edge}/whep/site1/srcroom/{name}", token, 4.0) for name in sources)
            )
            return dict(zip(sources, results, strict=True))

        seen = asyncio.run(watch_all())
        asyncio.run(flow.wait())
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest[-3000:]
    assert "Traceback" not in rest, rest[-3000:]
    sizes = {
        "endoscope": (320, 240),
        "archive": (320, 240),
        "ultrasound": (320, 240),
        "pattern": (640, 360),
        "camera": (320, 180),
    }
    for name, (frames, size) in seen.items():
        assert frames >= 20, f"{name}: only {frames} frames decoded in 4 s"
        assert size == sizes[name], f"{name}: decoded at {size}"
    assert re.search(r"camera ← sdp:", "".join(lines))
