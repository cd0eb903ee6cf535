"""``orstream deid``: the metadata service's engine, offline, for recordings and exports.

Files come out named by their new SOP Instance UID (an original file name may hold a patient's
name). A file the engine refuses (burned-in annotation, unreadable values) is reported and not
written; nothing partly de-identified is ever left behind.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from orstream.common.policy import IDENTIFIED, TECHNICAL, Policy, PolicyError
from orstream.metadata.deid import Deidentifier, DeidError
from orstream.metadata.profiles import Profile, ProfileError
from orstream.metadata.pseudonyms import Pseudonyms
from orstream.metadata.settings import MetadataSettings


def _files(inputs: list[str]) -> Iterator[Path]:
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _profile(role: str | None, profile: str | None, settings: MetadataSettings) -> Profile:
    if profile is not None:
        return Profile.parse(profile)
    assert role is not None
    grant = Policy.load(settings.policy_file).grant(role)
    if grant is None:
        raise ProfileError(f"the policy names no role {role!r}")
    if grant.metadata in (IDENTIFIED, TECHNICAL):
        raise ProfileError(f"role {role!r} sees the {grant.metadata} view, not a PS3.15 profile")
    return Profile.parse(grant.metadata)


def run_deid(inputs: list[str], output: Path, role: str | None, profile: str | None) -> int:
    settings = MetadataSettings()
    try:
        chosen = _profile(role, profile, settings)
        key = settings.deid_key_bytes()
    except (ProfileError, PolicyError, ValueError) as exc:
        print(f"orstream deid: {exc}", file=sys.stderr)
        return 2
    if settings.deid_key is None:
        print(
            f"orstream deid: no ORSTREAM_DEID_KEY; using the development key in "
            f"{settings.deid_key_path} (pseudonyms match this machine's stack only)",
            file=sys.stderr,
        )
    engine = Deidentifier(chosen, Pseudonyms(key))
    output.mkdir(parents=True, exist_ok=True)
    done = refused = skipped = 0
    for path in _files(inputs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                source = pydicom.dcmread(path)
        except (InvalidDicomError, OSError) as exc:
            skipped += 1
            print(f"skipped  {path}: not DICOM Part 10 ({exc})", file=sys.stderr)
            continue
        try:
            result = engine.file(source)
            name = str(result.get("SOPInstanceUID", "") or f"instance-{done + 1}")
            target = output / f"{name}.dcm"
            result.save_as(target)
        except (DeidError, ValueError, TypeError, OSError) as exc:
            refused += 1
            print(f"refused  {path}: {exc}", file=sys.stderr)
            continue
        done += 1
        print(f"written  {target}")
    print(
        f"orstream deid: {done} de-identified with {chosen.name}, {refused} refused, "
        f"{skipped} not DICOM",
        file=sys.stderr,
    )
    return 1 if refused else 0
