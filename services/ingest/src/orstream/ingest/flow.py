"""What every RTP flow receiver shares: its counts, rate-limited complaints, and a thread body
that nothing a sender does can end."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, fields

log = logging.getLogger(__name__)

MAX_DATAGRAM_BYTES = 65536
#: How long a loop sleeps in select() when no packet is waiting (bounds the stop latency).
IDLE_POLL_S = 0.1
#: Complaints about bad input are logged at most this often, so it cannot flood the log.
LOG_INTERVAL_NS = 5_000_000_000


@dataclass
class FlowStats:
    """Counts kept by a receive thread (plain ints: one writer, readers tolerate staleness)."""

    packets: int = 0
    bytes: int = 0
    packets_lost: int = 0
    packets_malformed: int = 0
    packets_foreign: int = 0
    packets_late: int = 0
    frames_complete: int = 0
    frames_dropped: int = 0

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class FlowReceiver:
    """Base of a receiver of one RTP flow on ``sock``; :meth:`run` is a thread's body and
    subclasses implement :meth:`_receive`."""

    #: Prefix of this receiver's log lines.
    name = "rtp"

    def __init__(self, sock: socket.socket, payload_type: int, sources: tuple[str, ...]) -> None:
        self.sock = sock
        self.payload_type = payload_type
        self.sources = frozenset(sources)
        self.stats = FlowStats()
        self._last_log_ns = 0

    def _warn(self, why: str) -> None:
        now = time.monotonic_ns()
        if now - self._last_log_ns > LOG_INTERVAL_NS:
            self._last_log_ns = now
            log.warning("%s: %s", self.name, why)

    def run(self, stop: threading.Event) -> None:
        """Receive until ``stop``; nothing a sender does may end this thread."""
        while not stop.is_set():
            try:
                self._receive(stop)
            except Exception:
                self.stats.packets_malformed += 1
                log.exception("%s: receive loop failed; restarting it", self.name)
                time.sleep(IDLE_POLL_S)

    def _receive(self, stop: threading.Event) -> None:
        raise NotImplementedError
