"""The "C" action: values of similar meaning that carry no identifying information.

Dates move by the patient's shift (Retain Longitudinal Temporal Information, Modified Dates).
Free text keeps its words except those that identify: any value the dataset's identifying
attributes hold (names, IDs, dates in the common spellings), and whatever looks like a date, a
long number, an e-mail address or a phone number. What cannot be cleaned is removed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

REDACTED = "*"
#: Patterns that identify wherever they occur in free text.
_PATTERNS = re.compile(
    r"""
    \b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b      # 2026-11-21
    | \b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b  # 21.11.2026, 11/21/26
    | [\w.+-]+@[\w-]+(?:\.[\w-]+)+         # e-mail
    | \+?\d[\d ()-]{6,}\d                  # phone numbers, long IDs
    | \d{4,}                               # any other run of four or more digits
    """,
    re.VERBOSE,
)
_MIN_IDENTIFIER = 2


class CleanError(ValueError):
    """A value the C action cannot make safe; the caller removes it."""


def date_spellings(value: str) -> list[str]:
    """``YYYYMMDD`` and the ways people write it in free text."""
    if len(value) < 8 or not value[:8].isdigit():
        return []
    y, m, d = value[:4], value[4:6], value[6:8]
    return [value[:8], f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}"]


class TextCleaner:
    """Removes the identifying values of one dataset from its free text."""

    def __init__(self, identifiers: Iterable[str]) -> None:
        words = {w.strip() for w in identifiers}
        words = {w for w in words if len(w) >= _MIN_IDENTIFIER and not w.isspace()}
        # Longest first, so "Smith^John" goes before "Smith".
        ordered = sorted(words, key=len, reverse=True)
        self._known = (
            re.compile("|".join(re.escape(w) for w in ordered), re.IGNORECASE) if ordered else None
        )

    def text(self, value: str) -> str:
        if self._known is not None:
            value = self._known.sub(REDACTED, value)
        return _PATTERNS.sub(REDACTED, value)


def shift_da(value: str, days: int) -> str:
    """A DA value (``YYYYMMDD``) moved by ``days``."""
    value = value.strip()
    if not value:
        return value
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError as exc:
        raise CleanError(f"not a DA value: {value!r}") from exc
    return (day + dt.timedelta(days=days)).strftime("%Y%m%d")


def shift_dt(value: str, days: int) -> str:
    """A DT value moved by ``days``; precision below a day (and any offset) is kept as is."""
    value = value.strip()
    if not value:
        return value
    if len(value) < 8:
        # Year or year-month only: the shift cannot be applied at that precision.
        raise CleanError(f"DT value too coarse to shift: {value!r}")
    return shift_da(value[:8], days) + value[8:]
