"""Cheap receiving peers for ``orstream bench fanout``: real WebRTC sessions that count RTP.

Each peer is a real aiortc ``RTCPeerConnection`` that signs in over WHEP (the headless
:class:`~orstream.viewer.probe.Probe`), completes ICE and DTLS, and receives SRTP: every packet
is decrypted and parsed by aiortc as usual. What it does *not* do is decode, so one process can
hold many peers without stealing the CPU the measured sender needs. This is a bench-only patch:
each peer's ``RTCRtpReceiver._handle_rtp_packet`` (jitter buffer, decoder thread, NACK and REMB
feedback) is replaced by :meth:`RtpCounts.handle`, which counts packets, bytes, frames (RTP
marker bits) and sequence-number gaps. The peers therefore send no receiver reports, NACKs or
PLIs; on loopback nothing is lost to need them.

Run by the bench as a child process, one JSON line per event on stdout::

    python -m orstream.bench.rtpsink WHEP_URL (--token T --peers N | --tokens FILE)
      → {"event": "ready", "connected": N, "failed": 0, "errors": []}
    stdin "mark"  → {"event": "mark", "t_ns": …, "cpu_s": …, "peers": [{"packets": …}, …]}
    stdin "quit"  → closes every session (WHEP DELETE) and exits

The process exits by itself after ``--lifetime`` seconds or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc.rtp import RtpPacket

from orstream.signaling.ice import advertise_only
from orstream.viewer.probe import Probe

log = logging.getLogger(__name__)

#: WHEP sessions set up at once (each gathers ICE candidates and does a DTLS handshake).
CONNECT_CONCURRENCY = 8
DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_LIFETIME_S = 600.0
CLOSE_TIMEOUT_S = 10.0
SEQ_MOD = 1 << 16


@dataclass
class RtpCounts:
    """What one peer received: counted per packet, never decoded."""

    packets: int = 0
    bytes: int = 0
    #: Packets with the marker bit: the last packet of each access unit.
    frames: int = 0
    #: Packets missing from the sequence-number run (a later packet arrived first).
    lost: int = 0
    #: Packets that arrived after a later one (reordered, duplicated or retransmitted).
    late: int = 0
    _next_seq: int | None = field(default=None, repr=False)
    first_packet: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def handle(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self.packets += 1
        self.bytes += len(packet.payload)
        if packet.marker:
            self.frames += 1
        seq = packet.sequence_number
        if self._next_seq is None:
            self.first_packet.set()
        elif seq != self._next_seq:
            gap = (seq - self._next_seq) % SEQ_MOD
            if gap < SEQ_MOD // 2:
                self.lost += gap
            else:
                self.late += 1
                return
        self._next_seq = (seq + 1) % SEQ_MOD

    def snapshot(self) -> dict[str, int]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "frames": self.frames,
            "lost": self.lost,
            "late": self.late,
        }


class CountingPeer:
    """One WHEP session whose video is counted, not decoded."""

    def __init__(self, whep_url: str, token: str) -> None:
        self.probe = Probe(whep_url, token)
        self.counts = RtpCounts()

    async def connect(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self.probe.connect()
            for receiver in self.probe.pc.getReceivers():
                receiver._handle_rtp_packet = self.counts.handle  # type: ignore[method-assign]
            await self.counts.first_packet.wait()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.probe.close()


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def _connect_all(
    url: str, tokens: list[str], timeout_s: float
) -> tuple[list[CountingPeer], list[str]]:
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    peers = [CountingPeer(url, token) for token in tokens]

    async def one(peer: CountingPeer) -> str | None:
        async with limit:
            try:
                await peer.connect(timeout_s)
            except Exception as exc:
                await peer.close()
                return repr(exc)
        return None

    outcomes = await asyncio.gather(*(one(p) for p in peers))
    connected = [p for p, error in zip(peers, outcomes, strict=True) if error is None]
    return connected, [e for e in outcomes if e is not None]


async def serve(args: argparse.Namespace) -> int:
    advertise_only(["127.0.0.1"])
    peers, errors = await _connect_all(args.url, args.token_list, args.connect_timeout)
    _emit({"event": "ready", "connected": len(peers), "failed": len(errors), "errors": errors[:5]})
    commands = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(commands), sys.stdin
    )
    try:
        async with asyncio.timeout(args.lifetime):
            while True:
                line = await commands.readline()
                command = line.strip()
                if command == b"mark":
                    _emit(
                        {
                            "event": "mark",
                            "t_ns": time.time_ns(),
                            "cpu_s": time.process_time(),
                            "peers": [p.counts.snapshot() for p in peers],
                        }
                    )
                elif command == b"quit" or not line:
                    break
    except TimeoutError:
        log.warning("lifetime of %g s over; closing", args.lifetime)
    finally:
        await asyncio.gather(*(p.close() for p in peers))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orstream.bench.rtpsink")
    parser.add_argument("url", help="WHEP endpoint of the stream")
    parser.add_argument("--token", default="", help="the same bearer token for every peer")
    parser.add_argument("--peers", type=int, default=1)
    parser.add_argument("--tokens", help="a file of tokens, one peer per line (one viewer each)")
    parser.add_argument("--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT_S)
    parser.add_argument("--lifetime", type=float, default=DEFAULT_LIFETIME_S)
    args = parser.parse_args()
    args.token_list = (
        Path(args.tokens).read_text().split() if args.tokens else [args.token] * args.peers
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(asyncio.run(serve(args)))


if __name__ == "__main__":
    main()
