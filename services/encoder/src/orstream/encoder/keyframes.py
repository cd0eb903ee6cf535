"""When to force an IDR: on request, at the next frame, but at most one per minimum interval.

A request that arrives inside the interval is not dropped but deferred to its end (whoever asked
still needs a picture to start from); any number of requests meanwhile make one IDR, and an IDR
that comes anyway (a rendition opening, the periodic one) answers them all.
"""

from __future__ import annotations

import threading


class KeyframePolicy:
    def __init__(self, min_interval_s: float) -> None:
        self._min_interval_ns = int(min_interval_s * 1e9)
        self._pending = False
        self._last_idr_ns = -self._min_interval_ns
        self._lock = threading.Lock()

    def request(self) -> bool:
        """Ask for an IDR; returns False when an earlier request already covers this one."""
        with self._lock:
            covered = self._pending
            self._pending = True
            return not covered

    def force_now(self, now_ns: int) -> bool:
        """For the frame about to be encoded: must it be an IDR?"""
        with self._lock:
            if self._pending and now_ns - self._last_idr_ns >= self._min_interval_ns:
                self._pending = False
                self._last_idr_ns = now_ns
                return True
            return False

    def keyframe_sent(self, now_ns: int) -> None:
        """An IDR went out without being forced: it answers any pending request."""
        with self._lock:
            self._pending = False
            self._last_idr_ns = now_ns
