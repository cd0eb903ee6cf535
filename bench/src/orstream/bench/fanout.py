"""``orstream bench fanout``: peers per edge core with encode-once fan-out, against aiortc alone.

One 720p50 H.264 stream at ~3 Mbit/s (the synthetic endoscope, encoded once ahead of time with
the encoder's libx264 settings and replayed live on NATS, :mod:`orstream.bench.replay`) goes
through a real edge to ``--peers`` real WebRTC peers; then, in the same run, the baseline: aiortc
alone, ``--baseline-peers`` peers each with its own encoder fed raw 720p50 frames.
Every part is its own process, so the sender's CPU is measured alone::

    bench (this process): nats-server child, the AU replay, the orchestration
      ├─ edge      python -m orstream.bench.fanout_edge      the signaling service, measured
      ├─ peers     python -m orstream.bench.rtpsink (n of)   WHEP + ICE + DTLS + SRTP, no decode
      └─ baseline  python -m orstream.bench.fanout_baseline  aiortc encoding per peer, measured

After the peers are in and a warm-up, the window opens: the sender's CPU seconds (``/proc``,
all its threads) and each peer's counters are read at both ends. ``peers_per_core`` is the
peers served at full frame rate (a peer that got 80 % of the frames counts 0.8) per core of
sender CPU; ``au_to_last_packet_ms`` is, per AU, the time from the edge receiving it to its last
RTP packet leaving for the 10th peer (the edge times it, ``StreamLatency.delivery``; with fewer
peers, the last one). ``--compare-packetization`` measures the fan-out a second time with every
peer packetizing each AU itself, as aiortc does alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from orstream.bench.fanout_edge import PER_PEER_PACKETIZATION_ENV, PROFILE_ENV
from orstream.bench.replay import AccessUnitReplay, Clip, encode_clip
from orstream.bench.report import write_report
from orstream.cli.main import make_token
from orstream.cli.stack import EmbeddedNats, free_port
from orstream.common.bus import Bus
from orstream.common.messages import StreamDescriptor, StreamState
from orstream.common.process import die_with_parent
from orstream.common.registry import Registry
from orstream.common.subjects import StreamId
from orstream.signaling.track import DELIVERY_RANK

WIDTH, HEIGHT, FPS = 1280, 720, 50.0
BITRATE_BPS = 3_000_000
#: The replayed clip: IDR every second, as the encoder service sends by default.
GOP_S = 1.0
CLIP_S = 6.0
SITE, ROOM, STREAM = "bench", "or1", "fanout"
DEFAULT_PEERS_PER_PROCESS = 50
READY_TIMEOUT_S = 60.0
#: Per peer, on top of a fixed allowance, for all of a sink process's peers to be receiving.
CONNECT_ALLOWANCE_S = 1.0
COMMAND_TIMEOUT_S = 15.0
STOP_GRACE_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of process ``pid`` and all its threads so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


@dataclass
class Child:
    """A child process of the bench; its output goes to a log file unless piped."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path

    def tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


async def spawn(
    name: str, module: str, args: list[str], env: dict[str, str], logs: Path, piped: bool = False
) -> Child:
    log_path = logs / f"{name}.log"
    log_file: IO[bytes]
    with log_path.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE if piped else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if piped else log_file,
            stderr=log_file,
            preexec_fn=die_with_parent,
        )
    return Child(name, proc, log_path)


