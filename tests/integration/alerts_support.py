"""Shared set-up for the alert lifecycle, time rule, staff and CLI tests: people, teams and decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from alerts import staff
from alerts.lifecycle import ApplyResult, apply
from alerts.model import Confirmation, Decision, DecisionKind, RuleId
from alerts.notify.outbox import OutboxEntry, list_outbox
from alerts.tables import Alert, AlertEvent
from rpmgw import admin
from rpmgw.settings import AlertsSettings

T0 = datetime(2024, 3, 1, 6, 0, tzinfo=UTC)  # in the past: the CLI acknowledges at the real now
SETTINGS = AlertsSettings()
PATIENT = "P-000001"
PATIENT_PHONE = "+79990000001"
DOCTOR_PHONE = "+79990000101"
ONCALL_PHONE = "+79990000201"


def setup_clinic(
    sessions: sessionmaker[Session],
    *,
    patient_id: str = PATIENT,
    team: bool = True,
    responsible: bool = True,
    oncall: bool = True,
) -> None:
    """A patient (ru) in team "cardio" with responsible doctor "dr-a", and "dr-oncall" on call around T0."""
    with sessions.begin() as session:
        admin.add_patient(session, patient_id=patient_id, display_name="Test Patient", phone=PATIENT_PHONE)
        staff.add_staff(session, username="dr-a", display_name="Dr A", phone=DOCTOR_PHONE, role="doctor")
        staff.add_staff(
            session, username="dr-oncall", display_name="Dr On Call", phone=ONCALL_PHONE, role="doctor"
        )
        staff.add_staff(
            session, username="nurse-b", display_name="Nurse B", phone="+79990000301", role="nurse"
        )
        if team:
            staff.add_care_team(session, "cardio")
            staff.add_member(session, "cardio", "dr-a", responsible=responsible)
            staff.add_member(session, "cardio", "nurse-b")
            staff.assign_patient(session, patient_id, "cardio")
        if oncall:
            staff.add_shift(
                session, "dr-oncall", starts_at=T0 - timedelta(hours=12), ends_at=T0 + timedelta(hours=12)
            )


def bp(
    msg_id: str,
    at: datetime,
    systolic: int,
    diastolic: int,
    *,
    rule: RuleId = RuleId.HIGH_BP,
    kind: DecisionKind = DecisionKind.BREACH,
    late: bool = False,
    confirmation: Confirmation | None = None,
    patient_id: str = PATIENT,
) -> Decision:
    """A blood-pressure decision as the rules make them (worst_key: percent of the severe thresholds)."""
    return Decision(
        kind=kind,
        rule=rule,
        patient_id=patient_id,
        msg_id=msg_id,
        measured_at=at,
        value_text=f"{systolic}/{diastolic} mmHg",
        worst_key=100 * max(systolic / 180, diastolic / 120),
        late=late,
        confirmation=confirmation,
    )


def severe(
    msg_id: str, at: datetime, systolic: int = 184, diastolic: int = 112, **kwargs: object
) -> Decision:
    """A severe-BP breach (confirmation pending unless given)."""
    options: dict[str, object] = {"rule": RuleId.SEVERE_BP, "confirmation": Confirmation.PENDING} | kwargs
    return bp(msg_id, at, systolic, diastolic, **options)  # type: ignore[arg-type]


def normal(msg_id: str, at: datetime, **kwargs: object) -> Decision:
    """A normal BP reading: CLEAR for the bp_high family."""
    return bp(msg_id, at, 130, 80, kind=DecisionKind.CLEAR, **kwargs)  # type: ignore[arg-type]


def glucose(
    msg_id: str, at: datetime, value: float, rule: RuleId, *, kind: DecisionKind = DecisionKind.BREACH
) -> Decision:
    """A glucose decision."""
    return Decision(
        kind=kind,
        rule=rule,
        patient_id=PATIENT,
        msg_id=msg_id,
        measured_at=at,
        value_text=f"{value:.1f} mmol/L",
        worst_key=-value,
    )


def run(
    sessions: sessionmaker[Session], *decisions: Decision, now: datetime, label: str = "clinic"
) -> ApplyResult:
    """Apply decisions in one transaction, as the gateway does for a batch."""
    with sessions.begin() as session:
        return apply(session, decisions, threshold_versions={PATIENT: label}, now=now, settings=SETTINGS)


def alerts_of(sessions: sessionmaker[Session], patient_id: str = PATIENT) -> list[Alert]:
    """The patient's alerts, oldest first."""
    with sessions() as session:
        return list(session.scalars(select(Alert).where(Alert.patient_id == patient_id).order_by(Alert.id)))


def events_of(sessions: sessionmaker[Session], alert_id: int) -> list[tuple[str, str | None]]:
    """(kind, msg_id) of an alert's events, in order."""
    with sessions() as session:
        rows = session.execute(
            select(AlertEvent.kind, AlertEvent.msg_id)
            .where(AlertEvent.alert_id == alert_id)
            .order_by(AlertEvent.id)
        ).all()
    return [(kind, msg_id) for kind, msg_id in rows]


def outbox(sessions: sessionmaker[Session]) -> list[OutboxEntry]:
    """Every outbox row, oldest first."""
    with sessions() as session:
        return sorted(list_outbox(session, limit=10_000), key=lambda e: e.id)


def texts(sessions: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    """(recipient phone, template, purpose) of every queued text, oldest first."""
    return [(e.phone, e.template, e.purpose) for e in outbox(sessions)]
