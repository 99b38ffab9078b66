"""The alert lifecycle on SQLite and PostgreSQL: open, attach, upgrade, clear, re-activate, texts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alerts.lifecycle import acknowledge
from alerts.model import Confirmation, DecisionKind, RuleId
from tests.fixtures.db import MigratedDb
from tests.integration.alerts_support import (
    DOCTOR_PHONE,
    ONCALL_PHONE,
    PATIENT,
    PATIENT_PHONE,
    T0,
    alerts_of,
    bp,
    events_of,
    glucose,
    normal,
    outbox,
    run,
    setup_clinic,
    severe,
    texts,
)

MIN = timedelta(minutes=1)


def test_repeated_breaches_attach_to_one_alert(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)

    first = run(sessions, bp("m1", T0, 165, 95), now=T0 + MIN)
    run(sessions, bp("m2", T0 + 10 * MIN, 172, 104), now=T0 + 11 * MIN)
    third = run(sessions, bp("m3", T0 + 20 * MIN, 161, 90), now=T0 + 21 * MIN)

    [alert] = alerts_of(sessions)
    assert first.opened == (alert.id,)
    assert third.attached == (alert.id,) and third.opened == ()
    assert (alert.rule, alert.severity, alert.reading_count) == ("high_bp", "urgent", 3)
    assert alert.worst_value_text == "172/104 mmHg"
    assert alert.last_value_text == "161/90 mmHg"
    assert (alert.first_measured_at, alert.last_measured_at) == (T0, T0 + 20 * MIN)
    assert alert.state == "active, unacknowledged"
    assert events_of(sessions, alert.id) == [
        ("raised", "m1"),
        ("reading_attached", "m2"),
        ("reading_attached", "m3"),
    ]
    assert texts(sessions) == []  # high BP is urgent but has no patient advice text, and pages nobody


def test_the_same_msg_id_applied_twice_changes_nothing(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, severe("m1", T0), now=T0 + MIN)
    [before] = alerts_of(sessions)
    events_before = events_of(sessions, before.id)
    texts_before = texts(sessions)
    assert texts_before == [
        (PATIENT_PHONE, "severe_bp_advice", "advice"),
        (DOCTOR_PHONE, "staff_alert", "alert"),
    ]

    again = run(sessions, severe("m1", T0), now=T0 + 2 * MIN)
    # Within one batch too (a redelivery next to its original).
    run(sessions, severe("m1", T0), severe("m1", T0), now=T0 + 3 * MIN)

    [after] = alerts_of(sessions)
    assert again.opened == again.attached == again.upgraded == () and again.notifications == 0
    assert after.reading_count == 1
    assert events_of(sessions, after.id) == events_before
    assert texts(sessions) == texts_before


def test_high_bp_alert_is_upgraded_by_a_severe_breach(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, bp("m1", T0, 165, 95), now=T0 + MIN)
    result = run(sessions, severe("m2", T0 + 30 * MIN, 188, 112), now=T0 + 31 * MIN)
    run(sessions, bp("m3", T0 + 40 * MIN, 170, 100), now=T0 + 41 * MIN)

    [alert] = alerts_of(sessions)
    assert result.upgraded == (alert.id,)
    assert (alert.rule, alert.severity, alert.reading_count) == ("severe_bp", "critical", 3)
    assert alert.worst_value_text == "188/112 mmHg" and alert.last_value_text == "170/100 mmHg"
    assert alert.confirmation == "pending"
    assert [kind for kind, _ in events_of(sessions, alert.id) if kind != "notified"] == [
        "raised",
        "upgraded",
        "reading_attached",
    ]
    # The upgrade to critical is texted and paged like a new critical alert, under its own keys.
    assert texts(sessions) == [
        (PATIENT_PHONE, "severe_bp_advice", "advice_critical"),
        (DOCTOR_PHONE, "staff_alert", "alert_critical"),
    ]
    assert alert.next_escalation_at == T0 + 31 * MIN + timedelta(minutes=15)
    [advice, _] = outbox(sessions)
    assert "188/112" in advice.body and advice.critical


def test_a_new_critical_alert_escalates_15_minutes_after_it_opened(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    result = run(sessions, severe("m1", T0), now=T0 + MIN)

    [alert] = alerts_of(sessions)
    assert result.opened == (alert.id,)
    assert result.opened_rules == (("severe_bp", "critical"),)
    assert alert.next_escalation_at == T0 + MIN + timedelta(minutes=15)


def test_an_alert_opened_and_upgraded_in_one_batch_is_counted_as_the_batch_left_it(
    migrated_db: MigratedDb,
) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    result = run(sessions, bp("m1", T0, 165, 95), severe("m2", T0 + 10 * MIN, 190, 115), now=T0 + 11 * MIN)

    [alert] = alerts_of(sessions)
    assert result.opened == (alert.id,) and result.upgraded == (alert.id,)
    assert result.opened_rules == (("severe_bp", "critical"),)  # what the metrics count it as
    assert alert.next_escalation_at == T0 + 11 * MIN + timedelta(minutes=15)


def test_a_lesser_breach_attaches_to_the_severe_alert_without_downgrading(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, glucose("g1", T0, 2.6, RuleId.HYPO_L2), now=T0 + MIN)
    run(sessions, glucose("g2", T0 + 20 * MIN, 3.5, RuleId.HYPO_L1), now=T0 + 21 * MIN)

    [alert] = alerts_of(sessions)
    assert (alert.rule, alert.severity, alert.reading_count) == ("hypo_l2", "critical", 2)
    assert alert.worst_value_text == "2.6 mmol/L" and alert.last_value_text == "3.5 mmol/L"
    assert texts(sessions) == [
        (PATIENT_PHONE, "hypo_l2_advice", "advice"),
        (DOCTOR_PHONE, "staff_alert", "alert"),
    ]
    assert "2,6" in outbox(sessions)[0].body  # ru text, decimal comma


def test_clear_then_breach_after_acknowledgement_opens_a_new_alert(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, bp("m1", T0, 165, 95), now=T0 + MIN)
    cleared = run(sessions, normal("m2", T0 + 60 * MIN), now=T0 + 61 * MIN)
    [first] = alerts_of(sessions)
    assert cleared.cleared == (first.id,)
    assert first.state == "cleared, unacknowledged"

    with sessions.begin() as session:
        acknowledge(
            session,
            first.id,
            by_username="dr-a",
            reason_code="contacted_patient",
            note="called, feels fine",
            now=T0 + 90 * MIN,
        )
    run(sessions, bp("m3", T0 + 120 * MIN, 170, 100), now=T0 + 121 * MIN)

    old, new = alerts_of(sessions)
    assert old.id == first.id and old.state == "closed" and old.closed_at == T0 + 90 * MIN
    assert new.state == "active, unacknowledged" and new.reading_count == 1
    assert events_of(sessions, old.id)[-2:] == [("acknowledged", None), ("closed", None)]


def test_clear_then_breach_without_acknowledgement_reactivates_the_alert(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, bp("m1", T0, 165, 95), now=T0 + MIN)
    run(sessions, normal("m2", T0 + 60 * MIN), now=T0 + 61 * MIN)
    run(sessions, normal("m3", T0 + 70 * MIN), now=T0 + 71 * MIN)  # already cleared: nothing more
    run(sessions, bp("m4", T0 + 120 * MIN, 170, 100), now=T0 + 121 * MIN)

    [alert] = alerts_of(sessions)
    assert alert.state == "active, unacknowledged" and alert.cleared_at is None
    assert alert.reading_count == 2
    assert events_of(sessions, alert.id) == [
        ("raised", "m1"),
        ("cleared", "m2"),
        ("reactivated", "m4"),
        ("reading_attached", "m4"),
    ]


def test_clear_of_an_acknowledged_alert_closes_it(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, bp("m1", T0, 165, 95), now=T0 + MIN)
    [alert] = alerts_of(sessions)
    with sessions.begin() as session:
        acknowledge(
            session,
            alert.id,
            by_username="nurse-b",
            reason_code="no_action_needed",
            note="known",
            now=T0 + 5 * MIN,
        )
    assert alerts_of(sessions)[0].state == "active, acknowledged"

    run(sessions, normal("m2", T0 + 60 * MIN), now=T0 + 61 * MIN)

    [closed] = alerts_of(sessions)
    assert closed.state == "closed" and closed.closed_at == T0 + 61 * MIN


def test_an_acknowledged_alert_is_superseded_by_a_more_severe_breach(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, bp("m1", T0, 165, 95), now=T0 + MIN)
    [high] = alerts_of(sessions)
    with sessions.begin() as session:
        acknowledge(
            session,
            high.id,
            by_username="dr-a",
            reason_code="medication_changed",
            note="dose up",
            now=T0 + 5 * MIN,
        )

    run(sessions, severe("m2", T0 + 60 * MIN), now=T0 + 61 * MIN)

    old, new = alerts_of(sessions)
    assert old.state == "closed"
    assert (new.rule, new.severity, new.state) == ("severe_bp", "critical", "active, unacknowledged")
    assert new.next_escalation_at is not None  # needs its own acknowledgement: it escalates


def test_late_breach_marks_the_alert_late_and_texts_nobody(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, severe("m1", T0, late=True), now=T0 + 3 * 60 * MIN)

    [alert] = alerts_of(sessions)
    assert alert.late and alert.severity == "critical"
    assert alert.next_escalation_at is None
    assert texts(sessions) == []


def test_a_timely_breach_on_a_late_alert_texts_and_pages(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, severe("m1", T0, late=True), now=T0 + 3 * 60 * MIN)
    run(sessions, severe("m2", T0 + 3 * 60 * MIN), now=T0 + 3 * 60 * MIN + MIN)

    [alert] = alerts_of(sessions)
    assert not alert.late and alert.reading_count == 2
    assert texts(sessions) == [
        (PATIENT_PHONE, "severe_bp_advice", "advice"),
        (DOCTOR_PHONE, "staff_alert", "alert"),
    ]


def test_remeasure_opens_no_alert_and_texts_once(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    suspect = severe("m1", T0, kind=DecisionKind.REMEASURE, confirmation=None)
    result = run(sessions, suspect, now=T0 + MIN)
    run(sessions, suspect, now=T0 + 2 * MIN)

    assert alerts_of(sessions) == []
    assert result.notifications == 1
    assert texts(sessions) == [(PATIENT_PHONE, "remeasure_advice", "remeasure")]


def test_late_remeasure_texts_nobody(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(
        sessions,
        severe("m1", T0, kind=DecisionKind.REMEASURE, confirmation=None, late=True),
        now=T0 + 3 * 60 * MIN,
    )
    assert texts(sessions) == []


def test_remeasure_is_recorded_on_the_open_alert_of_the_family(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, bp("m1", T0, 165, 95), now=T0 + MIN)
    run(sessions, bp("m2", T0 + 10 * MIN, 200, 95, kind=DecisionKind.REMEASURE), now=T0 + 11 * MIN)

    [alert] = alerts_of(sessions)
    assert alert.reading_count == 1 and alert.severity == "urgent"  # a suspect reading never upgrades
    assert events_of(sessions, alert.id) == [("raised", "m1"), ("remeasure", "m2"), ("notified", None)]
    assert texts(sessions) == [(PATIENT_PHONE, "remeasure_advice", "remeasure")]


@pytest.mark.parametrize(
    ("repeat", "expected", "event"),
    [
        (severe("m2", T0 + 7 * MIN, 190, 115, confirmation=Confirmation.CONFIRMED), "confirmed", "confirmed"),
        (
            normal("m2", T0 + 7 * MIN, confirmation=Confirmation.NOT_CONFIRMED),
            "not_confirmed",
            "not_confirmed",
        ),
    ],
    ids=["confirmed", "not_confirmed"],
)
def test_severe_bp_confirmation_is_annotated(
    migrated_db: MigratedDb, repeat: object, expected: str, event: str
) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, severe("m1", T0), now=T0 + MIN)
    run(sessions, repeat, now=T0 + 8 * MIN)  # type: ignore[arg-type]

    [alert] = alerts_of(sessions)
    assert alert.confirmation == expected
    assert (event, "m2") in events_of(sessions, alert.id)
    assert alert.severity == "critical"  # a normal repeat clears it, but the alert stays for the doctor
    assert alert.closed_at is None


def test_confirmed_is_not_undone_by_a_later_normal_repeat(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, severe("m1", T0), now=T0 + MIN)
    run(sessions, severe("m2", T0 + 7 * MIN, confirmation=Confirmation.CONFIRMED), now=T0 + 8 * MIN)
    run(sessions, normal("m3", T0 + 14 * MIN, confirmation=Confirmation.NOT_CONFIRMED), now=T0 + 15 * MIN)
    assert alerts_of(sessions)[0].confirmation == "confirmed"


def test_patient_without_a_care_team_still_gets_an_alert_and_the_oncall_doctor_is_paged(
    migrated_db: MigratedDb,
) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions, team=False)
    run(sessions, severe("m1", T0), now=T0 + MIN)

    [alert] = alerts_of(sessions)
    assert alert.state == "active, unacknowledged"
    assert texts(sessions) == [
        (PATIENT_PHONE, "severe_bp_advice", "advice"),
        (ONCALL_PHONE, "staff_alert", "alert"),
    ]
    with migrated_db.sessions() as session:
        from alerts.lifecycle import alert_events

        details = [e.detail for e in alert_events(session, alert.id) if e.kind == "notified"]
    assert any("no care team" in d and "dr-oncall" in d for d in details), details


def test_nobody_to_page_is_recorded_and_the_alert_stays(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions, responsible=False, oncall=False)
    run(sessions, severe("m1", T0), now=T0 + MIN)

    [alert] = alerts_of(sessions)
    assert alert.closed_at is None
    assert texts(sessions) == [(PATIENT_PHONE, "severe_bp_advice", "advice")]
    with migrated_db.sessions() as session:
        from alerts.lifecycle import alert_events

        details = [e.detail for e in alert_events(session, alert.id) if e.kind == "notified"]
    assert any("no active responsible doctor" in d and "nobody" in d for d in details), details


def test_urgent_alert_texts_the_patient_but_pages_nobody(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, bp("m1", T0, 85, 55, rule=RuleId.LOW_BP), now=T0 + MIN)

    [alert] = alerts_of(sessions)
    assert alert.severity == "urgent" and alert.next_escalation_at is None
    assert texts(sessions) == [(PATIENT_PHONE, "low_bp_advice", "advice")]
    assert not outbox(sessions)[0].critical


def test_threshold_version_label_is_recorded(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(sessions, bp("m1", T0, 165, 95), now=T0 + MIN, label="patient:P-000001:v2")
    assert alerts_of(sessions)[0].threshold_version == "patient:P-000001:v2"


def test_families_are_independent(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    run(
        sessions,
        bp("m1", T0, 165, 95),
        bp("m1", T0, 165, 95, rule=RuleId.PULSE_ABNORMAL),
        now=T0 + MIN,
    )
    assert sorted(a.family for a in alerts_of(sessions)) == ["bp_high", "pulse"]


def test_the_real_rules_drive_the_lifecycle(migrated_db: MigratedDb) -> None:
    from alerts.model import ReadingView
    from alerts.rules import evaluate
    from alerts.thresholds import Thresholds

    sessions = migrated_db.sessions
    setup_clinic(sessions)
    history: list[ReadingView] = []

    def measure(msg_id: str, minutes: int, systolic: int, diastolic: int) -> None:
        reading = ReadingView(
            msg_id, "bp-1", "blood_pressure", T0 + minutes * MIN, systolic=systolic, diastolic=diastolic
        )
        history.append(reading)
        now = reading.measured_at + MIN
        decisions = evaluate(Thresholds(), PATIENT, history, reading, now, late_after=timedelta(hours=1))
        run(sessions, *decisions, now=now)

    measure("m1", 0, 186, 112)  # severe: pending, advice and page
    measure("m2", 7, 190, 118)  # the repeat within 5-15 min confirms
    measure("m3", 60, 128, 82)  # back to normal: cleared

    [alert] = alerts_of(sessions)
    assert (alert.rule, alert.confirmation, alert.reading_count) == ("severe_bp", "confirmed", 2)
    assert alert.state == "cleared, unacknowledged"
    assert [kind for kind, _ in events_of(sessions, alert.id) if kind != "notified"] == [
        "raised",
        "reading_attached",
        "confirmed",
        "cleared",
    ]
    assert [t[1] for t in texts(sessions)] == ["severe_bp_advice", "staff_alert"]


def test_a_remeasure_redelivered_after_an_alert_opened_is_not_texted_again(migrated_db: MigratedDb) -> None:
    sessions = migrated_db.sessions
    setup_clinic(sessions)
    suspect = bp("m1", T0, 200, 95, kind=DecisionKind.REMEASURE)
    run(sessions, suspect, now=T0 + MIN)
    run(sessions, bp("m2", T0 + 10 * MIN, 165, 95), now=T0 + 11 * MIN)
    run(sessions, suspect, now=T0 + 12 * MIN)
    assert texts(sessions) == [(PATIENT_PHONE, "remeasure_advice", "remeasure")]


def test_a_breach_and_a_clear_of_one_batch_open_and_clear_the_alert(migrated_db: MigratedDb) -> None:
    # Clears for families without an open alert are skipped before loading anything: a clear that
    # follows a breach in the same batch must still find the alert the breach opened.
    sessions = migrated_db.sessions
    setup_clinic(sessions)

    result = run(
        sessions,
        normal("m0", T0 - MIN),  # nothing open yet: does nothing
        bp("m1", T0, 165, 95),
        normal("m2", T0 + 10 * MIN),
        now=T0 + 11 * MIN,
    )

    [alert] = alerts_of(sessions)
    assert result.opened == (alert.id,) and result.cleared == (alert.id,)
    assert alert.cleared_at == T0 + 11 * MIN
    assert events_of(sessions, alert.id) == [("raised", "m1"), ("cleared", "m2")]
