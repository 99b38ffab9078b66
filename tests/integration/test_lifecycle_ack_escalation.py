"""Acknowledgement and escalation of alerts on SQLite and PostgreSQL, with an injected clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alerts import staff
from alerts.errors import AlertsError, AlreadyAcknowledged, InvalidInput, UnknownAlert, UnknownStaff
from alerts.lifecycle import acknowledge, acknowledgement_of, escalate_due, list_alerts
from alerts.model import DecisionKind, RuleId
from alerts.tables import Alert
from tests.fixtures.db import MigratedDb
from tests.integration.alerts_support import (
    DOCTOR_PHONE,
    ONCALL_PHONE,
    PATIENT_PHONE,
    SETTINGS,
    T0,
    alerts_of,
    bp,
    events_of,
    glucose,
    normal,
    run,
    setup_clinic,
    severe,
    texts,
)

MIN = timedelta(minutes=1)
OPENED = T0 + MIN  # when the critical alert of these tests is opened


def _critical(migrated_db: MigratedDb, *, oncall: bool = True) -> int:
    setup_clinic(migrated_db.sessions, oncall=oncall)
    run(migrated_db.sessions, severe("m1", T0), now=OPENED)
    [alert] = alerts_of(migrated_db.sessions)
    return alert.id


def _escalate(migrated_db: MigratedDb, at: timedelta) -> int:
    with migrated_db.sessions.begin() as session:
        return escalate_due(session, now=OPENED + at, settings=SETTINGS)


def _ack(migrated_db: MigratedDb, alert_id: int, at: timedelta, **overrides: str) -> None:
    values = {
        "by_username": "dr-a",
        "reason_code": "contacted_patient",
        "note": "called the patient",
    } | overrides
    with migrated_db.sessions.begin() as session:
        acknowledge(session, alert_id, now=OPENED + at, **values)


def test_escalation_reaches_the_responsible_then_the_oncall_doctor_on_time(migrated_db: MigratedDb) -> None:
    alert_id = _critical(migrated_db)
    initial = texts(migrated_db.sessions)

    assert _escalate(migrated_db, 15 * MIN - timedelta(seconds=1)) == 0
    assert texts(migrated_db.sessions) == initial
    assert _escalate(migrated_db, 15 * MIN) == 1
    assert texts(migrated_db.sessions)[len(initial) :] == [(DOCTOR_PHONE, "staff_escalation", "escalation1")]
    assert _escalate(migrated_db, 15 * MIN) == 0  # the same step never twice

    assert _escalate(migrated_db, 30 * MIN - timedelta(seconds=1)) == 0
    assert _escalate(migrated_db, 30 * MIN) == 1
    assert texts(migrated_db.sessions)[len(initial) + 1 :] == [
        (ONCALL_PHONE, "staff_escalation", "escalation2")
    ]

    assert _escalate(migrated_db, 24 * 60 * MIN) == 0  # nothing after the on-call doctor
    [alert] = alerts_of(migrated_db.sessions)
    assert (alert.escalation_level, alert.next_escalation_at) == (2, None)
    assert [kind for kind, _ in events_of(migrated_db.sessions, alert_id)].count("escalated") == 2


def test_a_late_worker_escalates_step_by_step_on_the_original_schedule(migrated_db: MigratedDb) -> None:
    _critical(migrated_db)
    assert _escalate(migrated_db, 40 * MIN) == 1  # level 1 first, even when both are overdue
    [alert] = alerts_of(migrated_db.sessions)
    assert alert.next_escalation_at == OPENED + 30 * MIN
    assert _escalate(migrated_db, 40 * MIN) == 1


def test_acknowledgement_stops_the_escalation(migrated_db: MigratedDb) -> None:
    alert_id = _critical(migrated_db)
    assert _escalate(migrated_db, 15 * MIN) == 1
    _ack(migrated_db, alert_id, 20 * MIN)
    before = texts(migrated_db.sessions)

    assert _escalate(migrated_db, 30 * MIN) == 0
    assert _escalate(migrated_db, 120 * MIN) == 0
    [alert] = alerts_of(migrated_db.sessions)
    assert alert.next_escalation_at is None
    # The patient who got the advice hears that a doctor saw it; nobody else is texted.
    assert texts(migrated_db.sessions) == [*before]
    assert before[-1] == (PATIENT_PHONE, "seen_by_doctor", "seen_by_doctor")


def test_acknowledgement_records_who_when_what_and_time_to_ack(migrated_db: MigratedDb) -> None:
    alert_id = _critical(migrated_db)
    _ack(migrated_db, alert_id, 12 * MIN, reason_code="emergency_services", note="  ambulance called  ")

    with migrated_db.sessions() as session:
        ack = acknowledgement_of(session, alert_id)
        alert = session.get(Alert, alert_id)
        by = staff.get_staff(session, "dr-a")
    assert ack is not None and alert is not None
    assert (ack.staff_id, ack.reason_code, ack.note) == (by.id, "emergency_services", "ambulance called")
    assert ack.time_to_ack_seconds == 12 * 60
    assert (alert.acknowledged_at, alert.acknowledged_by) == (OPENED + 12 * MIN, "dr-a")
    assert alert.state == "active, acknowledged"


def test_no_seen_by_doctor_text_when_the_patient_was_not_advised(migrated_db: MigratedDb) -> None:
    setup_clinic(migrated_db.sessions)
    run(migrated_db.sessions, bp("m1", T0, 165, 95), now=OPENED)  # high BP: no advice text
    [alert] = alerts_of(migrated_db.sessions)
    _ack(migrated_db, alert.id, 5 * MIN)
    assert texts(migrated_db.sessions) == []


@pytest.mark.parametrize(
    ("alert_id", "overrides", "error", "message"),
    [
        (999, {}, UnknownAlert, "unknown alert 999"),
        (
            None,
            {"reason_code": "fixed_it"},
            InvalidInput,
            "invalid reason 'fixed_it': use one of contacted_patient",
        ),
        (None, {"note": "   "}, InvalidInput, "needs a note"),
        (None, {"by_username": "dr-nobody"}, UnknownStaff, "unknown staff member 'dr-nobody'"),
        (None, {"by_username": "dr-gone"}, UnknownStaff, "'dr-gone' is deactivated"),
    ],
    ids=["unknown-alert", "bad-reason", "empty-note", "unknown-staff", "deactivated-staff"],
)
def test_acknowledgement_is_validated(
    migrated_db: MigratedDb,
    alert_id: int | None,
    overrides: dict[str, str],
    error: type[AlertsError],
    message: str,
) -> None:
    real_id = _critical(migrated_db)
    with migrated_db.sessions.begin() as session:
        staff.add_staff(session, username="dr-gone", display_name="Gone", phone="+79990000999", role="doctor")
        staff.set_staff_active(session, "dr-gone", False)

    with pytest.raises(error, match=message):
        _ack(migrated_db, alert_id or real_id, 5 * MIN, **overrides)

    [alert] = alerts_of(migrated_db.sessions)
    assert alert.acknowledged_at is None


def test_an_alert_is_acknowledged_once(migrated_db: MigratedDb) -> None:
    alert_id = _critical(migrated_db)
    _ack(migrated_db, alert_id, 5 * MIN)
    with pytest.raises(AlreadyAcknowledged, match=f"alert {alert_id} was acknowledged by dr-a at "):
        _ack(migrated_db, alert_id, 6 * MIN, by_username="nurse-b")


def test_late_critical_alert_never_escalates(migrated_db: MigratedDb) -> None:
    setup_clinic(migrated_db.sessions)
    run(migrated_db.sessions, severe("m1", T0, late=True), now=OPENED)
    assert _escalate(migrated_db, 15 * MIN) == 0
    assert _escalate(migrated_db, 60 * MIN) == 0
    assert texts(migrated_db.sessions) == []


def test_escalation_without_an_oncall_doctor_is_recorded_and_the_alert_stays(migrated_db: MigratedDb) -> None:
    alert_id = _critical(migrated_db, oncall=False)
    assert _escalate(migrated_db, 15 * MIN) == 1
    assert _escalate(migrated_db, 30 * MIN) == 1
    with migrated_db.sessions() as session:
        from alerts.lifecycle import alert_events

        escalations = [e.detail for e in alert_events(session, alert_id) if e.kind == "escalated"]
        still_listed = [a.id for a in list_alerts(session)]
    assert escalations == ["level 1: dr-a", "level 2: no on-call doctor"]
    assert still_listed == [alert_id]


def test_a_cleared_unacknowledged_critical_alert_still_escalates(migrated_db: MigratedDb) -> None:
    alert_id = _critical(migrated_db)
    run(migrated_db.sessions, normal("m2", T0 + 5 * MIN), now=OPENED + 5 * MIN)
    assert _escalate(migrated_db, 15 * MIN) == 1
    _ack(migrated_db, alert_id, 16 * MIN)
    [alert] = alerts_of(migrated_db.sessions)
    assert alert.state == "closed"


def test_list_alerts_puts_open_and_severe_first(migrated_db: MigratedDb) -> None:
    setup_clinic(migrated_db.sessions)
    run(
        migrated_db.sessions,
        bp("m1", T0, 120, 80, rule=RuleId.PULSE_ABNORMAL),
        bp("m1", T0, 85, 55, rule=RuleId.LOW_BP),
        now=OPENED,
    )
    run(migrated_db.sessions, glucose("g1", T0, 2.5, RuleId.HYPO_L2), now=OPENED + MIN)
    low = next(a for a in alerts_of(migrated_db.sessions) if a.family == "low_bp")
    _ack(migrated_db, low.id, 2 * MIN)
    run(
        migrated_db.sessions,
        bp("m2", T0 + 5 * MIN, 120, 80, kind=DecisionKind.CLEAR, rule=RuleId.LOW_BP),
        now=OPENED + 5 * MIN,
    )

    with migrated_db.sessions() as session:
        open_rules = [a.rule for a in list_alerts(session)]
        all_rules = [a.rule for a in list_alerts(session, state="all")]
        mine = [a.rule for a in list_alerts(session, patient_id="P-other", state="all")]
        team = staff.team_ids_of(session, "dr-a")
        by_team = [a.rule for a in list_alerts(session, team_ids=team)]
        other_team = [a.rule for a in list_alerts(session, team_ids=[])]
    assert open_rules == ["hypo_l2", "pulse_abnormal"]
    assert all_rules == ["hypo_l2", "pulse_abnormal", "low_bp"]
    assert mine == [] and other_team == []
    assert by_team == open_rules
