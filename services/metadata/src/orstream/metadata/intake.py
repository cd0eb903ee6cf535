"""Reading context datasets as they arrive: Part 10 bytes or DICOM JSON, bounded and checked.

A DICOM-RTV grain comes once per video frame, so its Part 10 stream is read without pydicom's
full file-meta pass: the transfer syntax is picked out of group 0002 and the dataset after it
is read directly (Explicit VR Little Endian, which PS3.22 prescribes for the metadata flow);
anything else takes pydicom's general path.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian

from orstream.common.dicomrtv import ST2110_20_INTERLACED, ST2110_20_PROGRESSIVE, ST2110_30_PCM

#: A context dataset larger than this is not context; it is refused before it is parsed.
MAX_CONTEXT_BYTES = 256 * 1024
PREAMBLE = 128
_UNDEFINED = 0xFFFFFFFF
_GROUP_LENGTH = b"\x02\x00\x00\x00UL\x04\x00"
_TRANSFER_SYNTAX = b"\x02\x00\x10\x00UI"
#: Transfer syntaxes whose dataset is Explicit VR Little Endian (the RTV flows' included).
_EXPLICIT_LE = frozenset(
    {ExplicitVRLittleEndian, ST2110_20_PROGRESSIVE, ST2110_20_INTERLACED, ST2110_30_PCM}
)


class ContextError(ValueError):
    """A context dataset that cannot be read; it is dropped and counted, nothing is published."""


def _check_size(size: int) -> None:
    if size > MAX_CONTEXT_BYTES:
        raise ContextError(f"context dataset of {size} bytes exceeds {MAX_CONTEXT_BYTES}")


def read_part10(data: bytes) -> Dataset:
    """The dataset of a Part 10 stream (preamble, ``DICM``, group 0002, dataset)."""
    _check_size(len(data))
    if len(data) < PREAMBLE + 12 or data[PREAMBLE : PREAMBLE + 4] != b"DICM":
        raise ContextError("not a DICOM Part 10 stream (no DICM prefix)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = PREAMBLE + 4
            if data[start : start + 8] == _GROUP_LENGTH:
                body = start + 12 + int.from_bytes(data[start + 8 : start + 12], "little")
                if body >= len(data):
                    raise ContextError("Part 10 stream ends inside its group 0002")
                at = data.find(_TRANSFER_SYNTAX, start, body)
                if at >= 0:
                    size = int.from_bytes(data[at + 6 : at + 8], "little")
                    syntax = data[at + 8 : at + 8 + size].rstrip(b"\0 ").decode("ascii")
                    if syntax in _EXPLICIT_LE:
                        # Values are decoded as the views need them; a damaged one then fails
                        # that view (its roles get nothing), never another role's.
                        ds = read_dataset(io.BytesIO(data[body:]), False, True)
                        _check_complete(ds, len(data) - body)
                        return ds
            ds = dcmread(io.BytesIO(data))
            for _ in ds.iterall():
                pass
            if not ds:
                raise ContextError("Part 10 stream holds no dataset")
            return ds
    except ContextError:
        raise
    except Exception as exc:
        raise ContextError(f"unreadable DICOM Part 10 context: {exc}") from exc


def _check_complete(ds: Dataset, size: int) -> None:
    """pydicom reads a truncated stream without complaint; every value must be whole."""
    last_end = 0
    for key in list(ds.keys()):
        raw = ds.get_item(key)
        if not isinstance(raw, RawDataElement) or raw.length == _UNDEFINED:
            last_end = size  # a sequence of undefined length: its items end at the end
            continue
        value = raw.value if raw.value is not None else b""
        if len(value) != raw.length:
            raise ContextError(f"{raw.tag} is cut short ({len(value)} of {raw.length} bytes)")
        last_end = raw.value_tell + raw.length
    if ds and last_end != size:
        raise ContextError(f"Part 10 stream ends {size - last_end} bytes past its last element")


def read_json(data: bytes) -> Dataset:
    """One dataset in the DICOM JSON Model (an array holding exactly one is accepted too)."""
    _check_size(len(data))
    try:
        model: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContextError(f"not JSON: {exc}") from exc
    if isinstance(model, list):
        if len(model) != 1:
            raise ContextError(f"expected one dataset, got an array of {len(model)}")
        model = model[0]
    if not isinstance(model, dict):
        raise ContextError("a DICOM JSON dataset is an object keyed by tags")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = Dataset.from_json(model)
            for _ in ds.iterall():
                pass
            return ds
    except Exception as exc:
        raise ContextError(f"not a DICOM JSON dataset: {exc}") from exc
