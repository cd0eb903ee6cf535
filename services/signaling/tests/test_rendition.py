"""The rendition chooser: down on a sustained saturated link, back up by probing, never flapping."""

from __future__ import annotations

from orstream.common.messages import EncoderClaim
from orstream.signaling.rendition import (
    DOWN_AFTER_S,
    UP_AFTER_S,
    Ladder,
    RenditionChooser,
)

CLAIM = EncoderClaim(
    replica="r1",
    codecs={"src": "h264", "360p": "h264", "vp8": "vp8", "180p": "h264"},
    bitrates={"src": 3_000_000, "360p": 800_000, "vp8": 2_000_000, "180p": 300_000},
)


def feed(
    chooser: RenditionChooser, start: float, seconds: float, **sample: float
) -> list[tuple[float, str]]:
    moves = []
    t = start
    while t < start + seconds:
        moved = chooser.observe(
            t,
            estimate_bps=int(sample.get("estimate", 0)),
            sent_bps=sample.get("sent", 0),
            fraction_lost=sample.get("loss", 0),
        )
        if moved:
            moves.append((t, moved))
        t += 1.0
    return moves


def test_the_ladder_holds_the_h264_renditions_best_first() -> None:
    assert Ladder.of(CLAIM).names == ["src", "360p", "180p"]
    assert Ladder.of(None).names == ["src"]
    assert Ladder.of(EncoderClaim(replica="r")).names == ["src"]


def test_a_saturated_link_moves_down_one_rung_at_a_time() -> None:
    chooser = RenditionChooser(Ladder.of(CLAIM))
    # REMB says 1 Mbit/s while 3 Mbit/s are sent: down to 360p after DOWN_AFTER_S, not before.
    moves = feed(chooser, 0, DOWN_AFTER_S, estimate=1_000_000, sent=3_000_000)
    assert moves == []
    moves = feed(chooser, DOWN_AFTER_S, 1, estimate=1_000_000, sent=3_000_000)
    assert moves == [(DOWN_AFTER_S, "360p")]
    # Loss alone is saturation too.
    moves = feed(chooser, 10, DOWN_AFTER_S + 1, estimate=0, loss=0.2)
    assert [m for _, m in moves] == ["180p"]
    assert feed(chooser, 20, 10, loss=0.2) == [], "there is no rung below the last"


def test_an_unknown_estimate_or_a_clean_link_changes_nothing_at_the_top() -> None:
    chooser = RenditionChooser(Ladder.of(CLAIM))
    assert feed(chooser, 0, 30, estimate=0, sent=3_000_000) == []
    assert feed(chooser, 30, 30, estimate=5_000_000, sent=3_000_000) == []
    assert chooser.current == "src"


def test_a_clean_link_probes_up_and_a_failed_probe_waits_twice_as_long() -> None:
    chooser = RenditionChooser(Ladder.of(CLAIM), start="360p")
    moves = feed(chooser, 0, UP_AFTER_S + 1, estimate=900_000, sent=800_000)
    assert [m for _, m in moves] == ["src"]
    probe_at = moves[0][0]
    # The probe fails: the link cannot take src, so it goes down again…
    moves = feed(chooser, probe_at + 1, DOWN_AFTER_S + 1, estimate=1_000_000, sent=3_000_000)
    assert [m for _, m in moves] == ["360p"]
    back_down = moves[0][0]
    # …and the next probe comes only after twice the wait.
    moves = feed(chooser, back_down + 1, 2 * UP_AFTER_S + 2, estimate=900_000, sent=800_000)
    assert len(moves) == 1 and moves[0][0] - back_down >= 2 * UP_AFTER_S


def test_a_pinned_rendition_stays() -> None:
    chooser = RenditionChooser(Ladder.of(CLAIM), start="180p", pinned=True)
    assert feed(chooser, 0, 60, estimate=10_000_000, sent=300_000) == []
    assert feed(chooser, 60, 10, loss=0.5) == []
    assert chooser.current == "180p"
    assert RenditionChooser(Ladder.of(CLAIM), start="nope").current == "src"
