"""``orstream bench latency``: glass-to-glass latency of the real stack into headless probes.

Starts the whole stack (embedded NATS, every service as its own process), connects ``--peers``
probes over WHEP, discards a warm-up, then records every decoded frame's burned-in timecode for
``--seconds``. Per-hop latencies come from each service's ``/stats`` over the same window, in
the path's order (:data:`orstream.common.observability.HOPS`); the last hop, ``viewer``, is
measured here for every frame: the probe decoded it (``received_ns``) minus the edge's last RTP
packet of it to its last peer (the edge's ``frames``, joined on ``capture_ns``). With several
peers the last peer's send is the reference, so an earlier peer's ``viewer`` can be negative;
the hops still add up frame by frame. ``results.hops_extra`` holds figures beside the path
(the encoder's queue delay inside ``encoder.read``, the AU to the 10th peer), not to be added.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orstream.bench.report import write_report
from orstream.cli.latency import path_hops
from orstream.cli.main import make_token
from orstream.cli.stack import Stack, StackConfig
from orstream.common.observability import HOP_VIEWER, HOPS
from orstream.common.subjects import SOURCE_RENDITION
from orstream.common.telemetry import percentiles
from orstream.viewer.probe import FrameSample, Probe

STATS_TIMEOUT_S = 10.0


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


def edge_stats(stack: Stack, since_ns: int) -> dict[str, Any]:
    """The edge's ``/stats`` with each AU's capture and last-sent times (``frames``)."""
    url = f"{stack.stats_url('signaling')}?since_ns={since_ns}&frames=1"
    with urllib.request.urlopen(url, timeout=STATS_TIMEOUT_S) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def viewer_ms(samples: Iterable[FrameSample], edge_frames: Iterable[list[int]]) -> list[float]:
    """Per decoded frame: the probe's ``received_ns`` minus the edge's last RTP packet of it."""
    last_sent_ns = {int(capture_ns): int(sent_ns) for capture_ns, sent_ns in edge_frames}
    return [
        (s.received_ns - last_sent_ns[s.capture_ns]) / 1e6
        for s in samples
        if s.capture_ns in last_sent_ns
    ]


def hop_sum(hops: dict[str, Any], stat: str) -> float | None:
    """The path's hops' ``stat`` added up (None while a hop has none)."""
    values = [hops[hop].get(stat) for hop in HOPS]
    if any(not isinstance(v, int | float) for v in values):
        return None
    return round(sum(float(v) for v in values), 3)


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
            edge = edge_stats(stack, start_ns)
    key = stack.stream.key
    samples = [s for peer in per_peer for s in peer]
    sent = 0
    received = 0
    for peer in per_peer:
        seqs = {s.seq for s in peer}
        if seqs:
            sent += max(seqs) - min(seqs) + 1
            received += len(seqs)
    # The probes watch the source rendition.
    hops, extras = path_hops(ingest, encoder, edge, key, SOURCE_RENDITION)
    edge_frames = (
        edge.get("streams", {}).get(key, {}).get("renditions", {}).get(SOURCE_RENDITION, {})
    ).get("frames", [])
    hops[HOP_VIEWER] = percentiles(viewer_ms(samples, edge_frames))
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
            # the path, hop after hop: their means add up to glass_to_glass_ms's mean
            "hops": hops,
            "hop_sum_p50_ms": hop_sum(hops, "p50"),
            "hop_sum_mean_ms": hop_sum(hops, "mean"),
            # beside the path, not part of the sum
            "hops_extra": extras,
            "counters": {"encoder": encoder.get("counters", {}), "edge": edge.get("counters", {})},
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
