"""``orstream bench metadata``: de-identification throughput and context latency to a peer.

Throughput: the typical OR context (a DICOM-RTV grain: patient, study, procedure, equipment
and the per-frame functional groups; ``orstream.common.samples``) read from Part 10 and
rendered as the student's de-identified DICOM JSON, every dataset distinct, timed on one
thread by process CPU time. End to end: grains published on ``meta.in`` with their capture
time reach the student's ``metadata`` DataChannel at a headless aiortc peer through a real
metadata service and edge; ``role_subject_ms`` is the first half (``meta.in`` → role subject).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from orstream.bench.report import write_report
from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig
from orstream.common.bus import Bus
from orstream.common.messages import ContextMeta
from orstream.common.policy import Policy
from orstream.common.samples import rtv_grain
from orstream.common.subjects import meta_in, meta_role
from orstream.common.telemetry import percentiles
from orstream.metadata.deid import Deidentifier
from orstream.metadata.intake import read_part10
from orstream.metadata.profiles import Profile
from orstream.metadata.pseudonyms import Pseudonyms
from orstream.metadata.views import DeidentifiedView, ViewSet
from orstream.viewer.probe import Probe

PROFILE = "basic+clean-descriptors"
RATE_HZ = 25.0


def throughput(count: int) -> dict[str, Any]:
    grains = [rtv_grain(i, study=1 + i % 7) for i in range(count)]
    pseudonyms = Pseudonyms(os.urandom(32))
    view = DeidentifiedView(Deidentifier(Profile.parse(PROFILE), pseudonyms))
    started = time.process_time()
    for grain in grains:
        view.render(read_part10(grain))
    one = time.process_time() - started
    views = ViewSet(Policy.load(), pseudonyms)
    started = time.process_time()
    for grain in grains:
        views.render(read_part10(grain))
    every = time.process_time() - started
    return {
        "datasets_per_s_per_core": round(count / one, 1),
        "all_roles_datasets_per_s_per_core": round(count / every, 1),
        "us_per_dataset": round(one / count * 1e6, 1),
        "dataset_bytes": len(grains[0]),
        "datasets": count,
    }


async def end_to_end(seconds: float, state_dir: Path) -> dict[str, Any]:
    config = StackConfig(
        site=f"bm{uuid.uuid4().hex[:6]}",
        source="testpattern:?size=320x180&fps=10",
        state_dir=state_dir,
        log_dir=state_dir / "logs",
        ice_host_addresses=["127.0.0.1"],
        services=("ingest", "metadata", "signaling"),
    )
    os.environ["ORSTREAM_STATE_DIR"] = str(state_dir)
    stack = Stack(config)
    await asyncio.to_thread(stack.start)
    try:
        site, room = config.site, config.room
        bus = await Bus.connect(stack.nats_url, "bench")
        subject_ms: list[float] = []

        async def on_role(msg: Any) -> None:
            capture = int(msg.headers["Orstream-Capture-Ns"])
            subject_ms.append((time.time_ns() - capture) / 1e6)

        await bus.subscribe(meta_role(site, room, "student"), on_role)
        token = make_token("student", [f"{site}/*"])
        async with Probe(stack.whep_url(), token, metadata=True) as probe:
            await asyncio.sleep(1.0)  # the channel opens after DTLS and SCTP
            probe.metadata.clear()
            subject_ms.clear()
            grains = [rtv_grain(i) for i in range(int(seconds * RATE_HZ))]
            next_at = time.monotonic()
            for i, grain in enumerate(grains):
                meta = ContextMeta(
                    stream=f"{site}.{room}.endoscope",
                    capture_ns=time.time_ns(),
                    rtp_ts=i,
                    flow="bench",
                )
                await bus.publish(meta_in(site, room), grain, meta.to_headers())
                next_at += 1 / RATE_HZ
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.sleep(1.0)
            received = [m.latency_ms for m in probe.metadata if m.message["source"] == "rtv"]
        await bus.close()
        return {
            "end_to_end_ms": percentiles(received),
            "role_subject_ms": percentiles(subject_ms),
            "sent": len(grains),
            "received": len(received),
        }
    finally:
        await asyncio.to_thread(stack.stop)


def run(seconds: float, count: int, state_dir: Path) -> dict[str, Any]:
    results = throughput(count)
    results.update(asyncio.run(end_to_end(seconds, state_dir)))
    return {
        "name": "metadata",
        "config": {
            "profile": PROFILE,
            "dataset": "synthetic DICOM-RTV grain (orstream.common.samples.rtv_grain)",
            "rate_hz": RATE_HZ,
            "seconds": seconds,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "results": results,
    }


def main(args: argparse.Namespace) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="orstream-bench-") as state:
        report = run(args.seconds, args.datasets, Path(state))
    write_report(report, args.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(argparse.Namespace(seconds=10, datasets=2000, json_path="metadata.json")))
