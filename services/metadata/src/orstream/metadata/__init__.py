"""Metadata: the OR's DICOM context, de-identified per role (PS3.15 Annex E)."""
