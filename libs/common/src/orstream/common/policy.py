"""The access policy (YAML): each role's rooms, streams, metadata view and rights.

One file configures every service: the edge grants sessions and DataChannels from it, the
metadata service publishes each role's view of the patient context from it. Without
``ORSTREAM_POLICY_FILE`` the defaults of DESIGN.md apply (``policy.yaml`` beside this module).
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orstream.common.subjects import TOKEN_PATTERN

DEFAULT_POLICY = Path(__file__).with_name("policy.yaml")
#: Metadata views that are not de-identification profiles.
IDENTIFIED = "identified"
TECHNICAL = "technical"


class PolicyError(ValueError):
    """The policy file does not load; a service refuses to start rather than guess."""


class RoleGrant(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rooms: tuple[str, ...] = ()
    streams: tuple[str, ...] = ("*",)
    #: ``identified``, ``technical`` or a PS3.15 profile such as ``basic+clean-descriptors``.
    metadata: str = TECHNICAL
    annotate: bool = False
    chat: bool = False
    record: bool = False

    def may_watch(self, site: str, room: str, stream: str | None = None) -> bool:
        where = f"{site}/{room}"
        if not any(fnmatch.fnmatchcase(where, p) for p in self.rooms):
            return False
        return stream is None or any(fnmatch.fnmatchcase(stream, p) for p in self.streams)


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: dict[str, RoleGrant] = Field(min_length=1)

    @field_validator("roles")
    @classmethod
    def _role_names(cls, roles: dict[str, RoleGrant]) -> dict[str, RoleGrant]:
        for name in roles:
            if not re.fullmatch(TOKEN_PATTERN, name):
                raise ValueError(f"role name {name!r} must match {TOKEN_PATTERN}")
        return roles

    def grant(self, role: str) -> RoleGrant | None:
        return self.roles.get(role)

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        source = path or DEFAULT_POLICY
        try:
            data: Any = yaml.safe_load(source.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError(f"cannot read policy {source}: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(f"policy {source} is invalid: {exc}") from exc
