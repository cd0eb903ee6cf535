"""Audit records: who saw which patient's stream, when, and who was refused.

Each record is one DICOM audit message (PS3.15 A.5, "Audit Trail Message Format Profile", of
RFC 3881 lineage) that validates against the standard's schema (``data/audit-message.rnc``)::

    AuditMessage
      EventIdentification          EventID, EventTypeCode*, EventOutcomeDescription?
                                   EventActionCode, EventDateTime (UTC), EventOutcomeIndicator
      ActiveParticipant            the user: UserID, UserIsRequestor, RoleIDCode, client address
      ActiveParticipant            this service instance: (110150, DCM, "Application"), host, pid
      AuditSourceIdentification    AuditEnterpriseSiteID = site, AuditSourceID = service instance
      ParticipantObjectIdentification*
                                   the patient: type 1 role 1, (2, RFC-3881, "Patient Number"),
                                   the PSEUDONYM only; the room and its streams: type 2 "system
                                   object", details Room, Stream*, Role, Session ID, ...

A record also has a ``kind``, the last token of its subject ``audit.<site>.<kind>``
(``auth``, ``session``, ``denial``, or any other for :func:`audit_event`).

Event codes (DCM codes of PS3.16 CID 400 "Audit Event ID" and CID 401 "Audit Event Type Code"):

- ``user_authentication`` → kind ``auth``: EventID (110114, DCM, "User Authentication"),
  action E, type (110122, DCM, "Login"), outcome 0 (accepted) or 4 (refused).
- ``session_started`` → kind ``session``: EventID (110103, DCM, "DICOM Instances Accessed"),
  action R, type (110145, DCM, "Session start"), outcome 0.
- ``session_stopped`` → kind ``session``: the same EventID, action R, type (110146, DCM,
  "Session stop"), outcome 0, the reason as EventOutcomeDescription.
- ``access_denied`` → kind ``denial``: the same EventID, action R (view) or C (annotate, chat,
  record; see :data:`ACTION_CODES`), type (110147, DCM, "Access Control Decision"), outcome 4,
  "<HTTP status>: <reason>" as EventOutcomeDescription.

Why these codes:

- *User Authentication* is A.5.3.12 as written: a login attempt, successful or not, by a person,
  checked by a node (this service is the second participant).
- *Watching a stream is reading the patient's images*: the video is the pixel data of the OR's
  acquisition (DICOM-RTV, Video Endoscopic), and A.5.3.6 "DICOM Instances Accessed" ("SOP
  Instances being viewed, utilized, ...") is the message an auditor queries for "who looked at
  this patient". The CID 401 types *Session start* / *Session stop* mark the two ends of one
  viewing; the ``Session ID`` detail ties them together. A.5.3.6 lists the studies as
  participant objects; a live session is of a room and its streams, so those are identified as a
  system object, and the study is added when the caller knows its UID.
- *A refusal is the attempted access with a failure outcome*: A.5.2 makes the outcome describe
  the attempted action and gives failed aspects a message of their own, so "who tried to see
  this patient" is the same query as "who saw". Outcome 4 (minor failure: the request was
  refused, the system is sound). *Security Alert* (110113, A.5.3.11) is left for node-level
  alerts — its types (CID 403) are node authentication, configuration changes, emergency
  override — whereas a role refused a room is the access policy working as intended.

A refused annotation or chat is ``access_denied`` with that action. Other events (a revocation,
an application start, ...) are built with :func:`audit_event` from the code constants below, or
as an :class:`AuditRecord` directly.

The identified patient never enters a record: builders take only the keyed pseudonym, the one
the metadata service puts on every role message (``Orstream-Patient``) and the de-identified
views carry as Patient ID. The schema wants a ParticipantObjectName (or a query) on every
object, so the patient's "name" there is the pseudonym too.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import socket
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import cast

from orstream.common.subjects import audit as audit_subject
from orstream.common.subjects import check_token

#: Longest text kept in any one field; longer text (a reason, a claimed user id) is cut.
MAX_TEXT_CHARS = 1024
#: Coding scheme designator of orstream's own codes (PS3.3 8.2: local designators begin "99").
LOCAL_SCHEME = "99ORSTREAM"

KIND_AUTH = "auth"
KIND_SESSION = "session"
KIND_DENIAL = "denial"


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value: ``csd-code``, ``codeSystemName`` (scheme designator) and ``originalText``
    (the DICOM Code Meaning)."""

    code: str
    scheme: str
    meaning: str


