"""Keyed pseudonyms: UIDs, Patient IDs and date shifts derived from one deployment secret.

Each is an HMAC-SHA256 of the original under the deployment's key, so every replica and every
site maps the same UID to the same ``2.25.<int>`` UID, the same patient to the same pseudonym
and the same date shift, and nobody without the key can go back.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from orstream.common.keyfile import create_once

#: Shorter keys are refused: the pseudonyms are only as strong as the key.
MIN_KEY_BYTES = 16
#: Modified dates move back by 30 days to about five years, per patient.
SHIFT_MIN_DAYS = 30
SHIFT_SPAN_DAYS = 5 * 365
_UID_CACHE_SIZE = 65536


class Pseudonyms:
    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the de-identification key must have at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._uids: dict[str, str] = {}

    def _digest(self, purpose: bytes, value: str) -> bytes:
        return hmac.new(self._key, purpose + b"\0" + value.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, uid: str) -> str:
        """``2.25.<int>`` (PS3.5 B.2: a UUID-derived UID) for ``uid``, the same everywhere."""
        uid = uid.strip().rstrip("\0")
        mapped = self._uids.get(uid)
        if mapped is None:
            value = int.from_bytes(self._digest(b"uid", uid)[:16], "big")
            mapped = f"2.25.{value}"
            if len(self._uids) >= _UID_CACHE_SIZE:
                self._uids.clear()
            self._uids[uid] = mapped
        return mapped

    def patient_id(self, patient_id: str, issuer: str = "") -> str:
        """A pseudonymous Patient ID (LO, 19 characters) for ``patient_id`` of ``issuer``."""
        digest = self._digest(b"patient-id", f"{issuer}\\{patient_id.strip()}")
        return "ORS-" + base64.b32encode(digest[:10]).decode("ascii").rstrip("=")

    def date_shift_days(self, patient: str) -> int:
        """How many days this patient's dates move back (always the same for one patient)."""
        value = int.from_bytes(self._digest(b"date-shift", patient)[:4], "big")
        return -(SHIFT_MIN_DAYS + value % SHIFT_SPAN_DAYS)


def load_or_create_key(path: Path) -> bytes:
    """The development key (32 random bytes, hex, mode 0600), created on first use."""
    if not path.exists():
        create_once(path, (secrets.token_hex(32) + "\n").encode("ascii"))
    return bytes.fromhex(path.read_text().strip())
