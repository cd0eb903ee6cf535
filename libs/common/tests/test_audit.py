"""Audit records: every kind validates against the DICOM audit schema, with the right codes."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from lxml import etree

from orstream.common import audit
from orstream.common.audit import AuditRecord, EventAction, ObjectRole, ObjectType, Outcome

SITE = "site1"
SOURCE = "signaling-7f9c"
PSEUDONYM = "PSN-7KQ2M4X9TRW3AB1"


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    with audit.schema_file("rng").open("rb") as f:
        return etree.RelaxNG(etree.parse(f))


def assert_valid(schema: etree.RelaxNG, xml: bytes) -> None:
    ok = schema.validate(etree.fromstring(xml))
    assert ok, f"{schema.error_log}\n{xml.decode()}"


def login_ok() -> AuditRecord:
    return audit.user_authentication(
        site=SITE,
        source_id=SOURCE,
        user="alice@hospital.example",
        outcome_ok=True,
        reason="token accepted",
        client_address="10.1.2.3",
        role="surgeon",
    )


def login_refused() -> AuditRecord:
    return audit.user_authentication(
        site=SITE,
        source_id=SOURCE,
        user="mallory",
        outcome_ok=False,
        reason="signature does not verify",
        client_address="2001:db8::7",
    )


def started() -> AuditRecord:
    return audit.session_started(
        site=SITE,
        source_id=SOURCE,
        user="alice@hospital.example",
        role="surgeon",
        room="or1",
        streams=["endoscope", "room-cam"],
        session_id="sess-42",
        patient_pseudonym=PSEUDONYM,
        client_address="10.1.2.3",
        study_uid="2.25.1234567890",
    )


def stopped() -> AuditRecord:
    return audit.session_stopped(
        site=SITE,
        source_id=SOURCE,
        user="alice@hospital.example",
        role="surgeon",
        room="or1",
        streams=["endoscope", "room-cam"],
        session_id="sess-42",
        patient_pseudonym=PSEUDONYM,
        client_address="10.1.2.3",
        reason="token expired",
    )


def denied() -> AuditRecord:
    return audit.access_denied(
        site=SITE,
        source_id=SOURCE,
        user="bob@university.example",
        role="student",
        room="or2",
        stream="endoscope",
        action="annotate",
        status=403,
        reason="role student may not annotate",
        client_address="viewer-3.lecture.example",
    )


def revoked() -> AuditRecord:
    return audit.audit_event(
        kind="revocation",
        site=SITE,
        source_id=SOURCE,
        event_id=audit.SECURITY_ALERT,
        action=EventAction.EXECUTE,
        event_types=[audit.USER_SECURITY_ATTRIBUTES_CHANGED],
        outcome=Outcome.SUCCESS,
        description="sessions of alice@hospital.example revoked",
    )


BUILDERS: dict[str, Callable[[], AuditRecord]] = {
    "login-ok": login_ok,
    "login-refused": login_refused,
    "session-started": started,
    "session-stopped": stopped,
    "denied": denied,
    "revocation": revoked,
}

#: name → (kind, EventID, EventTypeCode, action, outcome)
EXPECTED = {
    "login-ok": ("auth", "110114", "110122", "E", Outcome.SUCCESS),
    "login-refused": ("auth", "110114", "110122", "E", Outcome.MINOR_FAILURE),
    "session-started": ("session", "110103", "110145", "R", Outcome.SUCCESS),
    "session-stopped": ("session", "110103", "110146", "R", Outcome.SUCCESS),
    "denied": ("denial", "110103", "110147", "C", Outcome.MINOR_FAILURE),
    "revocation": ("revocation", "110113", "110137", "E", Outcome.SUCCESS),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_kind_validates_and_carries_its_codes(schema: etree.RelaxNG, name: str) -> None:
    record = BUILDERS[name]()
    xml = record.to_xml()
    assert_valid(schema, xml)
    kind, event_id, event_type, action, outcome = EXPECTED[name]
    root = etree.fromstring(xml)
    event = root.find("EventIdentification")
    assert record.kind == kind and record.subject == f"audit.{SITE}.{kind}"
    assert event.find("EventID").attrib == {
        "csd-code": event_id,
        "codeSystemName": "DCM",
        "originalText": record.event_id.meaning,
    }
    assert [e.get("csd-code") for e in event.findall("EventTypeCode")] == [event_type]
    assert event.get("EventActionCode") == action
    assert event.get("EventOutcomeIndicator") == str(int(outcome))
    source = root.find("AuditSourceIdentification")
    assert source.get("AuditEnterpriseSiteID") == SITE and source.get("AuditSourceID") == SOURCE
    assert source.find("AuditSourceTypeCode").get("csd-code") == "4"
    requestors = [
        p for p in root.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"
    ]
    assert len(requestors) == 1, "exactly one requestor (A.5.2)"
    when = datetime.fromisoformat(event.get("EventDateTime"))
    assert when.utcoffset() == timedelta(0) and abs(datetime.now(UTC) - when) < timedelta(minutes=1)


def test_login_names_the_user_the_client_and_the_node_that_checked() -> None:
    record = login_refused()
    user, node = record.participants
    assert (user.user_id, user.is_requestor) == ("mallory", True)
    assert (user.network_access_point, user.network_access_point_type) == ("2001:db8::7", "2")
    assert node.user_id == SOURCE and not node.is_requestor
    assert node.roles == (audit.APPLICATION_ROLE,) and node.alternative_user_id
    assert record.outcome_description == "signature does not verify"
    assert record.objects == (), "A.5.3.12: no participant objects"
    assert login_ok().participants[0].roles == (audit.Code("surgeon", "99ORSTREAM", "surgeon"),)


def test_session_names_room_streams_role_session_and_only_the_pseudonym() -> None:
    record = started()
    room, study, patient = record.objects
    assert room.object_id == "orstream://site1/or1" and room.id_type == audit.URI
    assert (room.type_code, room.role) == (ObjectType.SYSTEM_OBJECT, ObjectRole.SECURITY_RESOURCE)
    assert room.detail("Room") == ["or1"]
    assert room.detail("Stream") == ["endoscope", "room-cam"]
    assert room.detail("Role") == ["surgeon"] and room.detail("Session ID") == ["sess-42"]
    assert study.object_id == "2.25.1234567890" and study.id_type == audit.STUDY_INSTANCE_UID
    assert (study.type_code, study.role) == (ObjectType.SYSTEM_OBJECT, ObjectRole.REPORT)
    assert record.patient == patient
    assert (patient.type_code, patient.role) == (ObjectType.PERSON, ObjectRole.PATIENT)
    assert patient.id_type == audit.Code("2", "RFC-3881", "Patient Number")
    assert patient.object_id == PSEUDONYM and patient.name == PSEUDONYM
    assert record.requestor is not None and record.requestor.roles[0].code == "surgeon"
    assert stopped().outcome_description == "token expired"


def test_no_patient_context_means_no_patient_object(schema: etree.RelaxNG) -> None:
    record = audit.session_started(
        site=SITE,
        source_id=SOURCE,
        user="ops@hospital.example",
        role="ops",
        room="or3",
        streams=["cam"],
        session_id="s",
        patient_pseudonym=None,
        client_address="10.0.0.9",
    )
    assert record.patient is None
    assert [o.role for o in record.objects] == [ObjectRole.SECURITY_RESOURCE]
    assert_valid(schema, record.to_xml())


def test_denial_records_the_attempted_action_and_the_answer() -> None:
    record = denied()
    (room,) = record.objects
    assert room.detail("Stream") == ["endoscope"] and room.detail("Role") == ["student"]
    assert room.detail("Action") == ["annotate"] and room.detail("Status") == ["403"]
    assert record.outcome_description == "403: role student may not annotate"
    assert record.participants[0].network_access_point_type == "1", "a host name, not an IP"
    viewing = audit.access_denied(
        site=SITE,
        source_id=SOURCE,
        user="bob",
        role="student",
        room="or2",
        stream="endoscope",
        action="view",
        status=403,
        reason="room not granted",
        client_address="10.0.0.5",
        patient_pseudonym=PSEUDONYM,
    )
    assert viewing.action is EventAction.READ
    assert viewing.patient is not None and viewing.patient.object_id == PSEUDONYM


@pytest.mark.parametrize("name", list(BUILDERS))
def test_xml_round_trips(name: str) -> None:
    record = BUILDERS[name]()
    parsed = AuditRecord.from_xml(record.to_xml(), kind=record.kind, record_id=record.record_id)
    assert parsed == record


def test_hostile_text_still_makes_a_valid_bounded_message(schema: etree.RelaxNG) -> None:
    record = audit.user_authentication(
        site=SITE,
        source_id=SOURCE,
        user="evil\x00user\x1b[31m</UserID><x>",
        outcome_ok=False,
        reason="bad token: " + "A" * 10_000 + "\x07",
        client_address="not an address",
    )
    xml = record.to_xml()
    assert_valid(schema, xml)
    parsed = AuditRecord.from_xml(xml, kind="auth")
    assert parsed.participants[0].user_id == "evil\ufffduser\ufffd[31m</UserID><x>"
    assert parsed.outcome_description is not None
    assert len(parsed.outcome_description) == audit.MAX_TEXT_CHARS


def test_local_event_time_is_written_in_utc() -> None:
    local = datetime(2026, 3, 1, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    record = audit.audit_event(
        kind="app",
        site=SITE,
        source_id=SOURCE,
        event_id=audit.APPLICATION_ACTIVITY,
        outcome=Outcome.SUCCESS,
        when=local,
    )
    assert b'EventDateTime="2026-03-01T08:30:00.123456+00:00"' in record.to_xml()
    assert record.requestor is not None and record.requestor.user_id == SOURCE


def test_schema_rejects_what_the_standard_does_not_allow(schema: etree.RelaxNG) -> None:
    xml = login_ok().to_xml()
    broken = [
        xml.replace(b'EventOutcomeIndicator="0"', b'EventOutcomeIndicator="3"'),
        xml.replace(b'csd-code="110114" ', b""),
        re.sub(rb"<ActiveParticipant .*?</ActiveParticipant>", b"", xml),
        xml.replace(b"<AuditSourceTypeCode", b"<Unknown"),
    ]
    for document in broken:
        assert not schema.validate(etree.fromstring(document)), document


@pytest.mark.parametrize(
    "data",
    [b"", b"<not-closed", b"<Other/>", b"<AuditMessage/>", b"<AuditMessage><x/></AuditMessage>"],
)
def test_garbage_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"XML|AuditMessage"):
        AuditRecord.from_xml(data, kind="auth")


def test_records_are_checked_on_construction() -> None:
    with pytest.raises(ValueError, match="audit kind"):
        audit.audit_event(
            kind="a.b", site=SITE, source_id=SOURCE, event_id=audit.LOGIN, outcome=Outcome.SUCCESS
        )
    with pytest.raises(ValueError, match="active participant"):
        AuditRecord(
            kind="auth",
            site=SITE,
            source_id=SOURCE,
            event_id=audit.LOGIN,
            outcome=Outcome.SUCCESS,
            participants=(),
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        audit.audit_event(
            kind="auth",
            site=SITE,
            source_id=SOURCE,
            event_id=audit.LOGIN,
            outcome=Outcome.SUCCESS,
            when=datetime(2026, 1, 1),
        )


def test_rng_is_the_standards_rnc() -> None:
    """The generated XML syntax names the same elements and attributes as the standard's text."""
    rnc = audit.schema_file("rnc").read_text()
    rng = etree.fromstring(audit.schema_file("rng").read_bytes())
    ns = {"r": "http://relaxng.org/ns/structure/1.0"}
    for what in ("element", "attribute"):
        in_rnc = set(re.findall(rf"\b{what} ([A-Za-z-]+) \{{", rnc))
        in_rng = {n.text for n in rng.xpath(f"//r:{what}/r:name", namespaces=ns)}
        assert in_rnc and in_rnc == in_rng, what
    assert "A.5.1.1" in (audit.schema_file("rng").read_text())
