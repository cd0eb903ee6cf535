"""Which rendition each peer gets: the encoder's ladder, and a chooser fed by receiver reports.

The encoder's claim (encoder bucket, ``claim.<stream>``) lists the renditions it offers with
their codec and bitrate; the edge sends H.264 only, so the ladder holds the H.264 ones, best
first. A peer starts on the source rendition (or the one it asked for). It moves down when its
receiver says it cannot take what it gets — a REMB estimate below the rate actually sent, or
loss in its receiver reports — for a sustained while, and it probes back up after a quiet spell,
waiting longer after every probe that failed, so a weak link neither freezes nor flaps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from orstream.common.bus import Bus
from orstream.common.messages import EncoderClaim, MessageError
from orstream.common.subjects import ENCODER_BUCKET, SOURCE_RENDITION, StreamId

log = logging.getLogger(__name__)

H264 = "h264"
#: A REMB estimate below this share of the rate actually sent means the link is saturated.
CONGESTED_SHARE = 0.85
#: Receiver-reported loss above this fraction means the link is saturated.
CONGESTED_LOSS = 0.08
#: Loss below this fraction counts as a clean link (for probing upwards).
CLEAN_LOSS = 0.02
DOWN_AFTER_S = 2.0
UP_AFTER_S = 10.0
#: Each failed probe doubles the wait before the next, up to this.
MAX_UP_AFTER_S = 120.0
#: A probe that is followed by a move down within this time counts as failed.
PROBE_GRACE_S = 8.0


@dataclass(frozen=True, slots=True)
class Rung:
    name: str
    bitrate_bps: int


class Ladder:
    """A stream's H.264 renditions, highest bitrate first (the source rendition always)."""

    def __init__(self, rungs: list[Rung]) -> None:
        self.rungs = sorted(rungs, key=lambda r: r.bitrate_bps, reverse=True) or [
            Rung(SOURCE_RENDITION, 0)
        ]

    @classmethod
    def of(cls, claim: EncoderClaim | None) -> Ladder:
        if claim is None or not claim.codecs:
            return cls([Rung(SOURCE_RENDITION, 0)])
        return cls(
            [
                Rung(name, claim.bitrates.get(name, 0))
                for name, codec in claim.codecs.items()
                if codec == H264
            ]
        )

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rungs]

    def index(self, name: str) -> int:
        return self.names.index(name)

    def __contains__(self, name: object) -> bool:
        return name in self.names


class Ladders:
    """Reads ladders from the encoders' claims (the bucket may not exist yet: source only)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._kv: KeyValue | None = None

    async def get(self, stream: StreamId) -> Ladder:
        try:
            if self._kv is None:
                self._kv = await self.bus.js.key_value(ENCODER_BUCKET)
            entry = await self._kv.get(stream.claim_key)
        except (BucketNotFoundError, KeyNotFoundError):
            return Ladder.of(None)
        except Exception as exc:  # NATS away: the source rendition still works
            log.warning("%s: no rendition ladder (%s); source only", stream, exc)
            return Ladder.of(None)
        try:
            return Ladder.of(EncoderClaim.decode(entry.value) if entry.value else None)
        except MessageError as exc:
            log.warning("%s: malformed encoder claim (%s); source only", stream, exc)
            return Ladder.of(None)


class RenditionChooser:
    """One peer's rendition of one stream, moved by what its receiver reports."""

    def __init__(self, ladder: Ladder, start: str = SOURCE_RENDITION, pinned: bool = False) -> None:
        self.ladder = ladder
        self.current = start if start in ladder else ladder.names[0]
        #: A peer that asked for a rendition keeps it.
        self.pinned = pinned
        self._pressure_since: float | None = None
        self._clean_since: float | None = None
        self._up_after_s = UP_AFTER_S
        self._probed_at: float | None = None

    def observe(
        self, now: float, *, estimate_bps: int, sent_bps: float, fraction_lost: float
    ) -> str | None:
        """Feed one receiver-report sample; returns the rendition to move to, if any.

        ``estimate_bps`` is the peer's REMB (0: not said), ``sent_bps`` what it was sent over
        the last interval, ``fraction_lost`` its receiver reports' loss (0..1).
        """
        if self.pinned:
            return None
        index = self.ladder.index(self.current)
        congested = fraction_lost > CONGESTED_LOSS or (
            estimate_bps > 0 and sent_bps > 0 and estimate_bps < sent_bps * CONGESTED_SHARE
        )
        if congested:
            self._clean_since = None
            if self._pressure_since is None:
                self._pressure_since = now
            if now - self._pressure_since >= DOWN_AFTER_S and index + 1 < len(self.ladder.rungs):
                if self._probed_at is not None and now - self._probed_at < PROBE_GRACE_S:
                    self._up_after_s = min(self._up_after_s * 2, MAX_UP_AFTER_S)
                self._probed_at = None
                return self._move(index + 1, now)
            return None
        self._pressure_since = None
        if fraction_lost > CLEAN_LOSS:
            self._clean_since = None
            return None
        if self._clean_since is None:
            self._clean_since = now
        if index > 0 and now - self._clean_since >= self._up_after_s:
            self._probed_at = now
            return self._move(index - 1, now)
        return None

    def _move(self, index: int, now: float) -> str:
        self.current = self.ladder.rungs[index].name
        self._pressure_since = None
        self._clean_since = now
        return self.current
