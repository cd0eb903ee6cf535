"""De-identification profiles: the PS3.15 Basic Profile plus any of its options.

A profile is named ``basic`` or ``basic+<option>[+<option>...]`` (``basic+clean-descriptors``);
the policy file gives each role one, and ``orstream deid --profile`` takes the same names. Each
option maps to its CID 7050 code, which goes into De-identification Method Code Sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Option(StrEnum):
    """The option columns of Table E.1-1 (the pixel-level options are not attribute-level)."""

    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    RETAIN_UIDS = "retain-uids"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_LONG_FULL_DATES = "retain-long-full-dates"
    RETAIN_LONG_MODIFIED_DATES = "retain-long-modified-dates"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_GRAPHICS = "clean-graphics"


#: CID 7050 "De-identification Method" (coding scheme DCM): code value, code meaning.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES: dict[Option, tuple[str, str]] = {
    Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONG_FULL_DATES: (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    Option.RETAIN_LONG_MODIFIED_DATES: (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}

BASIC = "basic"


class ProfileError(ValueError):
    """A profile name that does not parse; the role it belongs to gets nothing."""


@dataclass(frozen=True, slots=True)
class Profile:
    options: frozenset[Option] = frozenset()

    @classmethod
    def parse(cls, name: str) -> Profile:
        base, *rest = name.strip().split("+")
        if base != BASIC:
            raise ProfileError(f"profile {name!r} must start with {BASIC!r}")
        options: set[Option] = set()
        for part in rest:
            try:
                options.add(Option(part))
            except ValueError:
                known = ", ".join(o.value for o in Option)
                reason = f"unknown option {part!r} in {name!r} (known: {known})"
                raise ProfileError(reason) from None
        if {Option.RETAIN_LONG_FULL_DATES, Option.RETAIN_LONG_MODIFIED_DATES} <= options:
            raise ProfileError(f"{name!r}: full dates and modified dates exclude each other")
        return cls(frozenset(options))

    @property
    def name(self) -> str:
        return "+".join([BASIC, *sorted(o.value for o in self.options)])

    def codes(self) -> list[tuple[str, str]]:
        """CID 7050 codes of this profile, Basic first, then its options in code order."""
        return [BASIC_PROFILE_CODE, *sorted(OPTION_CODES[o] for o in self.options)]

    def __str__(self) -> str:
        return self.name
