"""Time rules with an injected clock, on SQLite and PostgreSQL: activity, no data, silent devices,
confirmation windows, escalation, and two workers at once."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from alerts.model import Confirmation
from alerts.tables import Alert, PatientActivity
from alerts.thresholds import Thresholds, with_overrides
from alerts.timerules import ActivityCache, TimeRuleReport, clear_no_data, record_activity, run_time_rules
from rpmgw import admin
from rpmgw.db import make_engine, session_factory
from rpmgw.models import Device, Patient
from tests.fixtures.db import MigratedDb
from tests.integration.alerts_support import (
    PATIENT,
    PATIENT_PHONE,
    SETTINGS,
    T0,
    alerts_of,
    events_of,
    run,
    setup_clinic,
    severe,
    texts,
)

DAY = timedelta(days=1)
MIN = timedelta(minutes=1)
CLINIC = Thresholds()
BP_DEVICE = "bp-000001"
GLUCOSE_DEVICE = "gl-000001"


def _enrol(sessions: sessionmaker[Session], device_id: str = BP_DEVICE, kind: str = "blood_pressure") -> None:
    with sessions.begin() as session:
        admin.enrol_device(session, device_id=device_id, patient_id=PATIENT, valid_from=T0, kind=kind)


def _tick(sessions: sessionmaker[Session], now: datetime, clinic: Thresholds = CLINIC) -> TimeRuleReport:
    with sessions.begin() as session:
        return run_time_rules(
            session, now=now, clinic=clinic, settings=SETTINGS, thresholds_for=lambda _: (clinic, "clinic")
        )


def _reading(
    sessions: sessionmaker[Session], measured_at: datetime, now: datetime, device_id: str = BP_DEVICE
) -> None:
    kind = "blood_pressure" if device_id == BP_DEVICE else "glucose"
    with sessions.begin() as session:
        record_activity(session, [(PATIENT, kind, measured_at, device_id)], now)


def _family(sessions: sessionmaker[Session], family: str) -> list[Alert]:
    return [a for a in alerts_of(sessions) if a.family == family]


def test_record_activity_keeps_the_newest_and_marks_devices_seen(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    _enrol(sessions)
    _enrol(sessions, GLUCOSE_DEVICE, "glucose")
    with sessions.begin() as session:
        record_activity(
            session,
            [
                (PATIENT, "blood_pressure", T0 + 2 * MIN, BP_DEVICE),
                (PATIENT, "blood_pressure", T0 + 5 * MIN, BP_DEVICE),
                (PATIENT, "glucose", T0 + MIN, GLUCOSE_DEVICE),
            ],
            T0 + 10 * MIN,
        )
    # An older backlog arriving later does not move last_measured_at back.
    _reading(sessions, T0 - DAY, T0 + 20 * MIN)

    with sessions() as session:
        activity = {
            a.type: (a.last_measured_at, a.last_received_at) for a in session.scalars(select(PatientActivity))
        }
        seen = {d.id: d.last_seen_at for d in session.scalars(select(Device))}
    assert activity == {
        "blood_pressure": (T0 + 5 * MIN, T0 + 20 * MIN),
        "glucose": (T0 + MIN, T0 + 10 * MIN),
    }
    assert seen == {BP_DEVICE: T0 + 20 * MIN, GLUCOSE_DEVICE: T0 + 10 * MIN}


def test_record_activity_takes_a_batch_beyond_one_statement_s_parameter_limit(
    migrated_db: MigratedDb,
) -> None:
    # 9,000 patients x 2 types = 18,000 activity rows: as one multi-row INSERT that is 72,000 bound
    # parameters, beyond PostgreSQL's 65,535 (a gateway batch may hold up to 65,535 readings).
    sessions = migrated_db.sessions
    count = 9_000
    patients = [f"many-{i:05d}" for i in range(count)]
    with sessions.begin() as session:
        session.execute(
            insert(Patient),
            [{"id": p, "display_name": p, "phone": "+79990000000", "timezone": "UTC"} for p in patients],
        )
        session.execute(insert(Device), [{"id": f"dev-{p}", "kind": "blood_pressure"} for p in patients])
    readings = [
        (p, kind, T0 + i * MIN, f"dev-{p}")
        for i, p in enumerate(patients)
        for kind in ("blood_pressure", "glucose")
    ]
    with sessions.begin() as session:
        writes = record_activity(session, readings, T0 + DAY)

    assert len(writes.measured) == 2 * count
    with sessions() as session:
        stored = {
            (a.patient_id, a.type): a.last_measured_at for a in session.scalars(select(PatientActivity))
        }
        seen = session.scalar(select(func.count()).select_from(Device).where(Device.last_seen_at == T0 + DAY))
    assert stored == {(p, kind): measured_at for p, kind, measured_at, _ in readings}
    assert seen == count


def _activity_and_seen(
    sessions: sessionmaker[Session],
) -> tuple[dict[str, tuple[datetime, datetime]], datetime]:
    with sessions() as session:
        activity = {
            a.type: (a.last_measured_at, a.last_received_at) for a in session.scalars(select(PatientActivity))
        }
        seen = session.scalars(select(Device.last_seen_at).where(Device.id == BP_DEVICE)).one()
    assert seen is not None
    return activity, seen


def test_the_activity_cache_skips_only_rows_that_would_not_change_and_refreshes_them(
    migrated_db: MigratedDb,
) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    _enrol(sessions)
    cache = ActivityCache(refresh=timedelta(seconds=60))

    def batch(measured_at: datetime, now: datetime, *, commit: bool = True) -> None:
        session = sessions()
        try:
            writes = record_activity(
                session, [(PATIENT, "blood_pressure", measured_at, BP_DEVICE)], now, cache=cache
            )
            if not commit:
                session.rollback()
                return
            session.commit()
            cache.remember(writes)
        finally:
            session.close()

    batch(T0 + 5 * MIN, T0 + 10 * MIN)
    assert _activity_and_seen(sessions) == ({"blood_pressure": (T0 + 5 * MIN, T0 + 10 * MIN)}, T0 + 10 * MIN)
    # An older reading 30 s later changes nothing the time rules count on: nothing is written.
    batch(T0 + 4 * MIN, T0 + 10 * MIN + timedelta(seconds=30))
    assert _activity_and_seen(sessions) == ({"blood_pressure": (T0 + 5 * MIN, T0 + 10 * MIN)}, T0 + 10 * MIN)
    # A reading less than a refresh period newer neither.
    batch(T0 + 5 * MIN + timedelta(seconds=59), T0 + 10 * MIN + timedelta(seconds=35))
    assert _activity_and_seen(sessions) == ({"blood_pressure": (T0 + 5 * MIN, T0 + 10 * MIN)}, T0 + 10 * MIN)
    # A reading a refresh period newer is written at once.
    batch(T0 + 6 * MIN, T0 + 10 * MIN + timedelta(seconds=40))
    assert _activity_and_seen(sessions)[0] == {
        "blood_pressure": (T0 + 6 * MIN, T0 + 10 * MIN + timedelta(seconds=40))
    }
    # After the refresh period an older reading still refreshes last_received_at and last_seen_at.
    batch(T0 + 4 * MIN, T0 + 12 * MIN)
    assert _activity_and_seen(sessions) == ({"blood_pressure": (T0 + 6 * MIN, T0 + 12 * MIN)}, T0 + 12 * MIN)
    # A rolled-back write is not remembered: the next batch writes it again.
    batch(T0 + 20 * MIN, T0 + 20 * MIN, commit=False)
    batch(T0 + 20 * MIN, T0 + 20 * MIN + timedelta(seconds=1))
    assert _activity_and_seen(sessions) == (
        {"blood_pressure": (T0 + 20 * MIN, T0 + 20 * MIN + timedelta(seconds=1))},
        T0 + 20 * MIN + timedelta(seconds=1),
    )


def test_a_newer_reading_clears_no_data_even_with_the_activity_cache(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    _enrol(sessions)
    cache = ActivityCache()
    with sessions.begin() as session:
        cache.remember(
            record_activity(
                session, [(PATIENT, "blood_pressure", T0 + MIN, BP_DEVICE)], T0 + MIN, cache=cache
            )
        )
    assert _tick(sessions, T0 + MIN + 6 * DAY).no_data_opened == 1
    now = T0 + MIN + 6 * DAY + MIN
    with sessions.begin() as session:
        cache.remember(
            record_activity(session, [(PATIENT, "blood_pressure", now, BP_DEVICE)], now, cache=cache)
        )
    [alert] = _family(sessions, "no_data")
    assert alert.cleared_at == now


def test_no_data_reminds_once_alerts_after_twice_the_period_and_a_reading_clears(
    migrated_db: MigratedDb,
) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    _enrol(sessions)
    _reading(sessions, T0 + MIN, T0 + MIN)
    last = T0 + MIN

    assert _tick(sessions, last + 3 * DAY - MIN).reminders == 0
    assert _tick(sessions, last + 3 * DAY).reminders == 1
    assert _tick(sessions, last + 4 * DAY).reminders == 0  # once per gap
    assert texts(sessions) == [(PATIENT_PHONE, "reminder_bp", "reminder")]
    assert _family(sessions, "no_data") == []

    report = _tick(sessions, last + 6 * DAY)
    assert (report.no_data_opened, report.reminders) == (1, 0)
    assert _tick(sessions, last + 6 * DAY + MIN).no_data_opened == 0
    [alert] = _family(sessions, "no_data")
    assert (alert.rule, alert.severity, alert.state) == ("no_data", "routine", "active, unacknowledged")
    assert "no blood pressure reading since" in alert.last_value_text
    assert [t[1] for t in texts(sessions)] == ["reminder_bp"]  # routine: nobody is paged

    _reading(sessions, last + 6 * DAY + 5 * MIN, last + 6 * DAY + 5 * MIN)
    [cleared] = _family(sessions, "no_data")
    assert cleared.state == "cleared, unacknowledged"
    assert _tick(sessions, last + 6 * DAY + 10 * MIN).no_data_opened == 0

    # A new gap starts from the new reading: a new reminder.
    assert _tick(sessions, last + 9 * DAY + 5 * MIN).reminders == 1


def test_no_data_counts_from_enrolment_when_nothing_was_ever_measured(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    _enrol(sessions, GLUCOSE_DEVICE, "glucose")
    assert _tick(sessions, T0 + 2 * DAY - MIN).reminders == 0
    assert _tick(sessions, T0 + 2 * DAY).reminders == 1
    assert texts(sessions) == [(PATIENT_PHONE, "reminder_glucose", "reminder")]
    assert _tick(sessions, T0 + 4 * DAY).no_data_opened == 1


def test_no_data_alert_waits_for_every_missing_type(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    _enrol(sessions)
    _enrol(sessions, GLUCOSE_DEVICE, "glucose")
    _tick(sessions, T0 + 7 * DAY)
    [alert] = _family(sessions, "no_data")
    assert alert.subject == "blood_pressure,glucose"

    _reading(sessions, T0 + 7 * DAY, T0 + 7 * DAY + MIN, GLUCOSE_DEVICE)
    [still] = _family(sessions, "no_data")
    assert still.active and still.subject == "blood_pressure"

    with sessions.begin() as session:
        assert clear_no_data(session, PATIENT, "blood_pressure", T0 + 7 * DAY + 2 * MIN)
    assert not _family(sessions, "no_data")[0].active


def test_no_data_alert_clears_when_the_device_is_returned(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    _enrol(sessions)
    _tick(sessions, T0 + 7 * DAY)
    with sessions.begin() as session:
        admin.end_enrolment(session, device_id=BP_DEVICE, valid_to=T0 + 7 * DAY + MIN)
    report = _tick(sessions, T0 + 7 * DAY + 2 * MIN)
    assert report.no_data_cleared == 1 and report.device_silent_cleared == 1
    assert all(not a.active for a in alerts_of(sessions))


def test_patient_thresholds_decide_the_no_data_period(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    _enrol(sessions)
    strict = with_overrides(CLINIC, {"no_data_days_bp": 1})
    with sessions.begin() as session:
        report = run_time_rules(
            session,
            now=T0 + 2 * DAY,
            clinic=CLINIC,
            settings=SETTINGS,
            thresholds_for=lambda _: (strict, "p:v1"),
        )
    assert (report.reminders, report.no_data_opened) == (1, 1)
    assert _family(sessions, "no_data")[0].threshold_version == "p:v1"


def test_device_silent_alert_and_its_clearing(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    _enrol(sessions)
    _reading(sessions, T0, T0 + MIN)

    assert _tick(sessions, T0 + MIN + 7 * DAY - MIN).device_silent_opened == 0
    assert _tick(sessions, T0 + MIN + 7 * DAY).device_silent_opened == 1
    [alert] = _family(sessions, "device_silent")
    assert alert.subject == BP_DEVICE and "device bp-000001 silent since" in alert.last_value_text

    # The device backfills old readings: it is heard from now, so the alert clears.
    _reading(sessions, T0 + DAY, T0 + 8 * DAY)
    [cleared] = _family(sessions, "device_silent")
    assert cleared.state == "cleared, unacknowledged"
    assert [kind for kind, _ in events_of(sessions, cleared.id)] == ["raised", "cleared"]

    # Silent again later: the same unacknowledged alert is re-activated, not duplicated.
    assert _tick(sessions, T0 + 15 * DAY + MIN).device_silent_opened == 0
    [again] = _family(sessions, "device_silent")
    assert again.id == alert.id and again.active


def test_confirmation_window_expiry(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, severe("m1", T0), now=T0 + MIN)

    assert _tick(sessions, T0 + 15 * MIN).confirmations_expired == 0
    assert _tick(sessions, T0 + 15 * MIN + timedelta(seconds=1)).confirmations_expired == 1
    assert _tick(sessions, T0 + 20 * MIN).confirmations_expired == 0
    [alert] = alerts_of(sessions)
    assert alert.confirmation == Confirmation.NO_REPEAT.value
    assert ("no_repeat", None) in events_of(sessions, alert.id)


def test_confirmation_window_starts_at_the_latest_pending_severe_reading(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, severe("m1", T0), now=T0 + MIN)
    run(sessions, severe("m2", T0 + 3 * MIN), now=T0 + 4 * MIN)  # too early to confirm: still pending
    assert _tick(sessions, T0 + 16 * MIN).confirmations_expired == 0
    assert _tick(sessions, T0 + 18 * MIN + timedelta(seconds=1)).confirmations_expired == 1


def test_time_rules_escalate(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, severe("m1", T0), now=T0)
    assert _tick(sessions, T0 + 14 * MIN).escalations == 0
    assert _tick(sessions, T0 + 15 * MIN).escalations == 1


def test_running_twice_does_everything_once(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    _enrol(sessions)
    run(sessions, severe("m1", T0 + 7 * DAY), now=T0 + 7 * DAY)
    first = _tick(sessions, T0 + 7 * DAY + 20 * MIN)
    second = _tick(sessions, T0 + 7 * DAY + 20 * MIN)
    assert first.total == 5 and second.total == 0  # reminder, no-data, silent, expiry, escalation
    assert second == TimeRuleReport()


@pytest.mark.postgres
def test_two_workers_at_once_do_everything_once(postgres_url: str) -> None:
    from rpmgw.db import upgrade

    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sessions = session_factory(engine)
    setup_clinic(sessions)
    _enrol(sessions)
    run(sessions, severe("m1", T0 + 7 * DAY), now=T0 + 7 * DAY)
    barrier = threading.Barrier(2, timeout=20)
    reports: list[TimeRuleReport] = []
    errors: list[BaseException] = []

    def worker() -> None:
        own = make_engine(postgres_url)
        try:
            own_sessions = session_factory(own)
            barrier.wait()
            reports.append(_tick(own_sessions, T0 + 7 * DAY + 20 * MIN))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    try:
        assert not errors, errors
        assert sum(r.total for r in reports) == 5
        assert sorted(a.family for a in alerts_of(sessions)) == ["bp_high", "device_silent", "no_data"]
        assert sorted(t[1] for t in texts(sessions)) == [
            "reminder_bp",
            "severe_bp_advice",
            "staff_alert",
            "staff_escalation",
        ]
    finally:
        engine.dispose()
