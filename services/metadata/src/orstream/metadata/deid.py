"""The de-identification engine: PS3.15 Annex E, Table E.1-1, a profile and a key.

Every attribute the table names gets its action under the profile; compound actions are
resolved against the dataset in hand (an attribute that arrives with a value keeps one — a
dummy, a remapped UID — so a Type 1 attribute stays valid; one that arrives empty stays empty;
one that X may remove when empty goes). Attributes the table does not name are kept, except
private ones (removed unless retained as safe) and curves and overlays (groups 50xx/60xx,
removed). Sequences are walked item by item with the same rules. Any failure raises
:class:`DeidError` and yields nothing: callers never fall back to the identified dataset.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from orstream.metadata import table
from orstream.metadata.clean import CleanError, TextCleaner, date_spellings, shift_da, shift_dt
from orstream.metadata.profiles import Option, Profile
from orstream.metadata.pseudonyms import Pseudonyms

PATIENT_ID = 0x00100020
ISSUER_OF_PATIENT_ID = 0x00100021
PATIENT_NAME = 0x00100010
PATIENT_BIRTH_DATE = 0x00100030
STUDY_INSTANCE_UID = 0x0020000D
PIXEL_DATA = 0x7FE00010
BURNED_IN_ANNOTATION = 0x00280301
RECOGNIZABLE_VISUAL_FEATURES = 0x00280302
#: Attributes the engine writes itself, after the walk.
MARKS = frozenset({0x00120062, 0x00120063, 0x00120064, 0x00280303})

TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
DUMMIES: dict[str, Any] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMOUS",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMOUS",
    "LT": "ANONYMOUS",
    "PN": "ANONYMOUS",
    "SH": "ANONYMOUS",
    "ST": "ANONYMOUS",
    "TM": "000000",
    "UC": "ANONYMOUS",
    "UT": "ANONYMOUS",
    "FD": 0.0,
    "FL": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
}
METHOD = "PS3.15 Annex E Basic Profile"


class DeidError(Exception):
    """This dataset could not be de-identified; nothing of it may be released."""


@dataclass
class _Patient:
    """Per-dataset facts derived on demand: the date shift and the free-text cleaner."""

    source: Dataset
    engine: Deidentifier
    _shift: int | None = None
    _cleaner: TextCleaner | None = None

    @property
    def shift_days(self) -> int:
        if self._shift is None:
            self._shift = self.engine.pseudonyms.date_shift_days(patient_key(self.source))
        return self._shift

    @property
    def cleaner(self) -> TextCleaner:
        if self._cleaner is None:
            self._cleaner = TextCleaner(self.engine.identifying_values(self.source))
        return self._cleaner


def patient_key(ds: Dataset) -> str:
    """Who the dataset is about, for per-patient pseudonyms: ID + issuer, else name + birth."""
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        return f"id:{ds.get('IssuerOfPatientID', '') or ''}\\{pid}"
    name = str(ds.get("PatientName", "") or "").strip()
    if name:
        return f"name:{name}\\{ds.get('PatientBirthDate', '') or ''}"
    return f"study:{ds.get('StudyInstanceUID', '') or ''}"


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _is_empty(elem: DataElement) -> bool:
    value = elem.value
    if value is None:
        return True
    if isinstance(value, str | bytes | Sequence | MultiValue | list):
        return len(value) == 0
    return False


def _vr_of(tag: int, raw: DataElement | RawDataElement) -> str | None:
    try:
        known: str | None = dictionary_VR(tag)
    except KeyError:
        known = None
    if known is not None and known != "UN" and " or " not in known:
        return known
    vr: str | None = raw.VR
    return vr


class Deidentifier:
    """One profile, one key: ``deidentifier.dataset(ds)`` returns a de-identified copy."""

    def __init__(
        self,
        profile: Profile,
        pseudonyms: Pseudonyms,
        safe_private: frozenset[tuple[str, int]] = frozenset(),
    ) -> None:
        self.profile = profile
        self.pseudonyms = pseudonyms
        #: ``(private creator, element low byte)`` pairs known to be safe (PS3.15 E.3.10).
        self.safe_private = safe_private
        self._actions = table.actions(profile)
        self._retain_uids = Option.RETAIN_UIDS in profile.options
        self._modified_dates = Option.RETAIN_LONG_MODIFIED_DATES in profile.options
        #: Built once; every output shares them (``file`` hands out copies).
        self._mark_elements = self._marks()

    # -- public -----------------------------------------------------------------------------

    def dataset(self, ds: Dataset) -> Dataset:
        """A de-identified copy of ``ds`` (never ``ds`` itself, never partly done)."""
        try:
            with warnings.catch_warnings():
                # pydicom warns about odd values as it converts them; here an odd value is
                # handled by the rules like any other, so the warning would only be noise.
                warnings.simplefilter("ignore")
                self._refuse_unclean_pixels(ds)
                out = self._walk(ds, _Patient(ds, self))
                self._mark(out)
            return out
        except DeidError:
            raise
        except Exception as exc:
            raise DeidError(f"cannot de-identify: {exc!r}") from exc

    def file(self, ds: Dataset) -> FileDataset:
        """A de-identified Part 10 file in the source's encoding, its meta information rewritten.

        Values kept as they were stay in their original byte order, so the output keeps the
        source's transfer syntax (a retired big-endian one included).
        """
        out = self.dataset(ds)
        for elem in self._mark_elements:
            out[elem.tag] = copy.deepcopy(elem)  # a file is the caller's to change
        implicit, little = ds.original_encoding
        source_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        syntax: str | None = source_meta.get("TransferSyntaxUID") or _syntax_of(implicit, little)
        instance: str | None = out.get("SOPInstanceUID") or source_meta.get(
            "MediaStorageSOPInstanceUID"
        )
        if instance and "SOPInstanceUID" not in out and not self._retain_uids:
            instance = self.pseudonyms.uid(str(instance))
        meta = FileMetaDataset()
        sop_class = out.get("SOPClassUID") or source_meta.get("MediaStorageSOPClassUID")
        if sop_class:
            meta.MediaStorageSOPClassUID = sop_class
        if instance:
            meta.MediaStorageSOPInstanceUID = UID(instance)
        if syntax:
            meta.TransferSyntaxUID = UID(syntax)
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        result = FileDataset("", out, file_meta=meta, preamble=b"\0" * 128)
        result.set_original_encoding(implicit, little, ds.original_character_set)
        return result

    def identifying_values(self, ds: Dataset) -> Iterator[str]:
        """The text of every attribute this profile does not keep: what free text must lose."""
        for elem in ds.iterall():
            tag = int(elem.tag)
            action = self._actions.get(tag)
            if action is None or action in ("K", "C") or elem.VR == "SQ":
                continue
            for value in _values(elem.value):
                text = str(value)
                if elem.VR == "PN":
                    yield text
                    for group in text.split("="):
                        yield from group.split("^")
                elif elem.VR in ("DA", "DT"):
                    yield from date_spellings(text)
                elif elem.VR in TEXT_VRS or elem.VR in ("UI", "IS", "AS"):
                    yield text

    # -- the walk ---------------------------------------------------------------------------

    def _refuse_unclean_pixels(self, ds: Dataset) -> None:
        if PIXEL_DATA not in ds:
            return
        for tag, what in (
            (BURNED_IN_ANNOTATION, "burned-in annotation"),
            (RECOGNIZABLE_VISUAL_FEATURES, "recognizable visual features"),
        ):
            if str(ds.get(tag, DataElement(tag, "CS", "")).value).upper() == "YES":
                raise DeidError(
                    f"pixel data with {what}: Clean Pixel Data is not implemented, so this "
                    "instance cannot be released"
                )

    def _walk(self, ds: Dataset, patient: _Patient) -> Dataset:
        out = Dataset()
        for key in list(ds.keys()):
            tag = int(key)
            if tag & 0xFFFF == 0 or tag >> 16 in (0x0000, 0x0002) or tag in MARKS:
                # Group lengths are recomputed, command and meta groups are not the dataset's,
                # and the de-identification marks are written afresh.
                continue
            if table.is_private(tag):
                if self._safe_private(ds, tag):
                    out[key] = ds.get_item(key)
                continue
            if table.is_curve_or_overlay(tag):
                continue
            action = self._actions.get(tag, "K")
            if action == "X":
                continue
            raw = ds.get_item(key)
            if raw is None:
                continue
            if action == "K" and tag != PATIENT_ID and _vr_of(tag, raw) != "SQ":
                # Kept as read, without decoding; an implicit-VR value is decoded so it carries
                # its VR into whatever encoding the output is written in.
                out[key] = raw if raw.VR is not None else ds[key]
                continue
            elem = ds[key]
            new = self._apply(action, elem, patient)
            if new is not None:
                out.add(new)
        return out

    def _sequence(self, elem: DataElement, patient: _Patient) -> DataElement:
        if not isinstance(elem.value, Sequence):
            raise DeidError(f"{elem.tag} should be a sequence but did not decode as one")
        return DataElement(elem.tag, "SQ", Sequence([self._walk(i, patient) for i in elem.value]))

    def _apply(self, action: str, elem: DataElement, patient: _Patient) -> DataElement | None:
        tag, vr = int(elem.tag), elem.VR
        if tag == PATIENT_ID:
            # Z/D in the table; a keyed pseudonym is a dummy that also links a patient's data.
            original = str(elem.value or "").strip()
            if not original:
                return DataElement(tag, "LO", "")
            issuer = str(patient.source.get("IssuerOfPatientID", "") or "")
            return DataElement(tag, "LO", self.pseudonyms.patient_id(original, issuer))
        if action in table.COMPOUND:
            action = self._resolve(action, elem)
        if action == "X":
            return None
        if action == "K":
            return self._sequence(elem, patient) if vr == "SQ" else elem
        if action == "Z":
            return DataElement(tag, vr, Sequence() if vr == "SQ" else None)
        if action == "U":
            if vr == "UI":
                return self._uids(elem)
            if vr == "SQ":
                return self._sequence(elem, patient)  # keep it; its UIDs are remapped inside
            return self._dummy(elem)
        if action == "D":
            return self._dummy(elem)
        if action == "C":
            return self._clean(elem, patient)
        raise DeidError(f"{elem.tag}: unknown action {action!r}")

    @staticmethod
    def _resolve(action: str, elem: DataElement) -> str:
        """A compound action for this attribute as it came (see the module docstring)."""
        empty = _is_empty(elem)
        if action == "X/Z":
            return "Z"
        if action == "X/D":
            return "X" if empty else "D"
        if action == "X/Z/U*":
            return "Z" if empty else "U"
        # Z/D, X/Z/D
        return "Z" if empty else "D"

    def _uids(self, elem: DataElement) -> DataElement:
        if self._retain_uids:
            return elem
        mapped = [self.pseudonyms.uid(str(v)) for v in _values(elem.value)]
        value: Any = mapped[0] if len(mapped) == 1 else (mapped or None)
        return DataElement(elem.tag, "UI", value)

    def _dummy(self, elem: DataElement) -> DataElement:
        vr = elem.VR
        if vr == "UI":
            return self._uids(elem) if not _is_empty(elem) else elem
        if vr == "SQ":
            return DataElement(elem.tag, "SQ", Sequence([Dataset()]))
        return DataElement(elem.tag, vr, DUMMIES.get(vr))

    def _clean(self, elem: DataElement, patient: _Patient) -> DataElement | None:
        vr = elem.VR
        if vr == "SQ":
            return self._sequence(elem, patient)
        try:
            if vr in ("DA", "DT"):
                if not self._modified_dates:
                    return None
                shift = shift_da if vr == "DA" else shift_dt
                days = patient.shift_days
                shifted = [shift(str(v), days) for v in _values(elem.value)]
                return DataElement(elem.tag, vr, _one_or_many(shifted))
            if vr == "TM":
                return elem  # dates move by whole days; the time of day stays
            if vr in TEXT_VRS:
                cleaned = [patient.cleaner.text(str(v)) for v in _values(elem.value)]
                return DataElement(elem.tag, vr, _one_or_many(cleaned))
        except CleanError:
            return None
        return None  # binary and numeric values cannot be cleaned: removed

    def _safe_private(self, ds: Dataset, tag: int) -> bool:
        if Option.RETAIN_SAFE_PRIVATE not in self.profile.options or not self.safe_private:
            return False
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:  # a private creator: kept if its block keeps anything
            creator = str(ds[tag].value)
            return any(c == creator for c, _ in self.safe_private)
        if element < 0x1000:
            return False
        creator_tag = (group << 16) | (element >> 8)
        if creator_tag not in ds:
            return False
        return (str(ds[creator_tag].value), element & 0xFF) in self.safe_private

    def _marks(self) -> list[DataElement]:
        """Patient Identity Removed, the method and its CID 7050 codes, the dates' fate."""
        codes = []
        for value, meaning in self.profile.codes():
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            codes.append(item)
        if Option.RETAIN_LONG_FULL_DATES in self.profile.options:
            dates = "UNMODIFIED"
        elif self._modified_dates:
            dates = "MODIFIED"
        else:
            dates = "REMOVED"
        method = [METHOD, *sorted(o.value for o in self.profile.options)]
        return [
            DataElement(0x00120062, "CS", "YES"),
            DataElement(0x00120063, "LO", method),
            DataElement(0x00120064, "SQ", Sequence(codes)),
            DataElement(0x00280303, "CS", dates),
        ]

    def _mark(self, out: Dataset) -> None:
        for elem in self._mark_elements:
            out[elem.tag] = elem


def _syntax_of(implicit: bool | None, little: bool | None) -> str | None:
    if implicit is None or little is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _one_or_many(values: list[str]) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else values
