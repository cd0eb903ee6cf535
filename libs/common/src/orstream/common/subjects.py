"""NATS subject names and the stream registry's keys: they are spelled here and nowhere else.

::

    or.<site>.<room>.<stream>.frame              ingest  -> encoder   raw frame ready in the ring
    or.<site>.<room>.<stream>.enc.<rendition>    encoder -> edge      one encoded access unit
    or.<site>.<room>.<stream>.keyframe           edge    -> encoder   please send an IDR soon
    or.<site>.<room>.<stream>.interest           edge    -> encoder   renditions with watchers
    or.<site>.<room>.meta.in                     ingest  -> metadata  identified DICOM context
    or.<site>.<room>.meta.role.<role>            metadata -> edge     a role's view of it
    or.<site>.<room>.annot                       edge    -> displays  telestration, chat
    auth.revoke                                  admin   -> edge      end sessions now
    audit.<site>.>                               all     -> AUDIT     who saw what, when
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOKEN_PATTERN = r"^[A-Za-z0-9_-]+$"
_TOKEN = re.compile(TOKEN_PATTERN)

#: JetStream KV bucket holding one descriptor per stream, key ``<site>.<room>.<stream>``.
REGISTRY_BUCKET = "orstream-streams"
#: JetStream KV bucket of encoder leases: ``claim.<site>.<room>.<stream>`` → the replica encoding
#: it, ``replica.<site>.<replica>`` → a replica's presence; both renewed by heartbeat.
ENCODER_BUCKET = "orstream-encoders"
AUTH_REVOKE = "auth.revoke"
#: JetStream stream holding the audit trail of every site, and the subjects it takes.
AUDIT_STREAM = "AUDIT"
AUDIT_SUBJECTS = "audit.>"
#: Rendition name of the stream at its source size.
SOURCE_RENDITION = "src"


def check_token(value: str, what: str = "token") -> str:
    """Return ``value`` if it may stand as one subject token, else raise ``ValueError``."""
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must match {TOKEN_PATTERN}")
    return value


@dataclass(frozen=True, slots=True)
class StreamId:
    """One video stream: a source in an operating room of a site."""

    site: str
    room: str
    stream: str

    def __post_init__(self) -> None:
        check_token(self.site, "site")
        check_token(self.room, "room")
        check_token(self.stream, "stream")

    @classmethod
    def parse(cls, key: str) -> StreamId:
        """Parse a registry key ``<site>.<room>.<stream>``."""
        parts = key.split(".")
        if len(parts) != 3:
            raise ValueError(f"stream key {key!r} is not <site>.<room>.<stream>")
        return cls(*parts)

    @classmethod
    def from_subject(cls, subject: str) -> StreamId | None:
        """The stream of ``or.<site>.<room>.<stream>.<kind>…``, or ``None`` if not one."""
        parts = subject.split(".", 5)
        if len(parts) < 5 or parts[0] != "or":
            return None
        try:
            return cls(parts[1], parts[2], parts[3])
        except ValueError:
            return None

    @property
    def key(self) -> str:
        """Key of this stream in the registry bucket."""
        return f"{self.site}.{self.room}.{self.stream}"

    @property
    def ring_name(self) -> str:
        """Name of the shared-memory ring that carries this stream's raw frames."""
        return f"orstream-{self.site}-{self.room}-{self.stream}"

    def _prefix(self) -> str:
        return f"or.{self.site}.{self.room}.{self.stream}"

    def frame(self) -> str:
        return f"{self._prefix()}.frame"

    def encoded(self, rendition: str = SOURCE_RENDITION) -> str:
        return f"{self._prefix()}.enc.{check_token(rendition, 'rendition')}"

    def keyframe(self) -> str:
        return f"{self._prefix()}.keyframe"

    def interest(self) -> str:
        return f"{self._prefix()}.interest"

    @property
    def claim_key(self) -> str:
        """Key of this stream's encoder lease in the encoder bucket."""
        return f"claim.{self.key}"

    def __str__(self) -> str:
        return self.key


def replica_key(site: str, replica: str) -> str:
    """Key of an encoder replica's presence in the encoder bucket."""
    return f"replica.{check_token(site, 'site')}.{check_token(replica, 'replica')}"


def meta_in(site: str, room: str) -> str:
    return f"or.{check_token(site, 'site')}.{check_token(room, 'room')}.meta.in"


def all_meta_in(site: str) -> str:
    return f"or.{check_token(site, 'site')}.*.meta.in"


def meta_in_room(subject: str) -> tuple[str, str]:
    """``(site, room)`` of a ``meta.in`` subject; ValueError if it is not one."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != "or" or parts[3:] != ["meta", "in"]:
        raise ValueError(f"not a meta.in subject: {subject!r}")
    return check_token(parts[1], "site"), check_token(parts[2], "room")


def meta_role(site: str, room: str, role: str) -> str:
    return (
        f"or.{check_token(site, 'site')}.{check_token(room, 'room')}"
        f".meta.role.{check_token(role, 'role')}"
    )


def annotation(site: str, room: str) -> str:
    return f"or.{check_token(site, 'site')}.{check_token(room, 'room')}.annot"


def audit(site: str, kind: str) -> str:
    return f"audit.{check_token(site, 'site')}.{check_token(kind, 'kind')}"


def all_audit(site: str) -> str:
    """Every audit record of ``site``."""
    return f"audit.{check_token(site, 'site')}.>"
