"""The Basic Profile over every file of pydicom's bundled test-data corpus, attribute by attribute."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from orstream.metadata import table
from orstream.metadata.deid import Deidentifier, DeidError
from orstream.metadata.profiles import Profile
from orstream.metadata.pseudonyms import Pseudonyms

# The corpus holds deliberately invalid values; pydicom warns as the checks below decode them.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

KEY = b"corpus-test-key-" * 2
BASIC = Profile.parse("basic")
NOT_DICOM = {".icc", ".json", ".txt", ".dump", ".gz"}
UID_2_25 = re.compile(r"^2\.25\.(0|[1-9]\d*)$")


def corpus() -> list[Path]:
    root = Path(DATA_ROOT) / "test_files"
    files = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix not in NOT_DICOM and not p.name.startswith("README")
    ]
    return files


CORPUS = corpus()


def read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the corpus holds deliberately odd values
        return pydicom.dcmread(path, force=True)


def values(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None or value == "" or isinstance(value, Sequence):
        return []
    if isinstance(value, MultiValue | list):
        return [str(v) for v in value]
    return [str(value)]


def walk_pairs(
    source: Dataset, out: Dataset, path: str = ""
) -> Iterator[tuple[str, DataElement, DataElement | None, str]]:
    """Each source element with its counterpart in the output and the Basic Profile action."""
    for elem in source:
        tag = int(elem.tag)
        if tag & 0xFFFF == 0 or tag >> 16 in (0x0000, 0x0002):
            continue
        if table.is_private(tag) or table.is_curve_or_overlay(tag):
            action = "X"
        else:
            action = table.ATTRIBUTES[tag].action(BASIC) if tag in table.ATTRIBUTES else "K"
        counterpart = out.get(elem.tag) if elem.tag in out else None
        here = f"{path}{elem.tag}"
        yield here, elem, counterpart, action
        if (
            elem.VR == "SQ"
            and counterpart is not None
            and action in ("K", "U", "X/Z/U*")
            and isinstance(counterpart.value, Sequence)
            and len(counterpart.value) == len(elem.value)
        ):
            for i, (a, b) in enumerate(zip(elem.value, counterpart.value, strict=True)):
                yield from walk_pairs(a, b, f"{here}[{i}].")


def refused_for_pixels(ds: Dataset) -> bool:
    return "PixelData" in ds and "YES" in (
        str(ds.get("BurnedInAnnotation", "")).upper(),
        str(ds.get("RecognizableVisualFeatures", "")).upper(),
    )


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) >= 60, f"pydicom's bundled corpus has only {len(CORPUS)} files"


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_no_value_survives_whose_action_is_not_keep(path: Path) -> None:
    source = read(path)
    engine = Deidentifier(BASIC, Pseudonyms(KEY))
    if refused_for_pixels(source):
        # Burned-in annotation needs Clean Pixel Data, which this engine does not do.
        with pytest.raises(DeidError, match="Clean Pixel Data"):
            engine.file(source)
        return
    out = engine.file(source)
    pseudonyms = Pseudonyms(KEY)
    checked = 0
    for where, elem, new, action in walk_pairs(source, out):
        if action == "K" or new is None:
            continue
        old_values, new_values = values(elem), values(new)
        checked += 1
        if elem.VR == "UI" and not action.startswith("X/Z/U"):
            assert new_values == [pseudonyms.uid(v) for v in old_values], where
            assert all(UID_2_25.match(v) and len(v) <= 64 for v in new_values), where
            continue
        for value in old_values:
            if value.strip() and value not in ("ANONYMOUS", "0", "19000101", "000000"):
                assert value not in new_values, f"{path.name} {where} ({action}) kept {value!r}"
    for elem in out.iterall():
        assert not table.is_private(int(elem.tag)), f"{path.name}: private {elem.tag} kept"
        assert not table.is_curve_or_overlay(int(elem.tag)), f"{path.name}: {elem.tag} kept"
    # Names and IDs appear nowhere in the output, not even inside another attribute.
    text = str(as_json(out))
    for keyword in ("PatientName", "PatientID", "OtherPatientIDs", "AccessionNumber"):
        original = str(source.get(keyword, "") or "")
        if len(original) >= 4:
            assert original not in text, f"{path.name}: {keyword} {original!r} leaked"
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    # Still DICOM: pydicom writes it, reads it back, and writes it again.
    buffer = io.BytesIO()
    out.save_as(buffer)
    again = read_bytes(buffer.getvalue())
    assert again.PatientIdentityRemoved == "YES"
    if "SOPInstanceUID" in source:
        assert again.SOPInstanceUID == pseudonyms.uid(str(source.SOPInstanceUID))
        assert again.file_meta.MediaStorageSOPInstanceUID == again.SOPInstanceUID
    again.save_as(io.BytesIO())
    if "PatientName" in source and str(source.PatientName):
        assert checked > 0


def as_json(ds: Dataset) -> dict[str, object]:
    """DICOM JSON without bulk data; values invalid for their VR (badVR.dcm) are left out."""
    return ds.to_json_dict(64, lambda e: "", suppress_invalid_tags=True)


def read_bytes(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        for _ in ds.iterall():  # decode every value: a bad one raises here
            pass
        return ds


def test_uids_map_the_same_across_files_and_engine_instances() -> None:
    first = Deidentifier(BASIC, Pseudonyms(KEY))
    seen: dict[str, str] = {}
    studies = 0
    for path in CORPUS:
        source = read(path)
        try:
            a = first.file(source)
        except DeidError:
            continue
        b = Deidentifier(BASIC, Pseudonyms(KEY)).file(read(path))
        assert as_json(a) == as_json(b), path.name
        for where, elem, new, _ in walk_pairs(source, a):
            if elem.VR != "UI" or new is None or new.value == elem.value:
                continue
            for old, mapped in zip(values(elem), values(new), strict=False):
                assert seen.setdefault(old, mapped) == mapped, f"{old} mapped twice ({where})"
        studies += "StudyInstanceUID" in source
    # The corpus shares studies across files (e.g. the MR and CT series): same UID, same map.
    assert studies > 20 and len(seen) > 50
    other = Deidentifier(BASIC, Pseudonyms(b"another-key-0123456789"))
    ct = read(CORPUS[[p.name for p in CORPUS].index("CT_small.dcm")])
    assert other.dataset(ct).StudyInstanceUID != first.dataset(ct).StudyInstanceUID
