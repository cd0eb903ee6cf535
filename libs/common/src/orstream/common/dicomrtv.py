"""DICOM-RTV (PS3.22) vocabulary: SOP classes, transfer syntaxes and the tags pydicom lacks.

The metadata flow of a DICOM-RTV source carries, per video frame, a Part 10 stream: 128-byte
preamble, ``DICM``, the RTV Meta Information (group 0002: flow transfer syntax, source and flow
UUIDs, sampling rate, frame duration), then the dataset: its static part (patient, study,
equipment; at least once per second) and its dynamic part, the Current Frame Functional Groups
Sequence (0006,0001), one item per frame.
"""

from __future__ import annotations

import uuid

from pydicom.datadict import add_dict_entries, dictionary_has_tag
from pydicom.dataset import Dataset

#: SOP classes of real-time communication (PS3.4 Annex HHH).
VIDEO_ENDOSCOPIC_RTV = "1.2.840.10008.10.1"
VIDEO_PHOTOGRAPHIC_RTV = "1.2.840.10008.10.2"
AUDIO_WAVEFORM_RTV = "1.2.840.10008.10.3"
RENDITION_SELECTION_RTV = "1.2.840.10008.10.4"
#: Transfer syntaxes of the bulk-data flows (PS3.5 10.18).
ST2110_20_PROGRESSIVE = "1.2.840.10008.1.2.7.1"
ST2110_20_INTERLACED = "1.2.840.10008.1.2.7.2"
ST2110_30_PCM = "1.2.840.10008.1.2.7.3"
#: Current Frame Functional Groups Sequence: the dynamic, per-frame part.
CURRENT_FRAME_FUNCTIONAL_GROUPS = 0x00060001

_MISSING = {
    CURRENT_FRAME_FUNCTIONAL_GROUPS: (
        "SQ",
        "1",
        "Current Frame Functional Groups Sequence",
        "",
        "CurrentFrameFunctionalGroupsSequence",
    ),
}


def register_tags() -> None:
    """Teach pydicom the PS3.22 attributes its dictionary does not have (idempotent)."""
    missing = {tag: entry for tag, entry in _MISSING.items() if not dictionary_has_tag(tag)}
    if missing:
        add_dict_entries(missing)


def uuid_of(value: object) -> str:
    """An RTV Source/Flow Identifier (OB, 16 bytes) as a UUID string, or '' if absent/odd."""
    if not isinstance(value, bytes | bytearray) or len(value) != 16:
        return ""
    return str(uuid.UUID(bytes=bytes(value)))


def static_part(ds: Dataset) -> Dataset:
    """The dataset without its dynamic, per-frame part."""
    out = Dataset()
    for elem in ds:
        if elem.tag != CURRENT_FRAME_FUNCTIONAL_GROUPS:
            out.add(elem)
    return out


register_tags()
