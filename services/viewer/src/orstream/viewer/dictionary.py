"""The DICOM data dictionary for the browser: tag → attribute name, from pydicom's dictionary.

The metadata panel receives DICOM JSON, which names attributes by tag only. Serving the names
from the same dictionary the services use keeps the panel's labels in step with pydicom, and the
page needs nothing from outside the hospital network. Retired attributes are left out.
"""

from __future__ import annotations

import json
from functools import cache

from pydicom import datadict
from starlette.requests import Request
from starlette.responses import Response


@cache
def dictionary_json() -> bytes:
    """``{"00100010": "Patient's Name", …}`` for every current (not retired) attribute."""
    entries: dict[int, tuple[str, str, str, str, str]] = datadict.DicomDictionary  # type: ignore[attr-defined]
    names = {f"{tag:08X}": entry[2] for tag, entry in entries.items() if not entry[3]}
    return json.dumps(names, separators=(",", ":"), sort_keys=True).encode()


async def dictionary(_: Request) -> Response:
    return Response(
        dictionary_json(),
        media_type="application/json",
        headers={"Cache-Control": "public, max-age=86400"},
    )
