"""Patients and enrolment history (rpmgw.admin) on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import re
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from rpmgw import admin
from rpmgw.models import Device, Enrolment, Patient
from tests.fixtures.db import MigratedDb

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _add(db: MigratedDb, patient_id: str, **overrides: str) -> Patient:
    fields = {"display_name": f"Patient {patient_id}", "phone": "+79991234567"} | overrides
    with db.sessions.begin() as session:
        return admin.add_patient(session, patient_id=patient_id, **fields)


def _enrol(
    db: MigratedDb, device_id: str, patient_id: str, valid_from: datetime, kind: str = "unknown"
) -> Enrolment:
    with db.sessions.begin() as session:
        return admin.enrol_device(
            session, device_id=device_id, patient_id=patient_id, valid_from=valid_from, kind=kind
        )


def _history(db: MigratedDb, device_id: str) -> list[tuple[str, datetime, datetime | None]]:
    with db.sessions() as session:
        return [(e.patient_id, e.valid_from, e.valid_to) for e in admin.list_enrolments(session, device_id)]


# --- patients -------------------------------------------------------------------------------------

GOOD_PATIENTS = [
    ({"phone": "+79991234567"}, {"phone": "+79991234567", "language": "ru"}),
    ({"phone": "+7 (999) 123-45-67"}, {"phone": "+79991234567"}),
    ({"phone": "+447911123456", "language": "en"}, {"phone": "+447911123456", "language": "en"}),
    ({"phone": "+12025550123", "timezone": "America/New_York"}, {"timezone": "America/New_York"}),
    ({"phone": "+79991234567", "timezone": "Asia/Yekaterinburg"}, {"timezone": "Asia/Yekaterinburg"}),
    ({"display_name": "  Иванова А. П.  "}, {"display_name": "Иванова А. П."}),
]


@pytest.mark.parametrize(("given", "expected"), GOOD_PATIENTS)
def test_add_patient_accepts_and_normalises(
    migrated_db: MigratedDb, given: dict[str, str], expected: dict[str, str]
) -> None:
    _add(migrated_db, "P-000123", **given)
    with migrated_db.sessions() as session:
        stored = session.get(Patient, "P-000123")
        assert stored is not None
        for field, value in expected.items():
            assert getattr(stored, field) == value


BAD_PATIENTS = [
    ("P-1", {"phone": "89991234567"}, "phone: '89991234567' is not an E.164 number"),
    ("P-1", {"phone": "+0991234567"}, "phone: "),
    ("P-1", {"phone": "+7999"}, "phone: "),
    ("P-1", {"phone": "+7999123456789012"}, "phone: "),
    ("P-1", {"phone": "+7999abc4567"}, "phone: "),
    ("P-1", {"phone": ""}, "phone: "),
    ("P-1", {"language": "de"}, "language: 'de' is not one of ru, en"),
    ("P-1", {"language": "RU"}, "language: "),
    ("P-1", {"timezone": "Mars/Olympus"}, "timezone: unknown time zone 'Mars/Olympus'"),
    ("P-1", {"timezone": "../etc/passwd"}, "timezone: unknown time zone"),
    ("P-1", {"display_name": "   "}, "display_name: "),
    ("P 1", {}, "patient_id: use 1-64 characters"),
    ("", {}, "patient_id: "),
    ("P" * 65, {}, "patient_id: "),
    ("P-1;DROP", {}, "patient_id: "),
]


@pytest.mark.parametrize(("patient_id", "given", "message"), BAD_PATIENTS)
def test_add_patient_refuses_bad_input(
    migrated_db: MigratedDb, patient_id: str, given: dict[str, str], message: str
) -> None:
    with pytest.raises(admin.InvalidInput, match=f"invalid patient .*{re.escape(message)}"):
        _add(migrated_db, patient_id, **given)
    with migrated_db.sessions() as session:
        assert admin.list_patients(session) == []


def test_add_patient_refuses_a_duplicate_id(migrated_db: MigratedDb) -> None:
    _add(migrated_db, "P-1")
    with pytest.raises(admin.DuplicatePatient, match="patient 'P-1' already exists"):
        _add(migrated_db, "P-1", display_name="Someone else")
    with migrated_db.sessions() as session:
        assert [p.display_name for p in admin.list_patients(session)] == ["Patient P-1"]


def test_upsert_patient_creates_then_updates(migrated_db: MigratedDb) -> None:
    with migrated_db.sessions.begin() as session:
        admin.upsert_patient(session, patient_id="P-1", display_name="Demo", phone="+79991234567")
    with migrated_db.sessions.begin() as session:
        admin.upsert_patient(session, patient_id="P-1", display_name="Demo", phone="+79991234567")
        admin.upsert_patient(
            session, patient_id="P-1", display_name="Demo 2", phone="+79990000000", language="en"
        )
    with migrated_db.sessions() as session:
        (patient,) = admin.list_patients(session)
    assert (patient.display_name, patient.phone, patient.language) == ("Demo 2", "+79990000000", "en")


def test_list_patients_is_ordered_by_id(migrated_db: MigratedDb) -> None:
    for patient_id in ("P-3", "P-1", "P-2"):
        _add(migrated_db, patient_id)
    with migrated_db.sessions() as session:
        assert [p.id for p in admin.list_patients(session)] == ["P-1", "P-2", "P-3"]


def test_the_database_refuses_a_bad_language_itself(migrated_db: MigratedDb) -> None:
    with migrated_db.sessions() as session:
        session.add(Patient(id="P-1", display_name="x", phone="+79991234567", language="xx"))
        with pytest.raises(IntegrityError):
            session.flush()


# --- enrolments -----------------------------------------------------------------------------------


def test_enrol_creates_the_device_and_an_open_enrolment(migrated_db: MigratedDb) -> None:
    _add(migrated_db, "P-1")
    enrolment = _enrol(migrated_db, "bp-000123", "P-1", T0, kind="blood_pressure")
    assert (enrolment.device_id, enrolment.patient_id, enrolment.valid_from) == ("bp-000123", "P-1", T0)
    assert enrolment.is_open
    with migrated_db.sessions() as session:
        device = session.get(Device, "bp-000123")
        assert device is not None
        assert device.kind == "blood_pressure"
    assert _history(migrated_db, "bp-000123") == [("P-1", T0, None)]


def test_re_enrolling_elsewhere_closes_the_open_enrolment_and_keeps_history(migrated_db: MigratedDb) -> None:
    for patient_id in ("P-1", "P-2", "P-3"):
        _add(migrated_db, patient_id)
    _enrol(migrated_db, "bp-1", "P-1", T0)
    _enrol(migrated_db, "bp-1", "P-2", T0 + DAY)
    # valid_from given in another offset: the same instant rules apply.
    _enrol(migrated_db, "bp-1", "P-3", (T0 + 3 * DAY).astimezone(timezone(timedelta(hours=5))))
    assert _history(migrated_db, "bp-1") == [
        ("P-1", T0, T0 + DAY),
        ("P-2", T0 + DAY, T0 + 3 * DAY),
        ("P-3", T0 + 3 * DAY, None),
    ]


def test_enrolling_to_the_same_patient_again_is_a_no_op(migrated_db: MigratedDb) -> None:
    _add(migrated_db, "P-1")
    first = _enrol(migrated_db, "bp-1", "P-1", T0)
    again = _enrol(migrated_db, "bp-1", "P-1", T0 + DAY)
    assert again.id == first.id
    assert _history(migrated_db, "bp-1") == [("P-1", T0, None)]


def test_enrol_records_a_kind_given_later(migrated_db: MigratedDb) -> None:
    _add(migrated_db, "P-1")
    _add(migrated_db, "P-2")
    _enrol(migrated_db, "gl-1", "P-1", T0)
    _enrol(migrated_db, "gl-1", "P-2", T0 + DAY, kind="glucose")
    _enrol(migrated_db, "gl-1", "P-1", T0 + 2 * DAY)  # "unknown" does not erase what is known
    with migrated_db.sessions() as session:
        device = session.get(Device, "gl-1")
        assert device is not None
        assert device.kind == "glucose"


@pytest.mark.parametrize(
    ("valid_from", "message"),
    [
        (T0, "is enrolled to 'P-1' since"),
        (T0 - DAY, "is enrolled to 'P-1' since"),
    ],
)
def test_a_start_not_after_the_open_enrolment_is_refused(
    migrated_db: MigratedDb, valid_from: datetime, message: str
) -> None:
    _add(migrated_db, "P-1")
    _add(migrated_db, "P-2")
    _enrol(migrated_db, "bp-1", "P-1", T0)
    with pytest.raises(admin.EnrolmentConflict, match=message):
        _enrol(migrated_db, "bp-1", "P-2", valid_from)
    assert _history(migrated_db, "bp-1") == [("P-1", T0, None)]


def test_same_patient_with_an_earlier_start_is_refused_too(migrated_db: MigratedDb) -> None:
    _add(migrated_db, "P-1")
    _enrol(migrated_db, "bp-1", "P-1", T0)
    with pytest.raises(admin.EnrolmentConflict):
        _enrol(migrated_db, "bp-1", "P-1", T0 - DAY)


def test_a_start_inside_a_closed_enrolment_is_refused(migrated_db: MigratedDb) -> None:
    for patient_id in ("P-1", "P-2"):
        _add(migrated_db, patient_id)
    _enrol(migrated_db, "bp-1", "P-1", T0)
    with migrated_db.sessions.begin() as session:
        admin.end_enrolment(session, device_id="bp-1", valid_to=T0 + 2 * DAY)
    with pytest.raises(admin.EnrolmentConflict, match="was enrolled to 'P-1' from"):
        _enrol(migrated_db, "bp-1", "P-2", T0 + DAY)
    # At the end of the closed interval is fine (intervals are half-open).
    _enrol(migrated_db, "bp-1", "P-2", T0 + 2 * DAY)
    assert _history(migrated_db, "bp-1") == [("P-1", T0, T0 + 2 * DAY), ("P-2", T0 + 2 * DAY, None)]


def test_end_enrolment_refuses_without_an_open_one_or_before_its_start(migrated_db: MigratedDb) -> None:
    _add(migrated_db, "P-1")
    with migrated_db.sessions.begin() as session, pytest.raises(admin.UnknownDevice):
        admin.end_enrolment(session, device_id="bp-1", valid_to=T0)
    _enrol(migrated_db, "bp-1", "P-1", T0)
    with (
        migrated_db.sessions.begin() as session,
        pytest.raises(admin.EnrolmentConflict, match="cannot be returned"),
    ):
        admin.end_enrolment(session, device_id="bp-1", valid_to=T0)
    with migrated_db.sessions.begin() as session:
        admin.end_enrolment(session, device_id="bp-1", valid_to=T0 + DAY)
    with (
        migrated_db.sessions.begin() as session,
        pytest.raises(admin.EnrolmentConflict, match="no open enrolment"),
    ):
        admin.end_enrolment(session, device_id="bp-1", valid_to=T0 + 2 * DAY)


def test_enrolling_to_an_unknown_patient_is_refused(migrated_db: MigratedDb) -> None:
    with pytest.raises(admin.UnknownPatient, match="unknown patient 'P-404'"):
        _enrol(migrated_db, "bp-1", "P-404", T0)
    with migrated_db.sessions() as session:
        assert admin.list_devices(session) == []


@pytest.mark.parametrize(
    ("device_id", "valid_from", "kind", "message"),
    [
        ("b", T0, "unknown", "invalid device id 'b'"),
        ("bp/1", T0, "unknown", "invalid device id"),
        ("x" * 65, T0, "unknown", "invalid device id"),
        ("bp-1", datetime(2026, 11, 1, 9), "unknown", "has no time zone"),
        ("bp-1", T0, "thermometer", "invalid device kind 'thermometer'"),
    ],
)
def test_enrol_refuses_bad_input(
    migrated_db: MigratedDb, device_id: str, valid_from: datetime, kind: str, message: str
) -> None:
    _add(migrated_db, "P-1")
    with pytest.raises(admin.InvalidInput, match=message):
        _enrol(migrated_db, device_id, "P-1", valid_from, kind=kind)


def test_the_database_refuses_two_open_enrolments_of_one_device(migrated_db: MigratedDb) -> None:
    _add(migrated_db, "P-1")
    _add(migrated_db, "P-2")
    _enrol(migrated_db, "bp-1", "P-1", T0)
    # Straight to the table, past enrol_device: the partial unique index itself must refuse.
    with migrated_db.sessions() as session:
        with pytest.raises(IntegrityError, match=r"(?i)unique|duplicate"):
            session.execute(
                insert(Enrolment).values(
                    device_id="bp-1", patient_id="P-2", valid_from=T0 + DAY, created_at=T0
                )
            )
        session.rollback()
        # Closed enrolments are not covered by the index: several may exist for one device.
        for start in (T0 - 3 * DAY, T0 - 2 * DAY):
            session.execute(
                insert(Enrolment).values(
                    device_id="bp-1", patient_id="P-2", valid_from=start, valid_to=start + DAY, created_at=T0
                )
            )
        session.commit()
    with migrated_db.sessions() as session:
        open_count = session.scalars(
            select(Enrolment).where(Enrolment.device_id == "bp-1", Enrolment.valid_to.is_(None))
        ).all()
    assert len(open_count) == 1


def test_the_database_refuses_an_empty_or_reversed_interval(migrated_db: MigratedDb) -> None:
    _add(migrated_db, "P-1")
    _enrol(migrated_db, "bp-1", "P-1", T0)
    with migrated_db.sessions() as session, pytest.raises(IntegrityError):
        session.execute(
            insert(Enrolment).values(
                device_id="bp-1", patient_id="P-1", valid_from=T0 - DAY, valid_to=T0 - DAY, created_at=T0
            )
        )


def test_list_devices_shows_each_device_with_its_history(migrated_db: MigratedDb) -> None:
    _add(migrated_db, "P-1")
    _add(migrated_db, "P-2")
    _enrol(migrated_db, "gl-1", "P-2", T0, kind="glucose")
    _enrol(migrated_db, "bp-1", "P-1", T0, kind="blood_pressure")
    _enrol(migrated_db, "bp-1", "P-2", T0 + DAY)
    with migrated_db.sessions() as session:
        devices = admin.list_devices(session)
        counts = admin.database_counts(session)
    assert [(d.id, d.kind, [e.patient_id for e in d.enrolments]) for d in devices] == [
        ("bp-1", "blood_pressure", ["P-1", "P-2"]),
        ("gl-1", "glucose", ["P-2"]),
    ]
    assert counts == admin.DatabaseCounts(patients=2, devices=2, open_enrolments=2)
    with migrated_db.sessions() as session:
        assert [e.device_id for e in admin.list_enrolments(session)] == ["bp-1", "bp-1", "gl-1"]


def test_concurrent_enrolments_of_one_device_serialise(migrated_db: MigratedDb) -> None:
    patients = [f"P-{i}" for i in range(8)]
    for patient_id in patients:
        _add(migrated_db, patient_id)
    barrier = threading.Barrier(len(patients))
    outcomes: list[str] = []

    def enrol(index: int) -> None:
        barrier.wait()
        try:
            _enrol(migrated_db, "bp-1", patients[index], T0 + index * DAY)
        except admin.EnrolmentConflict:
            outcomes.append("conflict")
        else:
            outcomes.append("enrolled")

    threads = [threading.Thread(target=enrol, args=(i,)) for i in range(len(patients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(set(outcomes)) <= ["conflict", "enrolled"]
    assert len(outcomes) == len(patients)

    history = _history(migrated_db, "bp-1")
    assert outcomes.count("enrolled") == len(history) >= 1
    assert [valid_to for _, _, valid_to in history].count(None) == 1
    assert history[-1][2] is None
    for (_, _, end), (_, start, _) in itertools.pairwise(history):
        assert end == start  # contiguous, never overlapping
