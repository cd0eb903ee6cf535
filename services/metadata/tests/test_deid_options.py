"""Each option of PS3.15 Table E.1-1 changes exactly what it should, on the OR context."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from orstream.common.samples import PATIENT_ID, or_context
from orstream.metadata.deid import Deidentifier, DeidError
from orstream.metadata.profiles import Profile, ProfileError
from orstream.metadata.pseudonyms import Pseudonyms

KEY = b"options-test-key-0123456789abcdef"


def deid(profile: str, ds: Dataset | None = None) -> Dataset:
    return Deidentifier(Profile.parse(profile), Pseudonyms(KEY)).dataset(ds or or_context())


def test_basic_profile_actions() -> None:
    out = deid("basic")
    assert "PatientName" in out and out["PatientName"].is_empty  # Z
    assert out.PatientID.startswith("ORS-") and out.PatientID != PATIENT_ID  # Z/D: pseudonym
    assert "AdditionalPatientHistory" not in out  # X
    assert "StudyDescription" not in out  # X
    assert out.InstitutionName == "ANONYMOUS"  # X/Z/D, present with a value: dummy
    assert out.StudyInstanceUID.startswith("2.25.")  # U
    assert out.Modality == "ES" and out.Rows == 1080  # not in the table: kept
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]


@pytest.mark.parametrize(
    ("option", "keyword", "expected"),
    [
        ("retain-uids", "StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1.2"),
        ("retain-device-identity", "DeviceSerialNumber", "TWR-4K-0192"),
        ("retain-device-identity", "StationName", "OR1-TOWER"),
        ("retain-institution-identity", "InstitutionName", "St. Elsewhere Hospital"),
        ("retain-patient-characteristics", "PatientSex", "F"),
        ("retain-patient-characteristics", "PatientAge", "062Y"),
        ("retain-long-full-dates", "StudyDate", "20261121"),
    ],
)
def test_retain_options_keep_their_attributes(option: str, keyword: str, expected: str) -> None:
    assert str(deid("basic").get(keyword, "")) != expected
    assert str(deid(f"basic+{option}").get(keyword)) == expected


def test_modified_dates_shift_every_date_by_the_same_per_patient_offset() -> None:
    out = deid("basic+retain-long-modified-dates")
    again = deid("basic+retain-long-modified-dates")
    assert out.StudyDate == again.StudyDate != "20261121"
    assert out.StudyDate == out.PerformedProcedureStepStartDate  # same day in, same day out
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    other = or_context()
    other.PatientID = "MRN-SOMEONE-ELSE"
    assert deid("basic+retain-long-modified-dates", other).StudyDate != out.StudyDate


def test_clean_descriptors_keeps_meaning_and_removes_identities() -> None:
    out = deid("basic+clean-descriptors")
    assert out.StudyDescription == "Laparoscopic cholecystectomy"
    history = str(out.AdditionalPatientHistory)
    assert history.startswith("Cholelithiasis") and "Okafor" not in history
    assert "2026-10-02" not in history
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113105"]
    assert list(out.DeidentificationMethod) == [
        "PS3.15 Annex E Basic Profile",
        "clean-descriptors",
    ]


def test_clean_structured_content_walks_the_content_instead_of_dropping_it() -> None:
    ds = or_context()
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = f"Patient {PATIENT_ID} tolerated the procedure"
    ds.ContentSequence = [item]
    assert len(deid("basic", ds).ContentSequence) == 1  # D: a dummy item
    assert "TextValue" not in deid("basic", ds).ContentSequence[0]
    cleaned = deid("basic+clean-structured-content+clean-descriptors", ds).ContentSequence[0]
    assert cleaned.ValueType == "TEXT"


def test_private_curves_and_overlays_go_unless_safe() -> None:
    ds = or_context()
    block = ds.private_block(0x0009, "ACME OR TOWER", create=True)
    block.add_new(0x01, "LO", "Maria Rivera")
    block.add_new(0x02, "DS", "1.5")
    ds.add_new(0x60003000, "OW", b"\0" * 8)
    ds.add_new(0x60000010, "US", 4)
    out = deid("basic")
    assert not any(e.tag.is_private for e in out)
    assert 0x60003000 not in out and 0x60000010 not in out
    safe = frozenset({("ACME OR TOWER", 0x02)})
    engine = Deidentifier(Profile.parse("basic+retain-safe-private"), Pseudonyms(KEY), safe)
    kept = engine.dataset(ds)
    assert kept[0x00091002].value == "1.5" and 0x00091001 not in kept
    assert kept[0x00090010].value == "ACME OR TOWER"


def test_sequences_are_walked_with_the_same_rules() -> None:
    ds = or_context()
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.1"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5"
    ds.ReferencedImageSequence = [ref]
    out = deid("basic", ds)
    item = out.ReferencedImageSequence[0]  # X/Z/U*, present: kept with UIDs remapped
    assert item.ReferencedSOPInstanceUID == Pseudonyms(KEY).uid("1.2.3.4.5")
    assert item.ReferencedSOPClassUID == ref.ReferencedSOPClassUID


def test_burned_in_annotation_is_refused_and_bad_profiles_do_not_parse() -> None:
    ds = or_context()
    ds.BurnedInAnnotation = "YES"
    ds.PixelData = b"\0" * 16
    with pytest.raises(DeidError, match="Clean Pixel Data"):
        deid("basic", ds)
    for name in (
        "identified",
        "basic+everything",
        "basic+retain-long-full-dates+retain-long-modified-dates",
    ):
        with pytest.raises(ProfileError):
            Profile.parse(name)
    assert Profile.parse("basic+retain-uids+clean-descriptors").name == (
        "basic+clean-descriptors+retain-uids"
    )
