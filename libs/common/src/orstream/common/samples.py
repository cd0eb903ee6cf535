"""A synthetic OR context: a fictitious patient, procedure and endoscope, as a DICOM-RTV grain.

The test pattern source sends it so a demo shows patient context, and tests and benchmarks use
it as the "typical OR context dataset": patient, study, procedure, equipment and institution
(the static part) plus the per-frame Current Frame Functional Groups (the dynamic part).
Every value is invented.
"""

from __future__ import annotations

import io
import uuid

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from orstream.common.dicomrtv import (
    CURRENT_FRAME_FUNCTIONAL_GROUPS,
    ST2110_20_PROGRESSIVE,
    VIDEO_ENDOSCOPIC_RTV,
)

ROOT = "1.2.826.0.1.3680043.8.498"
SOURCE_ID = uuid.UUID("6f1c5a52-1d0b-4c3e-9a57-7d0c9b1f2a01")
FLOW_ID = uuid.UUID("0b7a3c9e-55c2-4f0e-8d3d-2f6f4b8e9c02")
#: The identifying values, for tests that check none of them reaches a de-identified view.
PATIENT_NAME = "Rivera^Maria^Elena"
PATIENT_ID = "MRN-00427731"
ACCESSION = "ACC-2026-118842"
REFERRING = "Okafor^Chidi"
PERFORMING = "Lindqvist^Astrid"
OPERATOR = "Tanaka^Hiro"
IDENTIFYING = (
    "Rivera",
    "Maria",
    PATIENT_ID,
    ACCESSION,
    "Okafor",
    "Lindqvist",
    "Tanaka",
    "19640312",
    "St. Elsewhere",
)


def or_context(frame: int = 0, study: int = 1) -> Dataset:
    """The context of frame ``frame`` of a laparoscopy (study ``study`` picks the patient)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = VIDEO_ENDOSCOPIC_RTV
    ds.SOPInstanceUID = f"{ROOT}.{study}.1.1"
    ds.StudyDate = "20261121"
    ds.StudyTime = "081500"
    ds.ContentDate = "20261121"
    ds.ContentTime = "081502.120"
    ds.AccessionNumber = ACCESSION
    ds.Modality = "ES"
    ds.Manufacturer = "Endoscopy Co"
    ds.InstitutionName = "St. Elsewhere Hospital"
    ds.InstitutionAddress = "1 Harbour Road, Springfield"
    ds.ReferringPhysicianName = REFERRING
    ds.StationName = "OR1-TOWER"
    ds.StudyDescription = "Laparoscopic cholecystectomy"
    ds.SeriesDescription = "Main laparoscope"
    ds.InstitutionalDepartmentName = "General Surgery"
    ds.PerformingPhysicianName = PERFORMING
    ds.OperatorsName = OPERATOR
    ds.ManufacturerModelName = "Tower 4K"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.IssuerOfPatientID = "StElsewhere-MRN"
    ds.PatientBirthDate = "19640312"
    ds.PatientSex = "F"
    ds.PatientAge = "062Y"
    ds.PatientSize = 1.68
    ds.PatientWeight = 71.5
    ds.AdditionalPatientHistory = "Cholelithiasis, seen 2026-10-02 by Dr Okafor"
    ds.DeviceSerialNumber = "TWR-4K-0192"
    ds.SoftwareVersions = "4.2.1"
    ds.ProtocolName = "Lap chole"
    ds.StudyInstanceUID = f"{ROOT}.{study}.2"
    ds.SeriesInstanceUID = f"{ROOT}.{study}.3"
    ds.StudyID = "S118842"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = f"{ROOT}.{study}.4"
    ds.Rows = 1080
    ds.Columns = 1920
    ds.RequestedProcedureDescription = "Cholecystectomy, laparoscopic"
    ds.PerformedProcedureStepStartDate = "20261121"
    ds.PerformedProcedureStepID = "PPS-7731"
    content = Dataset()
    content.FrameAcquisitionNumber = frame
    content.FrameReferenceDateTime = f"20261121081502.{frame % 1000000:06d}"
    item = Dataset()
    item.FrameContentSequence = [content]
    ds.add_new(CURRENT_FRAME_FUNCTIONAL_GROUPS, "SQ", [item])
    return ds


def rtv_grain(frame: int = 0, study: int = 1) -> bytes:
    """:func:`or_context` as a DICOM-RTV metadata grain (Part 10 with RTV Meta Information)."""
    ds = or_context(frame, study)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = UID(ST2110_20_PROGRESSIVE)  # the video flow's; metadata is Explicit LE
    meta.MediaStorageSOPClassUID = UID(VIDEO_ENDOSCOPIC_RTV)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.RTVMetaInformationVersion = b"\x00\x01"
    meta.RTVCommunicationSOPClassUID = VIDEO_ENDOSCOPIC_RTV
    meta.RTVCommunicationSOPInstanceUID = ds.SOPInstanceUID
    meta.RTVSourceIdentifier = SOURCE_ID.bytes
    meta.RTVFlowIdentifier = FLOW_ID.bytes
    meta.RTVFlowRTPSamplingRate = 90000
    meta.RTVFlowActualFrameDuration = 20.0
    ds.file_meta = meta
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()
