"""``orstream bench ingest``: frames in, frames lost and CPU of the ingest service for a source.

Starts NATS and the ingest service (its own process) on ``--source``. For an ``sdp:`` source the
bench also starts the sender the SDP describes — GStreamer's ``rtpvrawpay`` on loopback, an
RFC 4175 packetizer the project did not write — for exactly ``seconds x fps`` frames. CPU is the
ingest process's user + system time (``/proc/<pid>/stat``, all threads) over the window, divided
by the seconds of video: ``cpu_cores`` 1.0 means one core busy for the whole time.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orstream.bench.report import write_report
from orstream.cli.stack import Stack, StackConfig
from orstream.common.observability import HOP_INGEST_CAPTURE, HOP_INGEST_PUBLISH
from orstream.ingest.sdp import parse_session, raw_video

GST_FORMATS = {("YCbCr-4:2:2", 8): "UYVY", ("YCbCr-4:2:2", 10): "UYVP", ("RGB", 8): "RGB"}
#: After the sender's last frame, wait this long for the receiver to finish the frame in hand.
DRAIN_S = 0.5


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gst_sender(sdp_path: Path, seconds: float) -> tuple[list[str], int, float]:
    """The GStreamer command sending ``seconds`` of the flow ``sdp_path`` describes, its frame
    count and frame rate."""
    gst = shutil.which("gst-launch-1.0")
    if gst is None:
        raise SystemExit(
            "orstream bench ingest with an sdp: source needs GStreamer as the sender: apt-get "
            "install gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
        )
    session = parse_session(sdp_path.read_text())
    flow = session.video
    video = raw_video(flow)
    fmt = GST_FORMATS[(video.sampling, video.depth)]
    rate = f"{video.rate.numerator}/{video.rate.denominator}"
    frames = round(seconds * video.fps)
    cmd = [
        gst, "-q",
        "videotestsrc", f"num-buffers={frames}", "pattern=smpte", "is-live=true", "!",
        f"video/x-raw,format={fmt},width={video.width},height={video.height},framerate={rate}",
        "!", "rtpvrawpay", "mtu=1400", "!",
        "udpsink", f"host={flow.address}", f"port={flow.port}", "sync=false", "buffer-size=8388608",
    ]  # fmt: skip
    if flow.multicast:
        cmd += ["multicast-iface=lo", "bind-address=127.0.0.1"]
    return cmd, frames, video.fps


def run(source: str, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="orstream-bench-") as tmp:
        config = StackConfig(
            source=source,
            state_dir=Path(tmp) / "state",
            log_dir=Path(tmp) / "logs",
            services=("ingest",),
        )
        sender_cmd: list[str] | None = None
        if source.startswith("sdp:"):
            sdp_path = Path(source.removeprefix("sdp:").split("?")[0])
            sender_cmd, frames_expected, fps = gst_sender(sdp_path, seconds)
        with Stack(config) as stack:
            pid = stack.processes[0].popen.pid
            before = stack.stats("ingest")["counters"]
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            sender_cpu_s = 0.0
            if sender_cmd is not None:
                children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                sender = subprocess.Popen(sender_cmd, stderr=subprocess.PIPE)
                _, err = sender.communicate(timeout=seconds * 3 + 30)
                if sender.returncode != 0:
                    raise SystemExit(f"the sender failed: {err.decode(errors='replace')}")
                children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                sender_cpu_s = (children1.ru_utime - children0.ru_utime) + (
                    children1.ru_stime - children0.ru_stime
                )
                time.sleep(DRAIN_S)
                video_s = frames_expected / fps
            else:
                time.sleep(seconds)
                video_s = seconds
            cpu1, wall1 = cpu_seconds(pid), time.monotonic()
            stats = stack.stats("ingest")
    after = stats["counters"]

    def delta(name: str) -> int:
        return int(after.get(name, 0)) - int(before.get(name, 0))

    received = delta("frames_out")
    if sender_cmd is None:
        frames_expected = round(video_s * float(stats["fps"]))
    return {
        "name": "ingest",
        "config": {
            "source": source,
            "seconds": seconds,
            "sender": "gstreamer rtpvrawpay" if sender_cmd else None,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "results": {
            "frames_expected": frames_expected,
            "frames_received": received,
            "frames_dropped": delta("video_frames_dropped"),
            "packets_lost": delta("video_packets_lost"),
            "packets_received": delta("video_packets"),
            "packets_malformed": delta("video_packets_malformed"),
            "cpu_cores": round((cpu1 - cpu0) / video_s, 3),
            "wall_s": round(wall1 - wall0, 2),
            "sender_cpu_s": round(sender_cpu_s, 2),
            # RTP's last packet of a frame → frame complete in the ring; ring → notified
            "ingest_ms": stats["hops"][HOP_INGEST_CAPTURE],
            "ingest_publish_ms": stats["hops"][HOP_INGEST_PUBLISH],
        },
    }


def main(args: argparse.Namespace) -> int:
    report = run(args.source, args.seconds)
    write_report(report, args.json_path)
    return 0 if report["results"]["frames_received"] else 1


if __name__ == "__main__":
    sys.exit(main(argparse.Namespace(source="testpattern:", seconds=5, json_path="ingest.json")))
