"""Each role's view of one context dataset, rendered once per view as DICOM JSON (PS3.18 F.2).

Roles that share a view (surgeon and expert both see ``identified``) share its bytes. A role
whose view fails — a profile that does not parse, a dataset the engine refuses — gets nothing
for that dataset; no view ever falls back to another.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import msgspec
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from orstream.common.policy import IDENTIFIED, TECHNICAL, Policy
from orstream.metadata.deid import Deidentifier, DeidError
from orstream.metadata.profiles import Profile, ProfileError
from orstream.metadata.pseudonyms import Pseudonyms

log = logging.getLogger(__name__)

#: Context, not images: pixel, waveform, spectroscopy and audio data, encapsulated documents
#: and icon images never travel to a viewer as metadata.
BULK_GROUPS = frozenset({0x7FE0, 0x5400, 0x5600, 0x5000, 0x6000})
BULK_TAGS = frozenset({0x00420011, 0x00880200})
#: The technical view: device, picture geometry and timing; nothing about patient or study.
TECHNICAL_TAGS = frozenset(
    {
        0x00080016,  # SOP Class UID
        0x00080060,  # Modality
        0x00080070,  # Manufacturer
        0x00081010,  # Station Name
        0x00081090,  # Manufacturer's Model Name
        0x00181000,  # Device Serial Number
        0x00181020,  # Software Versions
        0x00180040,  # Cine Rate
        0x00181063,  # Frame Time
        0x00082144,  # Recommended Display Frame Rate
        0x00280002,  # Samples per Pixel
        0x00280004,  # Photometric Interpretation
        0x00280008,  # Number of Frames
        0x00280010,  # Rows
        0x00280011,  # Columns
        0x00280100,  # Bits Allocated
        0x00280101,  # Bits Stored
        0x00282110,  # Lossy Image Compression
    }
)
#: pydicom's UID and PersonName values are str subclasses msgspec does not know.
_ENCODER = msgspec.json.Encoder(enc_hook=str)


class ViewError(Exception):
    """This view of this dataset could not be made; its roles get nothing."""


def _drop_bulk(_: DataElement) -> str:
    raise ViewError("bulk data reached the JSON rendering")


def to_json(ds: Dataset) -> bytes:
    """DICOM JSON of ``ds``; a value invalid for its VR is left out, not guessed."""
    try:
        model = ds.to_json_dict(
            bulk_data_threshold=1 << 20,
            bulk_data_element_handler=_drop_bulk,
            suppress_invalid_tags=True,
        )
    except ViewError:
        raise
    except Exception as exc:
        raise ViewError(f"cannot render DICOM JSON: {exc!r}") from exc
    return _ENCODER.encode(model)


def without_bulk(ds: Dataset) -> Dataset:
    out = Dataset()
    for key in list(ds.keys()):
        tag = int(key)
        if tag >> 16 in BULK_GROUPS or (tag >> 16) & 0xFF00 in BULK_GROUPS or tag in BULK_TAGS:
            continue
        item = ds.get_item(key)
        if item is not None:
            out[key] = item
    implicit, little = ds.original_encoding
    out.set_original_encoding(implicit, little, ds.original_character_set)
    return out


class View(Protocol):
    name: str

    def render(self, ds: Dataset) -> bytes: ...


class IdentifiedView:
    name = IDENTIFIED

    def render(self, ds: Dataset) -> bytes:
        return to_json(ds)


class TechnicalView:
    name = TECHNICAL

    def render(self, ds: Dataset) -> bytes:
        out = Dataset()
        for key in list(ds.keys()):
            if int(key) in TECHNICAL_TAGS:
                item = ds.get_item(key)
                if item is not None:
                    out[key] = item
        implicit, little = ds.original_encoding
        out.set_original_encoding(implicit, little, ds.original_character_set)
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = "orstream technical view: device, stream, timing only"
        return to_json(out)


class DeidentifiedView:
    def __init__(self, engine: Deidentifier) -> None:
        self.engine = engine
        self.name = engine.profile.name

    def render(self, ds: Dataset) -> bytes:
        try:
            return to_json(self.engine.dataset(ds))
        except DeidError as exc:
            raise ViewError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class Rendered:
    role: str
    view: str
    payload: bytes | None
    error: str | None = None
    #: The patient's keyed pseudonym (empty when the context names no patient).
    patient: str = ""


class ViewSet:
    """The views the policy's roles need, each built once; ``render`` makes all of them."""

    def __init__(self, policy: Policy, pseudonyms: Pseudonyms) -> None:
        self.pseudonyms = pseudonyms
        self.views: dict[str, View] = {}
        self.role_view: dict[str, str] = {}
        self.broken: dict[str, str] = {}
        for role, grant in policy.roles.items():
            name = grant.metadata.strip()
            try:
                view = self._view(name, pseudonyms)
            except ProfileError as exc:
                self.broken[role] = f"metadata view {name!r} of role {role!r}: {exc}"
                log.error("%s; role %r gets no metadata", self.broken[role], role)
                continue
            self.views.setdefault(view.name, view)
            self.role_view[role] = view.name

    @staticmethod
    def _view(name: str, pseudonyms: Pseudonyms) -> View:
        if name == IDENTIFIED:
            return IdentifiedView()
        if name == TECHNICAL:
            return TechnicalView()
        return DeidentifiedView(Deidentifier(Profile.parse(name), pseudonyms))

    def patient(self, ds: Dataset) -> str:
        """The pseudonym of the patient ``ds`` names, as the de-identified views map it."""
        patient_id = str(ds.get("PatientID", "") or "")
        if not patient_id.strip():
            return ""
        return self.pseudonyms.patient_id(patient_id, str(ds.get("IssuerOfPatientID", "") or ""))

    def render(self, ds: Dataset) -> list[Rendered]:
        """Every role's view of ``ds`` (CPU work: call it off the event loop)."""
        context = without_bulk(ds)
        payloads: dict[str, bytes | str] = {}
        for name, view in self.views.items():
            try:
                payloads[name] = view.render(context)
            except ViewError as exc:
                payloads[name] = str(exc)
        patient = self.patient(context)
        out: list[Rendered] = []
        for role, name in self.role_view.items():
            payload = payloads[name]
            if isinstance(payload, bytes):
                out.append(Rendered(role, name, payload, patient=patient))
            else:
                out.append(Rendered(role, name, None, payload))
        out.extend(Rendered(role, "", None, reason) for role, reason in self.broken.items())
        return out
