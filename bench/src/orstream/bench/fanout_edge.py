"""The edge as ``orstream bench fanout`` runs it: the real signaling service, in its own process.

It is the service ``python -m orstream.signaling`` runs, configured the same way (``ORSTREAM_*``),
with ``/stats`` extended by each stream's per-AU delivery figures (AU received → last RTP packet
sent to the 10th peer and to the last peer; ``StreamLatency.delivery``). Two bench-only knobs:

- ``ORSTREAM_BENCH_PER_PEER_PACKETIZATION=1``: every peer packetizes each AU itself, as aiortc
  does alone (to measure what packetizing once buys);
- ``ORSTREAM_BENCH_PROFILE=PATH``: run under cProfile and write its stats to ``PATH`` on exit.
"""

from __future__ import annotations

import cProfile
import os
from typing import Any

from orstream.common.runner import run
from orstream.common.subjects import SOURCE_RENDITION
from orstream.signaling.remb import RembRecordingPacketizer
from orstream.signaling.service import SignalingService
from orstream.signaling.settings import SignalingSettings

PER_PEER_PACKETIZATION_ENV = "ORSTREAM_BENCH_PER_PEER_PACKETIZATION"
PROFILE_ENV = "ORSTREAM_BENCH_PROFILE"


class BenchEdge(SignalingService):
    def stats(self, since_ns: int, frames: bool = False) -> dict[str, Any]:
        out = super().stats(since_ns, frames)
        delivery: dict[str, Any] = {}
        if self.sessions is not None:
            for (stream, rendition), latency in self.sessions.latency.items():
                if rendition != SOURCE_RENDITION:
                    continue
                delivery[str(stream)] = {
                    "rank": latency.delivery.rank,
                    "ranked_peer": latency.delivery.ranked.summary(since_ns),
                    "last_peer": latency.delivery.last.summary(since_ns),
                    "nats": latency.bus.summary(since_ns),
                }
        out["delivery"] = delivery
        return out


def main() -> None:
    if os.environ.get(PER_PEER_PACKETIZATION_ENV) == "1":
        RembRecordingPacketizer.share_packetization = False
    settings = SignalingSettings()
    profile_path = os.environ.get(PROFILE_ENV)
    if not profile_path:
        run(BenchEdge(settings), settings)
        return
    profiler = cProfile.Profile()
    try:
        profiler.runcall(run, BenchEdge(settings), settings)
    finally:
        profiler.dump_stats(profile_path)


if __name__ == "__main__":
    main()