# Event IDs (CID 400).
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
DICOM_INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
# Event type codes (CID 401).
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
USER_SECURITY_ATTRIBUTES_CHANGED = Code("110137", "DCM", "User Security Attributes Changed")
SESSION_START = Code("110145", "DCM", "Session start")
SESSION_STOP = Code("110146", "DCM", "Session stop")
ACCESS_CONTROL_DECISION = Code("110147", "DCM", "Access Control Decision")
# Participant roles and object identifier types (PS3.15 A.5.1.2, A.5.3).
APPLICATION_ROLE = Code("110150", "DCM", "Application")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
URI = Code("12", "RFC-3881", "URI")
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")


class EventAction(StrEnum):
    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.2)."""

    SUCCESS = 0
    #: Action refused or restarted, e.g. an invalid password on a first try.
    MINOR_FAILURE = 4
    #: Action terminated.
    SERIOUS_FAILURE = 8
    #: Action made unavailable, e.g. an account disabled.
    MAJOR_FAILURE = 12


class ObjectType(IntEnum):
    """ParticipantObjectTypeCode."""

    PERSON = 1
    SYSTEM_OBJECT = 2
    ORGANIZATION = 3
    OTHER = 4


class ObjectRole(IntEnum):
    """ParticipantObjectTypeCodeRole (the ones used here; the schema lists 26)."""

    PATIENT = 1
    REPORT = 3
    SECURITY_RESOURCE = 13


class AuditSourceType(StrEnum):
    """AuditSourceTypeCode (PS3.15 A.5.1.2.1)."""

    END_USER_INTERFACE = "1"
    ACQUISITION_DEVICE = "2"
    WEB_SERVER = "3"
    APPLICATION_SERVER = "4"
    DATABASE_SERVER = "5"
    SECURITY_SERVER = "6"
    NETWORK_COMPONENT = "7"
    OPERATING_SOFTWARE = "8"
    OTHER = "9"


#: EventActionCode of an attempted access, by the edge's name for the action.
ACTION_CODES: dict[str, EventAction] = {
    "view": EventAction.READ,
    "watch": EventAction.READ,
    "read": EventAction.READ,
    "metadata": EventAction.READ,
    "annotate": EventAction.CREATE,
    "chat": EventAction.CREATE,
    "record": EventAction.CREATE,
}


@dataclass(frozen=True, slots=True)
class ActiveParticipant:
    """A person or process taking part in the event."""

    user_id: str
    is_requestor: bool
    alternative_user_id: str | None = None
    user_name: str | None = None
    roles: tuple[Code, ...] = ()
    #: IP address or host name of the participant's device.
    network_access_point: str | None = None

    @property
    def network_access_point_type(self) -> str | None:
        """``2`` for an IP address, ``1`` for a machine name (A.5.1)."""
        if not self.network_access_point:
            return None
        try:
            ipaddress.ip_address(self.network_access_point)
        except ValueError:
            return "1"
        return "2"


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """Something the event was about: a patient, a room's streams, a study."""

    object_id: str
    id_type: Code
    #: Required by the schema unless there is a query.
    name: str | None = None
    query: bytes | None = None
    type_code: ObjectType | None = None
    role: ObjectRole | None = None
    #: ``ParticipantObjectDetail`` pairs, in order; a type may repeat (one ``Stream`` per stream).
    details: tuple[tuple[str, str], ...] = ()

    def detail(self, kind: str) -> list[str]:
        """Values of the details of type ``kind``."""
        return [value for name, value in self.details if name == kind]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit message; :meth:`to_xml` gives its DICOM XML, :attr:`subject` where it goes."""

    kind: str
    site: str
    source_id: str
    event_id: Code
    outcome: Outcome
    participants: tuple[ActiveParticipant, ...]
    event_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    action: EventAction | None = None
    event_types: tuple[Code, ...] = ()
    outcome_description: str | None = None
    objects: tuple[ParticipantObject, ...] = ()
    source_type: AuditSourceType = AuditSourceType.APPLICATION_SERVER
    #: Unique per record; the JetStream message id, so a retried publish is stored once.
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        check_token(self.kind, "audit kind")
        check_token(self.site, "site")
        if not self.participants:
            raise ValueError("an audit record needs at least one active participant")
        if self.event_time.tzinfo is None:
            raise ValueError("event_time must be timezone-aware")

    @property
    def subject(self) -> str:
        return audit_subject(self.site, self.kind)

    @property
    def requestor(self) -> ActiveParticipant | None:
        return next((p for p in self.participants if p.is_requestor), None)

    @property
    def patient(self) -> ParticipantObject | None:
        return next((o for o in self.objects if o.role is ObjectRole.PATIENT), None)

    def to_xml(self) -> bytes:
        """The record as a DICOM ``AuditMessage`` (UTF-8, with an XML declaration)."""
        root = ET.Element("AuditMessage")
        event = ET.SubElement(root, "EventIdentification")
        if self.action is not None:
            event.set("EventActionCode", self.action.value)
        when = self.event_time.astimezone(UTC).isoformat(timespec="microseconds")
        event.set("EventDateTime", when)
        event.set("EventOutcomeIndicator", str(int(self.outcome)))
        _code(event, "EventID", self.event_id)
        for event_type in self.event_types:
            _code(event, "EventTypeCode", event_type)
        if self.outcome_description:
            ET.SubElement(event, "EventOutcomeDescription").text = _text(self.outcome_description)
        for participant in self.participants:
            _participant(root, participant)
        source = ET.SubElement(root, "AuditSourceIdentification")
        source.set("AuditEnterpriseSiteID", self.site)
        source.set("AuditSourceID", _text(self.source_id))
        ET.SubElement(source, "AuditSourceTypeCode").set("csd-code", self.source_type.value)
        for obj in self.objects:
            _object(root, obj)
        # typeshed types tostring with any encoding but "unicode" as Any; utf-8 gives bytes.
        return cast("bytes", ET.tostring(root, encoding="utf-8", xml_declaration=True))

    @classmethod
    def from_xml(cls, data: bytes, *, kind: str, record_id: str | None = None) -> AuditRecord:
        """Parse an ``AuditMessage`` (``kind`` is not in the XML: it is the subject's last
        token). Raises ``ValueError`` for anything that is not one."""
        try:
            root = ET.fromstring(data)
        except ET.ParseError as exc:
            raise ValueError(f"not XML: {exc}") from exc
        try:
            return cls._from_element(root, kind, record_id)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a complete AuditMessage: {exc!r}") from exc

    @classmethod
    def _from_element(cls, root: ET.Element, kind: str, record_id: str | None) -> AuditRecord:
        if root.tag != "AuditMessage":
            raise ValueError(f"root element is {root.tag!r}, not AuditMessage")
        event = _child(root, "EventIdentification")
        source = _child(root, "AuditSourceIdentification")
        action = event.get("EventActionCode")
        description = event.find("EventOutcomeDescription")
        source_type = source.find("AuditSourceTypeCode")
        return cls(
            kind=kind,
            site=source.attrib["AuditEnterpriseSiteID"],
            source_id=source.attrib["AuditSourceID"],
            event_id=_parse_code(_child(event, "EventID")),
            outcome=Outcome(int(event.attrib["EventOutcomeIndicator"])),
            event_time=datetime.fromisoformat(event.attrib["EventDateTime"]),
            action=EventAction(action) if action else None,
            event_types=tuple(_parse_code(e) for e in event.findall("EventTypeCode")),
            outcome_description=description.text if description is not None else None,
            participants=tuple(_parse_participant(p) for p in root.findall("ActiveParticipant")),
            objects=tuple(
                _parse_object(o) for o in root.findall("ParticipantObjectIdentification")
            ),
            source_type=AuditSourceType(source_type.attrib["csd-code"])
            if source_type is not None
            else AuditSourceType.APPLICATION_SERVER,
            record_id=record_id or uuid.uuid4().hex,
        )


def schema_file(syntax: str = "rng") -> Traversable:
    """The DICOM audit message schema shipped with this package: ``rnc`` (the standard's text)
    or ``rng`` (RELAX NG XML syntax, for validators)."""
    if syntax not in ("rnc", "rng"):
        raise ValueError(f"schema syntax {syntax!r}: rnc or rng")
    return files("orstream.common") / "data" / f"audit-message.{syntax}"


# --- builders the services call ---------------------------------------------------------------


def audit_event(
    *,
    kind: str,
    site: str,
    source_id: str,
    event_id: Code,
    outcome: Outcome,
    action: EventAction | None = None,
    event_types: Sequence[Code] = (),
    description: str | None = None,
    user: str | None = None,
    role: str | None = None,
    client_address: str | None = None,
    objects: Iterable[ParticipantObject] = (),
    when: datetime | None = None,
) -> AuditRecord:
    """Any audit event, with the usual participants: the requesting ``user`` (if any) and this
    service instance (the requestor when there is no user)."""
    participants: list[ActiveParticipant] = []
    if user is not None:
        participants.append(
            ActiveParticipant(
                user_id=user,
                is_requestor=True,
                roles=(role_code(role),) if role else (),
                network_access_point=client_address or None,
            )
        )
    participants.append(service_participant(source_id, is_requestor=user is None))
    return AuditRecord(
        kind=kind,
        site=site,
        source_id=source_id,
        event_id=event_id,
        outcome=outcome,
        participants=tuple(participants),
        event_time=when or datetime.now(UTC),
        action=action,
        event_types=tuple(event_types),
        outcome_description=description or None,
        objects=tuple(objects),
    )


def user_authentication(
    *,
    site: str,
    source_id: str,
    user: str,
    outcome_ok: bool,
    reason: str,
    client_address: str,
    role: str | None = None,
) -> AuditRecord:
    """A login attempt (A.5.3.12): a token presented to the edge, accepted or not."""
    return audit_event(
        kind=KIND_AUTH,
        site=site,
        source_id=source_id,
        event_id=USER_AUTHENTICATION,
        action=EventAction.EXECUTE,
        event_types=(LOGIN,),
        outcome=Outcome.SUCCESS if outcome_ok else Outcome.MINOR_FAILURE,
        description=reason,
        user=user,
        role=role,
        client_address=client_address,
    )


def session_started(
    *,
    site: str,
    source_id: str,
    user: str,
    role: str,
    room: str,
    streams: Sequence[str],
    session_id: str,
    patient_pseudonym: str | None,
    client_address: str,
    study_uid: str | None = None,
) -> AuditRecord:
    """A viewer's session on a room's streams began: from now on they see that patient."""
    return _session(
        SESSION_START,
        None,
        site=site,
        source_id=source_id,
        user=user,
        role=role,
        room=room,
        streams=streams,
        session_id=session_id,
        patient_pseudonym=patient_pseudonym,
        client_address=client_address,
        study_uid=study_uid,
    )


def session_stopped(
    *,
    site: str,
    source_id: str,
    user: str,
    role: str,
    room: str,
    streams: Sequence[str],
    session_id: str,
    patient_pseudonym: str | None,
    client_address: str,
    reason: str,
    study_uid: str | None = None,
) -> AuditRecord:
    """That session ended (peer left, token expired, revoked, ...): ``reason`` says which."""
    return _session(
        SESSION_STOP,
        reason,
        site=site,
        source_id=source_id,
        user=user,
        role=role,
        room=room,
        streams=streams,
        session_id=session_id,
        patient_pseudonym=patient_pseudonym,
        client_address=client_address,
        study_uid=study_uid,
    )


def access_denied(
    *,
    site: str,
    source_id: str,
    user: str,
    role: str,
    room: str,
    stream: str,
    action: str,
    status: int,
    reason: str,
    client_address: str,
    patient_pseudonym: str | None = None,
) -> AuditRecord:
    """The policy refused ``user`` (as ``role``) ``action`` on ``stream`` of ``room``; the
    edge answered HTTP ``status``."""
    details = [("Action", action), ("Status", str(status))]
    objects = [room_object(site, room, streams=[stream], role=role, extra=details)]
    if patient_pseudonym:
        objects.append(patient_object(patient_pseudonym))
    return audit_event(
        kind=KIND_DENIAL,
        site=site,
        source_id=source_id,
        event_id=DICOM_INSTANCES_ACCESSED,
        action=ACTION_CODES.get(action.lower(), EventAction.READ),
        event_types=(ACCESS_CONTROL_DECISION,),
        outcome=Outcome.MINOR_FAILURE,
        description=f"{status}: {reason}",
        user=user,
        role=role,
        client_address=client_address,
        objects=objects,
    )


# --- parts ------------------------------------------------------------------------------------


def role_code(role: str) -> Code:
    """An orstream access-policy role as a RoleIDCode (a local code)."""
    return Code(role, LOCAL_SCHEME, role)


def service_participant(source_id: str, *, is_requestor: bool = False) -> ActiveParticipant:
    """This service instance as a participant: its id, process id and host (A.5.2.1)."""
    return ActiveParticipant(
        user_id=source_id,
        is_requestor=is_requestor,
        alternative_user_id=str(os.getpid()),
        roles=(APPLICATION_ROLE,),
        network_access_point=_HOSTNAME,
    )


def patient_object(pseudonym: str) -> ParticipantObject:
    """The patient, known to the audit trail only by the keyed pseudonym."""
    return ParticipantObject(
        object_id=pseudonym,
        id_type=PATIENT_NUMBER,
        name=pseudonym,
        type_code=ObjectType.PERSON,
        role=ObjectRole.PATIENT,
    )


def room_object(
    site: str,
    room: str,
    *,
    streams: Iterable[str] = (),
    role: str | None = None,
    session_id: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> ParticipantObject:
    """A room's streams as a system object, identified by the URI ``orstream://<site>/<room>``."""
    details = [("Room", room), *(("Stream", s) for s in streams)]
    if role:
        details.append(("Role", role))
    if session_id:
        details.append(("Session ID", session_id))
    details.extend(extra)
    return ParticipantObject(
        object_id=f"orstream://{site}/{room}",
        id_type=URI,
        name=room,
        type_code=ObjectType.SYSTEM_OBJECT,
        role=ObjectRole.SECURITY_RESOURCE,
        details=tuple(details),
    )


def study_object(study_uid: str) -> ParticipantObject:
    """A study the viewed streams belong to (A.5.3.6 "Studies")."""
    return ParticipantObject(
        object_id=study_uid,
        id_type=STUDY_INSTANCE_UID,
        name=study_uid,
        type_code=ObjectType.SYSTEM_OBJECT,
        role=ObjectRole.REPORT,
    )


def _session(
    event_type: Code,
    reason: str | None,
    *,
    site: str,
    source_id: str,
    user: str,
    role: str,
    room: str,
    streams: Sequence[str],
    session_id: str,
    patient_pseudonym: str | None,
    client_address: str,
    study_uid: str | None,
) -> AuditRecord:
    objects = [room_object(site, room, streams=streams, role=role, session_id=session_id)]
    if study_uid:
        objects.append(study_object(study_uid))
    if patient_pseudonym:
        objects.append(patient_object(patient_pseudonym))
    return audit_event(
        kind=KIND_SESSION,
        site=site,
        source_id=source_id,
        event_id=DICOM_INSTANCES_ACCESSED,
        action=EventAction.READ,
        event_types=(event_type,),
        outcome=Outcome.SUCCESS,
        description=reason,
        user=user,
        role=role,
        client_address=client_address,
        objects=objects,
    )


# --- XML --------------------------------------------------------------------------------------

_HOSTNAME = socket.gethostname()
#: Characters XML 1.0 cannot carry (a claimed user id or a reason could hold any of them).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value[:MAX_TEXT_CHARS])


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(
        parent,
        tag,
        {"csd-code": code.code, "codeSystemName": code.scheme, "originalText": code.meaning},
    )


def _participant(root: ET.Element, p: ActiveParticipant) -> None:
    element = ET.SubElement(root, "ActiveParticipant", {"UserID": _text(p.user_id)})
    if p.alternative_user_id:
        element.set("AlternativeUserID", _text(p.alternative_user_id))
    if p.user_name:
        element.set("UserName", _text(p.user_name))
    element.set("UserIsRequestor", "true" if p.is_requestor else "false")
    access_point_type = p.network_access_point_type
    if p.network_access_point and access_point_type:
        element.set("NetworkAccessPointID", _text(p.network_access_point))
        element.set("NetworkAccessPointTypeCode", access_point_type)
    for role in p.roles:
        _code(element, "RoleIDCode", Code(_text(role.code), role.scheme, _text(role.meaning)))


def _object(root: ET.Element, obj: ParticipantObject) -> None:
    element = ET.SubElement(
        root, "ParticipantObjectIdentification", {"ParticipantObjectID": _text(obj.object_id)}
    )
    if obj.type_code is not None:
        element.set("ParticipantObjectTypeCode", str(int(obj.type_code)))
    if obj.role is not None:
        element.set("ParticipantObjectTypeCodeRole", str(int(obj.role)))
    _code(element, "ParticipantObjectIDTypeCode", obj.id_type)
    if obj.query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(obj.query).decode()
    else:
        ET.SubElement(element, "ParticipantObjectName").text = _text(obj.name or obj.object_id)
    for kind, value in obj.details:
        encoded = base64.b64encode(_text(value).encode()).decode()
        ET.SubElement(element, "ParticipantObjectDetail", {"type": kind, "value": encoded})


def _child(parent: ET.Element, tag: str) -> ET.Element:
    child = parent.find(tag)
    if child is None:
        raise ValueError(f"{parent.tag} has no {tag}")
    return child


def _parse_code(element: ET.Element) -> Code:
    return Code(
        element.attrib["csd-code"], element.attrib["codeSystemName"], element.attrib["originalText"]
    )


def _parse_participant(element: ET.Element) -> ActiveParticipant:
    return ActiveParticipant(
        user_id=element.attrib["UserID"],
        is_requestor=element.attrib["UserIsRequestor"] in ("true", "1"),
        alternative_user_id=element.get("AlternativeUserID"),
        user_name=element.get("UserName"),
        roles=tuple(_parse_code(r) for r in element.findall("RoleIDCode")),
        network_access_point=element.get("NetworkAccessPointID"),
    )


def _parse_object(element: ET.Element) -> ParticipantObject:
    type_code = element.get("ParticipantObjectTypeCode")
    role = element.get("ParticipantObjectTypeCodeRole")
    name = element.find("ParticipantObjectName")
    query = element.find("ParticipantObjectQuery")
    return ParticipantObject(
        object_id=element.attrib["ParticipantObjectID"],
        id_type=_parse_code(_child(element, "ParticipantObjectIDTypeCode")),
        name=name.text if name is not None else None,
        query=base64.b64decode(query.text or "") if query is not None else None,
        type_code=ObjectType(int(type_code)) if type_code else None,
        role=ObjectRole(int(role)) if role else None,
        details=tuple(
            (d.attrib["type"], base64.b64decode(d.attrib["value"]).decode())
            for d in element.findall("ParticipantObjectDetail")
        ),
    )
