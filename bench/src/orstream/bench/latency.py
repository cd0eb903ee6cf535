"""``orstream bench latency``: glass-to-glass latency of the real stack into headless probes.

Starts the whole stack (embedded NATS, every service as its own process), connects ``--peers``
probes over WHEP, discards a warm-up, then records every decoded frame's burned-in timecode for
``--seconds``. Per-hop latencies come from each service's ``/stats`` over the same window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orstream.bench.report import write_report
from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig
from orstream.common.telemetry import percentiles
from orstream.viewer.probe import FrameSample, Probe


async def _run_probes(
    stack: Stack, token: str, peers: int, warmup_s: float, seconds: float
) -> tuple[list[list[FrameSample]], int]:
    probes: list[Probe] = []
    try:
        for _ in range(peers):
            probes.append(await _connect(stack, token))
    except BaseException:
        await asyncio.gather(*(p.close() for p in probes), return_exceptions=True)
        raise
    try:
        await asyncio.gather(*(p.measure(warmup_s) for p in probes))
        for p in probes:
            p.result.samples.clear()
        window_start_ns = time.time_ns()
        await asyncio.gather(*(p.measure(seconds) for p in probes))
        return [p.result.samples for p in probes], window_start_ns
    finally:
        await asyncio.gather(*(p.close() for p in probes), return_exceptions=True)


async def _connect(stack: Stack, token: str) -> Probe:
    probe = Probe(stack.whep_url(), token)
    try:
        await probe.connect()
    except BaseException:
        await probe.close()
        raise
    return probe


def run(seconds: float, warmup_s: float, resolution: str, fps: float, peers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="orstream-bench-") as tmp:
        config = StackConfig(
            source=f"testpattern:?size={resolution}&fps={fps:g}",
            state_dir=Path(tmp) / "state",
            log_dir=Path(tmp) / "logs",
            ice_host_addresses=["127.0.0.1"],
            services=("ingest", "encoder", "signaling"),
        )
        os.environ["ORSTREAM_STATE_DIR"] = str(config.state_dir)
        with Stack(config) as stack:
            token = make_token("surgeon", [f"{config.site}/*"])
            per_peer, start_ns = asyncio.run(_run_probes(stack, token, peers, warmup_s, seconds))
            ingest = stack.stats("ingest", start_ns)
            encoder = stack.stats("encoder", start_ns)
            edge = stack.stats("signaling", start_ns)
    key = stack.stream.key
    samples = [s for peer in per_peer for s in peer]
    sent = 0
    received = 0
    for peer in per_peer:
        seqs = {s.seq for s in peer}
        if seqs:
            sent += max(seqs) - min(seqs) + 1
            received += len(seqs)
    hops: dict[str, Any] = {
        "ingest": ingest["hops"]["ingest"],
        "encoder": encoder["streams"].get(key, {}).get("encoder", {}),
        "encode": encoder["streams"].get(key, {}).get("encode", {}),
        # notification → the encode thread took the frame (inside the encoder hop)
        "encoder_queue": encoder["streams"].get(key, {}).get("queue", {}),
        "nats": edge["streams"].get(key, {}).get("nats", {}),
        "edge": edge["streams"].get(key, {}).get("edge", {}),
    }
    return {
        "name": "latency",
        "config": {
            "seconds": seconds,
            "warmup_s": warmup_s,
            "resolution": resolution,
            "fps": fps,
            "peers": peers,
            "source": config.source,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "results": {
            "glass_to_glass_ms": percentiles(s.latency_ms for s in samples),
            "frames_sent": sent,
            "frames_received": received,
            "received_ratio": round(received / sent, 4) if sent else 0.0,
            "hops": hops,
            "counters": {"encoder": encoder["counters"], "edge": edge["counters"]},
        },
    }


def main(args: argparse.Namespace) -> int:
    report = run(args.seconds, args.warmup, args.resolution, args.fps, args.peers)
    write_report(report, args.json_path)
    return 0 if report["results"]["frames_received"] else 1


if __name__ == "__main__":
    sys.exit(
        main(
            argparse.Namespace(
                seconds=10,
                warmup=2,
                resolution="1280x720",
                fps=50,
                peers=1,
                json_path="latency.json",
            )
        )
    )
