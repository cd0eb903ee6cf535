"""Which renditions have watchers: the union of every watcher's latest ``.interest`` message.

Watchers (edges) repeat their interest every half second; an entry lapses after its TTL, so an
edge that dies stops costing encoder CPU within seconds, and one that withdraws (an empty map)
stops it at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from orstream.common.messages import Interest


@dataclass(frozen=True, slots=True)
class _Watch:
    renditions: dict[str, int]
    expires_s: float


class InterestTable:
    """Thread-safe: messages arrive on the event loop, the encode thread asks what is wanted."""

    def __init__(self) -> None:
        self._watchers: dict[str, _Watch] = {}
        self._lock = threading.Lock()

    def update(self, interest: Interest, now_s: float) -> None:
        with self._lock:
            if interest.renditions:
                self._watchers[interest.watcher] = _Watch(
                    dict(interest.renditions), now_s + interest.ttl_ms / 1000
                )
            else:
                self._watchers.pop(interest.watcher, None)

    def wanted(self, now_s: float) -> dict[str, int]:
        """Rendition → the highest bitrate any of its watchers can take (0: no limit known)."""
        out: dict[str, int] = {}
        with self._lock:
            for watcher, watch in list(self._watchers.items()):
                if watch.expires_s < now_s:
                    del self._watchers[watcher]
                    continue
                for rendition, estimate in watch.renditions.items():
                    if rendition not in out:
                        out[rendition] = estimate
                    elif out[rendition] and (estimate <= 0 or estimate > out[rendition]):
                        out[rendition] = max(estimate, 0)
        return out

    def watchers(self) -> int:
        with self._lock:
            return len(self._watchers)
