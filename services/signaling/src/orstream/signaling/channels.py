"""Sending on a peer's DataChannel, shared by the ``metadata``, ``annotations`` and ``stats`` feeds.

A channel may close between any two messages (the peer vanished); a send then costs that peer its
own message only: it is counted and logged at debug level, never raised into the feed.
"""

from __future__ import annotations

import logging
from typing import Any

from orstream.common.telemetry import Counters

log = logging.getLogger(__name__)


def send_text(channel: Any, message: str, counters: Counters, sent: str, failed: str) -> bool:
    """Send ``message`` if ``channel`` is open; count ``sent`` or ``failed``. True if sent."""
    if channel.readyState != "open":
        return False
    try:
        channel.send(message)
    except Exception as exc:  # a peer that vanished mid-send loses only its own message
        counters.add(failed)
        log.debug("%s to a closing channel: %s", getattr(channel, "label", "?"), exc)
        return False
    counters.add(sent)
    return True
