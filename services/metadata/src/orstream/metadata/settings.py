"""Settings of the metadata service (``ORSTREAM_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from orstream.common.config import CommonSettings
from orstream.metadata.pseudonyms import MIN_KEY_BYTES, load_or_create_key
from orstream.metadata.worklist import WorklistSettings

#: Context datasets waiting for de-identification before new ones are dropped (and counted).
DEFAULT_MAX_BACKLOG = 512


class MetadataSettings(CommonSettings):
    #: The deployment's de-identification secret (hex, or any text of at least 16 bytes): the
    #: same on every replica and site, so UIDs, pseudonyms and date shifts agree everywhere.
    #: Unset: a development key is created in ``state_dir`` on first start.
    deid_key: SecretStr | None = None
    #: Bearer key systems without DICOM present to ``POST`` context; unset: that intake is off.
    context_api_key: SecretStr | None = None
    #: The Modality Worklist to poll (JSON); unset: no worklist.
    worklist: WorklistSettings | None = None
    max_backlog: int = Field(default=DEFAULT_MAX_BACKLOG, ge=1)

    @property
    def deid_key_path(self) -> Path:
        return self.state_dir / "deid-key"

    def deid_key_bytes(self) -> bytes:
        if self.deid_key is None:
            return load_or_create_key(self.deid_key_path)
        text = self.deid_key.get_secret_value().strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = text.encode("utf-8")
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"ORSTREAM_DEID_KEY must hold at least {MIN_KEY_BYTES} bytes")
        return key