async def wait_ready(child: Child, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with httpx.AsyncClient(timeout=1.0) as http:
        while time.monotonic() < deadline:
            if child.proc.returncode is not None:
                raise RuntimeError(f"{child.name} exited ({child.proc.returncode})\n{child.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready after {READY_TIMEOUT_S:g} s\n{child.tail()}")


class Sink:
    """A process of counting peers (:mod:`orstream.bench.rtpsink`), driven over its stdio."""

    def __init__(self, child: Child, peers: int) -> None:
        self.child = child
        self.peers = peers

    async def _line(self, timeout_s: float) -> dict[str, Any]:
        stdout = self.child.proc.stdout
        assert stdout is not None
        line = await asyncio.wait_for(stdout.readline(), timeout_s)
        if not line:
            raise RuntimeError(f"{self.child.name} exited\n{self.child.tail()}")
        event: dict[str, Any] = json.loads(line)
        return event

    async def ready(self) -> dict[str, Any]:
        return await self._line(READY_TIMEOUT_S + CONNECT_ALLOWANCE_S * self.peers)

    async def mark(self) -> dict[str, Any]:
        stdin = self.child.proc.stdin
        assert stdin is not None
        stdin.write(b"mark\n")
        await stdin.drain()
        return await self._line(COMMAND_TIMEOUT_S)

    async def quit(self) -> None:
        stdin = self.child.proc.stdin
        if stdin is not None and self.child.proc.returncode is None:
            with contextlib.suppress(ConnectionError):
                stdin.write(b"quit\n")
                await stdin.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.child.proc.wait(), STOP_GRACE_S)
        await self.child.stop()


@dataclass
class Window:
    """What one sender did for its peers over the measured window."""

    seconds: float
    sender_cpu_s: float
    #: The part of it spent in the kernel (mostly sending UDP: on loopback, receiving too).
    sender_system_s: float
    sink_cpu_s: float
    start_ns: int
    peers: list[dict[str, int]]
    connected: int
    failed: int
    errors: list[str]
    #: AUs the source published during the window (None: the sender is its own source).
    aus_published: int | None = None


