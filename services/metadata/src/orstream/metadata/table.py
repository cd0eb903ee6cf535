"""Typed lookups over the generated Table E.1-1 (:mod:`orstream.metadata.e11_table`).

An attribute's action under a profile: the Basic Profile's, unless an option the profile has
changes it. Where two chosen options disagree (Retain Device Identity keeps a calibration date
that Modified Dates would shift) the more protective one wins: clean (C) over keep (K).
"""

from __future__ import annotations

from dataclasses import dataclass

from orstream.metadata import e11_table
from orstream.metadata.profiles import Option, Profile

#: Actions whose choice depends on the attribute's Type in the IOD in hand.
COMPOUND = frozenset({"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    basic: str
    options: tuple[tuple[Option, str], ...]

    def action(self, profile: Profile) -> str:
        chosen = [action for option, action in self.options if option in profile.options]
        if "C" in chosen:
            return "C"
        if "K" in chosen:
            return "K"
        return self.basic


def _rule(row: e11_table.Row) -> Rule:
    name, basic, options = row
    return Rule(name, basic, tuple((Option(o), a) for o, a in options))


ATTRIBUTES: dict[int, Rule] = {tag: _rule(row) for tag, row in e11_table.ATTRIBUTES.items()}
MASKED: tuple[tuple[int, int, Rule], ...] = tuple(
    (mask, value, _rule(row)) for mask, value, row in e11_table.MASKED
)
PRIVATE: Rule = _rule(e11_table.PRIVATE)
EDITION = e11_table.EDITION


def is_private(tag: int) -> bool:
    return bool((tag >> 16) & 1)


def is_curve_or_overlay(tag: int) -> bool:
    """Groups 50xx (curves, retired) and 60xx (overlays): repeating groups Table E.1-1 names."""
    group = tag >> 16
    return group & 0xFF01 in (0x5000, 0x6000)


def rule_for(tag: int) -> Rule | None:
    """The table's row for ``tag``; None: a standard attribute the table does not name."""
    rule = ATTRIBUTES.get(tag)
    if rule is not None:
        return rule
    if is_private(tag):
        return PRIVATE
    for mask, value, masked in MASKED:
        if tag & mask == value:
            return masked
    return None


def actions(profile: Profile) -> dict[int, str]:
    """Every named attribute's action under ``profile``, precomputed once per profile."""
    return {tag: rule.action(profile) for tag, rule in ATTRIBUTES.items()}
