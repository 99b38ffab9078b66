"""Staff, care teams and the on-call roster on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from alerts import staff
from alerts.errors import (
    AlertsError,
    DuplicateCareTeam,
    DuplicateStaff,
    InvalidInput,
    UnknownCareTeam,
    UnknownPatient,
    UnknownStaff,
)
from rpmgw import admin
from tests.fixtures.db import MigratedDb

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _people(migrated_db: MigratedDb) -> None:
    with migrated_db.sessions.begin() as session:
        admin.add_patient(session, patient_id="P-1", display_name="Patient", phone="+79990000001")
        staff.add_staff(session, username="dr-a", display_name="Dr A", phone="+79990000101", role="doctor")
        staff.add_staff(session, username="dr-b", display_name="Dr B", phone="+79990000102", role="doctor")
        staff.add_staff(
            session, username="nurse-c", display_name="Nurse C", phone="+79990000103", role="nurse"
        )
        staff.add_care_team(session, "cardio")


def test_add_staff_normalises_the_phone_and_lists_by_username(migrated_db: MigratedDb) -> None:
    with migrated_db.sessions.begin() as session:
        staff.add_staff(
            session,
            username="zeta",
            display_name=" Dr Z ",
            phone="+7 (999) 000-01-01",
            role="doctor",
            language="en",
        )
        staff.add_staff(session, username="alpha", display_name="Admin", phone="+79990000102", role="admin")
    with migrated_db.sessions() as session:
        listed = [
            (s.username, s.display_name, s.phone, s.role, s.language, s.active)
            for s in staff.list_staff(session)
        ]
    assert listed == [
        ("alpha", "Admin", "+79990000102", "admin", "ru", True),
        ("zeta", "Dr Z", "+79990000101", "doctor", "en", True),
    ]


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"username": "a b"}, InvalidInput, "username: use 2-64 characters"),
        ({"phone": "89990000101"}, InvalidInput, "phone: '89990000101' is not an E.164 number"),
        ({"role": "surgeon"}, InvalidInput, "role: 'surgeon' is not one of doctor, nurse, admin"),
        ({"language": "de"}, InvalidInput, "language: 'de' is not one of ru, en"),
        ({"display_name": "  "}, InvalidInput, "display_name"),
        ({"username": "dr-a"}, DuplicateStaff, "staff member 'dr-a' already exists"),
    ],
    ids=["username", "phone", "role", "language", "name", "duplicate"],
)
def test_add_staff_refuses_bad_input(
    migrated_db: MigratedDb, fields: dict[str, str], error: type[AlertsError], message: str
) -> None:
    _people(migrated_db)
    values = {"username": "new", "display_name": "New", "phone": "+79990000199", "role": "doctor"} | fields
    with migrated_db.sessions.begin() as session, pytest.raises(error, match=message):
        staff.add_staff(session, **values)


def test_a_team_has_at_most_one_responsible_doctor(migrated_db: MigratedDb) -> None:
    _people(migrated_db)
    with migrated_db.sessions.begin() as session:
        staff.add_member(session, "cardio", "dr-a", responsible=True)
        staff.add_member(session, "cardio", "nurse-c")
        staff.assign_patient(session, "P-1", "cardio")
    with migrated_db.sessions() as session:
        doctor = staff.responsible_doctor(session, "P-1")
        assert doctor is not None and doctor.username == "dr-a"

    with migrated_db.sessions.begin() as session:
        staff.add_member(session, "cardio", "dr-b", responsible=True)  # takes the role over
        staff.add_member(session, "cardio", "dr-a")  # idempotent, stays a plain member
    with migrated_db.sessions() as session:
        [team] = staff.list_care_teams(session)
        doctor = staff.responsible_doctor(session, "P-1")
    assert doctor is not None and doctor.username == "dr-b"
    assert [(m.username, m.responsible) for m in team.members] == [
        ("dr-a", False),
        ("dr-b", True),
        ("nurse-c", False),
    ]
    assert team.patients == ("P-1",)


def test_the_database_refuses_two_responsible_members(migrated_db: MigratedDb) -> None:
    _people(migrated_db)
    with migrated_db.sessions.begin() as session:
        staff.add_member(session, "cardio", "dr-a", responsible=True)
        staff.add_member(session, "cardio", "dr-b")
    with pytest.raises(IntegrityError), migrated_db.sessions.begin() as session:
        session.execute(text("UPDATE care_team_members SET responsible = true"))


@pytest.mark.parametrize(
    ("action", "error", "message"),
    [
        (lambda s: staff.add_member(s, "cardio", "nurse-c", responsible=True), InvalidInput, "only a doctor"),
        (lambda s: staff.add_member(s, "neuro", "dr-a"), UnknownCareTeam, "unknown care team 'neuro'"),
        (lambda s: staff.add_member(s, "cardio", "dr-x"), UnknownStaff, "unknown staff member 'dr-x'"),
        (lambda s: staff.assign_patient(s, "P-404", "cardio"), UnknownPatient, "unknown patient 'P-404'"),
        (lambda s: staff.add_care_team(s, "cardio"), DuplicateCareTeam, "care team 'cardio' already exists"),
        (lambda s: staff.add_care_team(s, " "), InvalidInput, "invalid care team name"),
    ],
    ids=[
        "nurse-responsible",
        "unknown-team",
        "unknown-staff",
        "unknown-patient",
        "duplicate-team",
        "empty-name",
    ],
)
def test_care_team_errors(
    migrated_db: MigratedDb, action: object, error: type[AlertsError], message: str
) -> None:
    _people(migrated_db)
    with migrated_db.sessions.begin() as session, pytest.raises(error, match=message):
        action(session)  # type: ignore[operator]


def test_a_deactivated_responsible_doctor_is_not_paged(migrated_db: MigratedDb) -> None:
    _people(migrated_db)
    with migrated_db.sessions.begin() as session:
        staff.add_member(session, "cardio", "dr-a", responsible=True)
        staff.assign_patient(session, "P-1", "cardio")
        staff.set_staff_active(session, "dr-a", False)
    with migrated_db.sessions() as session:
        assert staff.responsible_doctor(session, "P-1") is None
    with migrated_db.sessions.begin() as session:
        staff.assign_patient(session, "P-1", None)
    with migrated_db.sessions() as session:
        assert staff.responsible_doctor(session, "P-1") is None


def test_oncall_now_covers_start_but_not_end(migrated_db: MigratedDb) -> None:
    _people(migrated_db)
    with migrated_db.sessions.begin() as session:
        staff.add_shift(session, "dr-a", starts_at=T0, ends_at=T0 + 12 * HOUR)
        staff.add_shift(session, "dr-b", starts_at=T0 + 12 * HOUR, ends_at=T0 + 24 * HOUR)
        staff.add_shift(session, "dr-b", starts_at=T0 + 6 * HOUR, ends_at=T0 + 8 * HOUR)

    def oncall(at: datetime) -> list[str]:
        with migrated_db.sessions() as session:
            return [s.username for s in staff.oncall_now(session, at)]

    assert oncall(T0 - timedelta(seconds=1)) == []
    assert oncall(T0) == ["dr-a"]
    assert oncall(T0 + 7 * HOUR) == ["dr-a", "dr-b"]
    assert oncall(T0 + 12 * HOUR) == ["dr-b"]
    assert oncall(T0 + 24 * HOUR) == []
    with migrated_db.sessions() as session:
        upcoming = [
            (s.username, s.starts_at) for s in staff.list_shifts(session, ending_after=T0 + 10 * HOUR)
        ]
    assert upcoming == [("dr-a", T0), ("dr-b", T0 + 12 * HOUR)]


@pytest.mark.parametrize(
    ("username", "starts", "ends", "message"),
    [
        ("dr-a", T0, T0, "must end after it starts"),
        ("dr-a", T0, T0.replace(tzinfo=None), "has no time zone"),
        ("nurse-c", T0, T0 + HOUR, "only a doctor can be on call"),
        ("dr-x", T0, T0 + HOUR, "unknown staff member"),
    ],
    ids=["empty", "naive", "nurse", "unknown"],
)
def test_add_shift_refuses_bad_shifts(
    migrated_db: MigratedDb, username: str, starts: datetime, ends: datetime, message: str
) -> None:
    _people(migrated_db)
    with migrated_db.sessions.begin() as session, pytest.raises(AlertsError, match=message):
        staff.add_shift(session, username, starts_at=starts, ends_at=ends)