async def measure(
    sender: Child,
    whep_url: str,
    tokens: list[str],
    peers: int,
    per_process: int,
    warmup_s: float,
    seconds: float,
    env: dict[str, str],
    logs: Path,
    published: Callable[[], int] | None = None,
) -> Window:
    """Connect ``peers`` counting peers to ``sender``, warm up, and measure one window.

    ``tokens``: one per peer (each its own viewer), or one for all; ``published`` counts the
    AUs the source has sent so far, when it is not the sender.
    """
    processes = max(1, math.ceil(peers / per_process))
    shares = [peers // processes + (i < peers % processes) for i in range(processes)]
    starts = [sum(shares[:i]) for i in range(processes)]
    lifetime = READY_TIMEOUT_S + CONNECT_ALLOWANCE_S * peers + warmup_s + seconds + 60
    sinks: list[Sink] = []
    try:
        for i, (share, start) in enumerate(zip(shares, starts, strict=True)):
            args = [whep_url, "--peers", str(share), "--lifetime", f"{lifetime}"]
            if len(tokens) == 1:
                args += ["--token", tokens[0]]
            else:
                tokens_file = logs / f"{sender.name}-peers{i}.tokens"
                tokens_file.write_text("\n".join(tokens[start : start + share]) + "\n")
                args += ["--tokens", str(tokens_file)]
            child = await spawn(
                f"{sender.name}-peers{i}", "orstream.bench.rtpsink", args, env, logs, piped=True
            )
            sinks.append(Sink(child, share))
        ready = await asyncio.gather(*(s.ready() for s in sinks))
        connected = sum(r["connected"] for r in ready)
        if not connected:
            errors = [e for r in ready for e in r["errors"]]
            raise RuntimeError(f"no peer connected to {sender.name}: {errors[:3]}\n{sender.tail()}")
        await asyncio.sleep(warmup_s)
        start_ns = time.time_ns()
        cpu0 = cpu_seconds(sender.proc.pid)
        t0 = time.monotonic()
        aus0 = published() if published else 0
        before = await asyncio.gather(*(s.mark() for s in sinks))
        await asyncio.sleep(seconds)
        after = await asyncio.gather(*(s.mark() for s in sinks))
        aus1 = published() if published else 0
        cpu1 = cpu_seconds(sender.proc.pid)
        window_s = time.monotonic() - t0
        per_peer = [
            {k: b[k] - a[k] for k in b}
            for m0, m1 in zip(before, after, strict=True)
            for a, b in zip(m0["peers"], m1["peers"], strict=True)
        ]
        return Window(
            seconds=window_s,
            sender_cpu_s=sum(cpu1) - sum(cpu0),
            sender_system_s=cpu1[1] - cpu0[1],
            sink_cpu_s=sum(m1["cpu_s"] - m0["cpu_s"] for m0, m1 in zip(before, after, strict=True)),
            start_ns=start_ns,
            peers=per_peer,
            connected=connected,
            failed=sum(r["failed"] for r in ready),
            errors=[e for r in ready for e in r["errors"]][:5],
            aus_published=aus1 - aus0 if published else None,
        )
    finally:
        await asyncio.gather(*(s.quit() for s in sinks), return_exceptions=True)


def summarize(window: Window, frames_expected: float) -> dict[str, Any]:
    """Per-core figures of one sender; ``frames_expected`` per peer over the window."""
    n = len(window.peers)
    cores = window.sender_cpu_s / window.seconds
    frames = [p["frames"] for p in window.peers]
    full_rate = sum(min(1.0, f / frames_expected) for f in frames) if frames_expected else 0.0
    packets = sum(p["packets"] for p in window.peers)
    return {
        "peers": n,
        "peers_failed": window.failed,
        "full_rate_peers": round(full_rate, 2),
        "cpu_cores": round(cores, 3),
        "cpu_system_share": round(window.sender_system_s / window.sender_cpu_s, 3)
        if window.sender_cpu_s
        else None,
        "cpu_per_peer_pct": round(100 * cores / n, 2) if n else None,
        "peers_per_core": round(full_rate / cores, 1) if cores else None,
        "window_s": round(window.seconds, 2),
        "frames_expected_per_peer": round(frames_expected),
        "frames_received": sum(frames),
        "frames_received_min_peer": min(frames, default=0),
        "packets_received": packets,
        "packets_lost": sum(p["lost"] for p in window.peers),
        "packets_late": sum(p["late"] for p in window.peers),
        "received_ratio": round(sum(frames) / (n * frames_expected), 4)
        if n and frames_expected
        else 0.0,
        "mbps_per_peer": round(
            sum(p["bytes"] for p in window.peers) * 8 / window.seconds / n / 1e6, 2
        )
        if n
        else 0.0,
        "peer_processes_cpu_cores": round(window.sink_cpu_s / window.seconds, 3),
        "errors": window.errors,
    }


def base_env(nats_url: str, state_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ORSTREAM_NATS_URL": nats_url,
            "ORSTREAM_SITE": SITE,
            "ORSTREAM_STATE_DIR": str(state_dir),
            "ORSTREAM_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def fanout_phase(
    args: argparse.Namespace,
    clip: Clip,
    nats_url: str,
    state_dir: Path,
    logs: Path,
    per_peer_packetization: bool = False,
) -> dict[str, Any]:
    """The edge, its replayed stream and ``args.peers`` peers; one measured window."""
    stream = StreamId(SITE, ROOM, STREAM)
    env = base_env(nats_url, state_dir)
    # One viewer per peer: the edge limits WHEP offers per identity.
    tokens = [
        make_token("surgeon", [f"{SITE}/*"], subject=f"bench-viewer-{i}") for i in range(args.peers)
    ]
    port = free_port()
    edge_env = env | {
        "ORSTREAM_HTTP_HOST": "127.0.0.1",
        "ORSTREAM_HTTP_PORT": str(port),
        "ORSTREAM_ICE_HOST_ADDRESSES": json.dumps(["127.0.0.1"]),
        PER_PEER_PACKETIZATION_ENV: "1" if per_peer_packetization else "0",
    }
    if args.profile and not per_peer_packetization:
        edge_env[PROFILE_ENV] = args.profile  # made absolute by run()
    bus = await Bus.connect(nats_url, "orstream-bench-fanout")
    stop = asyncio.Event()
    replay = AccessUnitReplay(bus, stream, clip)
    replaying: asyncio.Task[None] | None = None
    edge: Child | None = None
    try:
        registry = await Registry.open(bus)
        await registry.announce(
            StreamDescriptor(
                site=SITE,
                room=ROOM,
                stream=STREAM,
                source="bench replay",
                width=clip.width,
                height=clip.height,
                fps=clip.fps,
                pix_fmt="yuv420p",
                ring="",
                state=StreamState.LIVE,
                label="fan-out bench",
            )
        )
        replaying = asyncio.create_task(replay.run(stop))
        name = "edge-per-peer-packetization" if per_peer_packetization else "edge"
        edge = await spawn(name, "orstream.bench.fanout_edge", [], edge_env, logs)
        await wait_ready(edge, f"http://127.0.0.1:{port}/readyz")
        whep_url = f"http://127.0.0.1:{port}/whep/{SITE}/{ROOM}/{STREAM}"
        result = await measure(
            edge, whep_url, tokens, args.peers, args.peers_per_process, args.warmup,
            args.seconds, env, logs, published=lambda: replay.published,
        )  # fmt: skip
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await http.get(
                f"http://127.0.0.1:{port}/stats", params={"since_ns": result.start_ns}
            )
            stats: dict[str, Any] = response.json()
    finally:
        stop.set()
        if replaying is not None:
            await asyncio.gather(replaying, return_exceptions=True)
        if edge is not None:
            await edge.stop()
        await bus.close()
    summary = summarize(result, result.aus_published or 0)
    delivery = stats.get("delivery", {}).get(str(stream), {})
    summary["delivery"] = delivery
    summary["counters"] = stats.get("counters", {})
    summary["aus_published"] = result.aus_published
    summary["keyframe_jumps"] = replay.keyframe_jumps
    return summary


async def baseline_phase(
    args: argparse.Namespace, nats_url: str, state_dir: Path, logs: Path
) -> dict[str, Any]:
    env = base_env(nats_url, state_dir)
    port = free_port()
    server = await spawn(
        "baseline",
        "orstream.bench.fanout_baseline",
        ["--port", str(port), "--bitrate-bps", str(BITRATE_BPS)],
        env,
        logs,
    )
    try:
        await wait_ready(server, f"http://127.0.0.1:{port}/readyz")
        result = await measure(
            server,
            f"http://127.0.0.1:{port}/whep/{SITE}/{ROOM}/{STREAM}",
            ["none"],  # the baseline takes no token
            args.baseline_peers,
            args.peers_per_process,
            args.warmup,
            args.seconds,
            env,
            logs,
        )
    finally:
        await server.stop()
    return summarize(result, FPS * result.seconds)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


async def _phases(args: argparse.Namespace, clip: Clip, tmp: Path) -> dict[str, Any]:
    state_dir, logs = tmp / "state", tmp / "logs"
    logs.mkdir(parents=True)
    os.environ["ORSTREAM_STATE_DIR"] = str(state_dir)  # make_token and the edge share the key
    with (logs / "nats-server.log").open("ab") as nats_log:
        nats = EmbeddedNats(tmp, nats_log)
        try:
            out: dict[str, Any] = {}
            out["fanout"] = await fanout_phase(args, clip, nats.url, state_dir, logs)
            if args.compare_packetization:
                out["per_peer_packetization"] = await fanout_phase(
                    args, clip, nats.url, state_dir, logs, per_peer_packetization=True
                )
            out["baseline"] = await baseline_phase(args, nats.url, state_dir, logs)
            return out
        finally:
            nats.stop()


def _latency(delivery: dict[str, Any], key: str) -> dict[str, float]:
    value: dict[str, float] = delivery.get(key, {"n": 0})
    return value


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    clip = encode_clip(WIDTH, HEIGHT, FPS, CLIP_S, BITRATE_BPS, GOP_S)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="orstream-bench-fanout-") as tmp:
        phases = asyncio.run(_phases(args, clip, Path(tmp)))
    load_after = os.getloadavg()[0]
    fanout, baseline = phases["fanout"], phases["baseline"]
    delivery = fanout["delivery"]
    full_rank = int(delivery.get("rank", DELIVERY_RANK))
    rank = min(full_rank, args.peers)
    ranked = _latency(delivery, "ranked_peer" if args.peers >= full_rank else "last_peer")
    ppc, base_ppc = fanout["peers_per_core"], baseline["peers_per_core"]
    results: dict[str, Any] = {
        "peers_per_core": ppc,
        "cpu_per_peer_pct": fanout["cpu_per_peer_pct"],
        "au_to_last_packet_ms": ranked,
        "au_to_last_packet_rank": rank,
        "au_to_last_packet_ms_last_peer": _latency(delivery, "last_peer"),
        "nats_ms": _latency(delivery, "nats"),
        "baseline_peers_per_core": base_ppc,
        "baseline_cpu_per_peer_pct": baseline["cpu_per_peer_pct"],
        "ratio": round(ppc / base_ppc, 1) if ppc and base_ppc else None,
        "fanout": fanout,
        "baseline": baseline,
    }
    if "per_peer_packetization" in phases:
        per_peer = phases["per_peer_packetization"]
        results["per_peer_packetization"] = per_peer
        if per_peer["cpu_cores"] and fanout["cpu_cores"]:
            results["packetize_once_cpu_saving"] = round(
                1 - fanout["cpu_cores"] / per_peer["cpu_cores"], 3
            )
    return {
        "name": "fanout",
        "config": {
            "peers": args.peers,
            "baseline_peers": args.baseline_peers,
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "resolution": f"{WIDTH}x{HEIGHT}",
            "fps": FPS,
            "bitrate_bps": BITRATE_BPS,
            "clip": {
                "seconds": len(clip.units) / clip.fps,
                "gop_s": GOP_S,
                "mbps": round(clip.bitrate_mbps, 2),
                "au_bytes_mean": round(clip.mean_bytes),
                "keyframe_bytes_mean": round(clip.keyframe_bytes),
                "content": "testpattern (synthetic endoscope, panning), libx264 ultrafast",
            },
            "baseline": "aiortc RTCRtpSender encoding raw frames per peer (libx264 as aiortc "
            "sets it up; target bitrate scaled for its 30 fps rate control to send ~3 Mbit/s)",
            "peers_per_process": args.peers_per_process,
            "receiving_peers": "aiortc, SRTP decrypted and RTP parsed, not decoded",
            "cpu_count": os.cpu_count(),
            "cpu_model": _cpu_model(),
            # Other work on the machine shows in the latencies (CPU seconds hold up better).
            "load_average_1m": [round(load_before, 2), round(load_after, 2)],
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "results": results,
    }


def main(args: argparse.Namespace) -> int:
    report = run(args)
    write_report(report, args.json_path)
    results = report["results"]
    ok = True
    for phase in ("fanout", "per_peer_packetization", "baseline"):
        if phase in results and results[phase]["peers_failed"]:
            print(
                f"orstream bench fanout: {results[phase]['peers_failed']} {phase} peers did not "
                f"connect: {results[phase]['errors']}",
                file=sys.stderr,
            )
            ok = False
    received = results["fanout"]["packets_received"] and results["baseline"]["packets_received"]
    return 0 if ok and received else 1


if __name__ == "__main__":
    sys.exit(
        main(
            argparse.Namespace(
                peers=30,
                baseline_peers=2,
                seconds=20.0,
                warmup=3.0,
                peers_per_process=DEFAULT_PEERS_PER_PROCESS,
                compare_packetization=False,
                profile=None,
                json_path="fanout.json",
            )
        )
    )
