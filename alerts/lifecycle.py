"""The alert lifecycle in the relational store: decisions in, alerts, events and texts out.

One open alert per (patient, family): a breach opens it or attaches to it (upgrading the rule when
more severe), a clear marks it cleared, a person acknowledges it; it is closed once both cleared and
acknowledged. Everything is idempotent: a reading (msg_id) already recorded on an alert of the family
changes nothing, and every text has an idempotency key in the outbox.

Concurrency: the open alerts of a batch's patients are locked (SELECT ... FOR UPDATE, PostgreSQL)
before anything is decided, and a new alert is inserted inside a SAVEPOINT: when another process
opened the same (patient, family) first, the partial unique index refuses ours and we attach to theirs.
On SQLite every transaction holds the write lock from its start (rpmgw.db), so nothing races.

Every function works inside the caller's transaction (it flushes, it never commits).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alerts.errors import AlreadyAcknowledged, ConcurrentChange, InvalidInput, UnknownAlert
from alerts.model import RULES, Confirmation, Decision, DecisionKind, Family, RuleId, Severity
from alerts.notify.outbox import enqueue
from alerts.staff import get_staff, oncall_now, responsible_doctor
from alerts.tables import REASON_CODES, Acknowledgement, Alert, AlertEvent, Staff
from rpmgw.models import Patient
from rpmgw.settings import AlertsSettings

log = logging.getLogger(__name__)

# The patient's "what to do now" text of each rule that has one.
ADVICE_TEMPLATES: Final[Mapping[RuleId, str]] = {
    RuleId.SEVERE_BP: "severe_bp_advice",
    RuleId.HYPO_L2: "hypo_l2_advice",
    RuleId.HYPER_SEVERE: "hyper_severe_advice",
    RuleId.HYPO_L1: "hypo_l1_advice",
    RuleId.HYPER_MARKED: "hyper_marked_advice",
    RuleId.LOW_BP: "low_bp_advice",
}
_GLUCOSE_FAMILIES: Final = frozenset({Family.HYPO, Family.HYPER, Family.REPEATED_HYPO})
_BP_VALUE: Final = re.compile(r"(\d+)/(\d+)")
_NUMBER: Final = re.compile(r"\d+(?:\.\d+)?")
# `notified` events of patient texts start with this (acknowledge looks for advice sent).
_PATIENT_NOTIFIED_PREFIX: Final = "patient:"
_CHUNK: Final = 500

AlertState = Literal["open", "all"]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What `apply` did: alert ids opened, attached to, upgraded and cleared, and texts enqueued;
    `opened_rules` is (rule, severity) of each opened alert as the batch left it (for the metrics)."""

    opened: tuple[int, ...] = ()
    opened_rules: tuple[tuple[str, str], ...] = ()
    attached: tuple[int, ...] = ()
    upgraded: tuple[int, ...] = ()
    cleared: tuple[int, ...] = ()
    notifications: int = 0


@dataclass(slots=True)
class _Tally:
    opened: list[Alert] = field(default_factory=list)
    attached: list[int] = field(default_factory=list)
    upgraded: list[int] = field(default_factory=list)
    cleared: list[int] = field(default_factory=list)
    notifications: int = 0

    def result(self) -> ApplyResult:
        return ApplyResult(
            opened=tuple(alert.id for alert in self.opened),
            opened_rules=tuple((alert.rule, alert.severity) for alert in self.opened),
            attached=tuple(self.attached),
            upgraded=tuple(self.upgraded),
            cleared=tuple(self.cleared),
            notifications=self.notifications,
        )


@dataclass(slots=True)
class _Context:
    """What one `apply` call has loaded and done so far."""

    session: Session
    now: datetime
    settings: AlertsSettings
    versions: Mapping[str, str]
    patients: dict[str, Patient]
    open_alerts: dict[tuple[str, str], Alert]
    applied: set[tuple[str, str, str]]  # (patient, family, msg_id) already recorded
    tally: _Tally


# --- applying decisions --------------------------------------------------------------------------


def apply(
    session: Session,
    decisions: Sequence[Decision],
    *,
    threshold_versions: Mapping[str, str],
    now: datetime,
    settings: AlertsSettings,
) -> ApplyResult:
    """Apply the rules' decisions (per patient, oldest reading first) to the alerts.

    BREACH opens the family's alert or attaches the reading to the open one (upgrading its rule when
    more severe, re-activating it when it was cleared); CLEAR marks it cleared (closed when also
    acknowledged); REMEASURE texts the patient re-measure advice and opens nothing. Confirmation
    values annotate the alert. New and upgraded critical/urgent alerts text the patient; critical
    ones page the responsible doctor and start the escalation clock. `late` decisions send nothing.
    `threshold_versions` gives each patient's threshold label ("clinic" when missing).
    """
    tally = _Tally()
    if not decisions:
        return tally.result()
    # Locked before the applied set is read: a concurrent apply of the same readings commits first.
    open_alerts = _lock_open_alerts(session, decisions)
    # A CLEAR for a family with no open alert, and no breach in this batch that could open one, does
    # nothing: that is most decisions under normal load. Only the rest need their patient and applied
    # set loaded (loading every batch patient's row was a third of the gateway's time under live load).
    live = set(open_alerts) | {
        (d.patient_id, d.family.value) for d in decisions if d.kind is not DecisionKind.CLEAR
    }
    acting = [d for d in decisions if (d.patient_id, d.family.value) in live]
    if not acting:
        return tally.result()
    patient_ids = sorted({d.patient_id for d in acting})
    ctx = _Context(
        session=session,
        now=now,
        settings=settings,
        versions=threshold_versions,
        patients=_load_patients(session, patient_ids),
        open_alerts=open_alerts,
        applied=_applied(session, patient_ids, {d.msg_id for d in acting if d.msg_id is not None}),
        tally=tally,
    )
    for decision in acting:
        if decision.patient_id not in ctx.patients:
            log.warning("decision for unknown patient %r ignored", decision.patient_id)
            continue
        if _was_applied(ctx, decision):
            continue
        if decision.kind is DecisionKind.BREACH:
            _breach(ctx, decision)
        elif decision.kind is DecisionKind.CLEAR:
            _clear(ctx, decision)
        else:
            _remeasure(ctx, decision)
    session.flush()
    return tally.result()


def _load_patients(session: Session, patient_ids: Sequence[str]) -> dict[str, Patient]:
    found: dict[str, Patient] = {}
    for chunk in _chunks(patient_ids):
        found.update((p.id, p) for p in session.scalars(select(Patient).where(Patient.id.in_(chunk))))
    return found


def _lock_open_alerts(session: Session, decisions: Sequence[Decision]) -> dict[tuple[str, str], Alert]:
    """The open alerts the decisions can change, locked: of their families, and cleared ones only for
    patients with a decision that acts on a cleared alert (a breach re-activates it, a remeasure or a
    confirmation annotates it; a plain CLEAR leaves it as it is).

    Not every open alert of the batch's patients: a region's cleared-but-unacknowledged no-data alerts
    (a family no reading decides) were loaded and locked in every batch, and the time rules, which
    hold those locks through their run, made each batch wait for it (bench: alert row p50 0.45 s at
    2,500 readings/s).
    """
    families = sorted({d.family.value for d in decisions})
    touch_cleared = {
        d.patient_id for d in decisions if d.kind is not DecisionKind.CLEAR or d.confirmation is not None
    }
    found: dict[tuple[str, str], Alert] = {}
    for chunk in _chunks(sorted({d.patient_id for d in decisions})):
        cleared_ok = [p for p in chunk if p in touch_cleared]
        # In id order, so that two processes lock overlapping sets in the same order.
        query = (
            select(Alert)
            .where(
                Alert.patient_id.in_(chunk),
                Alert.family.in_(families),
                Alert.closed_at.is_(None),
                or_(Alert.cleared_at.is_(None), Alert.patient_id.in_(cleared_ok)),
            )
            .order_by(Alert.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        found.update(((a.patient_id, a.family), a) for a in session.scalars(query))
    return found


def _applied(
    session: Session, patient_ids: Sequence[str], msg_ids: Iterable[str]
) -> set[tuple[str, str, str]]:
    applied: set[tuple[str, str, str]] = set()
    wanted = sorted(msg_ids)
    for chunk in _chunks(wanted):
        rows = session.execute(
            select(Alert.patient_id, Alert.family, AlertEvent.msg_id)
            .join(Alert, Alert.id == AlertEvent.alert_id)
            .where(AlertEvent.msg_id.in_(chunk), Alert.patient_id.in_(patient_ids))
        )
        applied.update((p, f, m) for p, f, m in rows if m is not None)
    return applied


def _was_applied(ctx: _Context, decision: Decision) -> bool:
    if decision.msg_id is None:
        return False
    return (decision.patient_id, decision.family.value, decision.msg_id) in ctx.applied


def _breach(ctx: _Context, d: Decision) -> None:
    key = (d.patient_id, d.family.value)
    alert = ctx.open_alerts.get(key)
    if alert is not None and alert.acknowledged and d.severity.rank > Severity(alert.severity).rank:
        # A doctor acknowledged the lesser episode; a more severe one needs its own acknowledgement.
        _close(ctx, alert, f"superseded by {d.rule.value} ({d.value_text})")
        alert = None
    if alert is None:
        alert, opened = _open(ctx, d)
        if opened:
            ctx.tally.opened.append(alert)
            _notify_new(ctx, alert, d, purpose_suffix="")
            return
        if d.msg_id is not None and (d.patient_id, d.family.value, d.msg_id) in _applied(
            ctx.session, [d.patient_id], [d.msg_id]
        ):
            return  # the other process applied this very reading
    _attach(ctx, alert, d)


def _open(ctx: _Context, d: Decision) -> tuple[Alert, bool]:
    """A new alert for the decision, or (when another process just opened one) theirs, locked."""
    alert = Alert(
        patient_id=d.patient_id,
        family=d.family.value,
        rule=d.rule.value,
        severity=d.severity.value,
        opened_at=ctx.now,
        first_measured_at=d.measured_at,
        last_measured_at=d.measured_at,
        reading_count=1 if d.msg_id is not None else 0,
        worst_value_text=d.value_text,
        worst_key=d.worst_key,
        last_value_text=d.value_text,
        late=d.late,
        threshold_version=ctx.versions.get(d.patient_id, "clinic"),
        escalation_level=0,
        # Set here, not by `_notify_new` after the insert: one UPDATE less in the alert's transaction.
        next_escalation_at=_escalation_starts(ctx, d),
    )
    _set_confirmation(alert, d)
    try:
        with ctx.session.begin_nested():
            ctx.session.add(alert)
            ctx.session.flush()
    except IntegrityError:
        existing = _lock_open_alert(ctx.session, d.patient_id, d.family.value)
        if existing is None:
            raise ConcurrentChange(
                f"the {d.family.value} alert of patient {d.patient_id!r} changed concurrently; try again"
            ) from None
        ctx.open_alerts[(d.patient_id, d.family.value)] = existing
        return existing, False
    ctx.open_alerts[(d.patient_id, d.family.value)] = alert
    detail = f"{d.rule.value} {d.value_text}; thresholds {alert.threshold_version}"
    if d.late:
        detail += "; late reading: nobody texted"
    if d.confirmation is not None:
        detail += f"; confirmation {d.confirmation.value}"
    _event(ctx, alert, "raised", d.msg_id, _join(detail, d.detail))
    return alert, True


def _lock_open_alert(session: Session, patient_id: str, family: str) -> Alert | None:
    return session.scalars(
        select(Alert)
        .where(Alert.patient_id == patient_id, Alert.family == family, Alert.closed_at.is_(None))
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()


def _attach(ctx: _Context, alert: Alert, d: Decision) -> None:
    if alert.cleared_at is not None:
        alert.cleared_at = None
        _event(ctx, alert, "reactivated", d.msg_id, f"{d.rule.value} {d.value_text}")
    upgrade = d.severity.rank > Severity(alert.severity).rank
    if upgrade:
        previous = alert.rule
        alert.rule = d.rule.value
        alert.severity = d.severity.value
        alert.threshold_version = ctx.versions.get(d.patient_id, "clinic")
        _event(
            ctx, alert, "upgraded", d.msg_id, _join(f"{previous} -> {d.rule.value} {d.value_text}", d.detail)
        )
        ctx.tally.upgraded.append(alert.id)
    else:
        _event(ctx, alert, "reading_attached", d.msg_id, _join(f"{d.rule.value} {d.value_text}", d.detail))
        ctx.tally.attached.append(alert.id)
    if d.msg_id is not None:
        alert.reading_count += 1
    if d.measured_at is not None:
        if alert.first_measured_at is None or d.measured_at < alert.first_measured_at:
            alert.first_measured_at = d.measured_at
        if alert.last_measured_at is None or d.measured_at >= alert.last_measured_at:
            alert.last_measured_at = d.measured_at
            alert.last_value_text = d.value_text
    if alert.worst_key is None or d.worst_key > alert.worst_key:
        alert.worst_key = d.worst_key
        alert.worst_value_text = d.value_text
    _annotate_confirmation(ctx, alert, d)
    if alert.late and not d.late:
        # A timely reading: the episode is happening now, so it is texted and paged as a new one.
        alert.late = False
        _notify_new(ctx, alert, d, purpose_suffix="")
    elif upgrade and not d.late:
        _notify_new(ctx, alert, d, purpose_suffix=f"_{d.severity.value}")


def _clear(ctx: _Context, d: Decision) -> None:
    alert = ctx.open_alerts.get((d.patient_id, d.family.value))
    if alert is None:
        return
    _annotate_confirmation(ctx, alert, d)
    if alert.cleared_at is not None:
        return
    alert.cleared_at = ctx.now
    _event(ctx, alert, "cleared", d.msg_id, f"{d.rule.value} {d.value_text}")
    ctx.tally.cleared.append(alert.id)
    if alert.acknowledged:
        _close(ctx, alert, "cleared and acknowledged")


def _remeasure(ctx: _Context, d: Decision) -> None:
    alert = ctx.open_alerts.get((d.patient_id, d.family.value))
    if alert is not None:
        _event(ctx, alert, "remeasure", d.msg_id, _join(f"{d.rule.value} {d.value_text}", d.detail))
    if d.late:
        return
    patient = ctx.patients[d.patient_id]
    # Keyed by the reading, not the alert: a redelivery after an alert opened must not text again.
    key = f"reading:{d.msg_id}:patient:remeasure"
    sent = enqueue(
        ctx.session,
        key=key,
        recipient_kind="patient",
        phone=patient.phone,
        template="remeasure_advice",
        language=patient.language,
        params={},
        critical=False,
        purpose="remeasure",
        patient_id=patient.id,
        alert_id=None if alert is None else alert.id,
        now=ctx.now,
    )
    if sent:
        ctx.tally.notifications += 1
        if alert is not None:
            _event(ctx, alert, "notified", None, f"{_PATIENT_NOTIFIED_PREFIX} remeasure_advice (remeasure)")


def _close(ctx: _Context, alert: Alert, why: str) -> None:
    alert.closed_at = ctx.now
    alert.next_escalation_at = None
    _event(ctx, alert, "closed", None, why)
    ctx.session.flush()  # before any new alert of the family: the partial unique index must see it closed
    ctx.open_alerts.pop((alert.patient_id, alert.family), None)


# --- confirmation --------------------------------------------------------------------------------


def _set_confirmation(alert: Alert, d: Decision) -> None:
    if d.confirmation is Confirmation.PENDING or d.confirmation is Confirmation.CONFIRMED:
        alert.confirmation = d.confirmation.value
        alert.confirmation_since = d.measured_at


def _annotate_confirmation(ctx: _Context, alert: Alert, d: Decision) -> None:
    """Severe-BP confirm-by-repeat: confirmed wins; a normal repeat refutes only a pending alert."""
    wanted = d.confirmation
    current = alert.confirmation
    if wanted is None or current == Confirmation.CONFIRMED.value:
        return
    if wanted is Confirmation.PENDING:
        # A later severe reading opens a new window: no_repeat is judged from the latest one.
        alert.confirmation = wanted.value
        if d.measured_at is not None and (
            alert.confirmation_since is None or d.measured_at > alert.confirmation_since
        ):
            alert.confirmation_since = d.measured_at
    elif wanted is Confirmation.CONFIRMED:
        alert.confirmation = wanted.value
        _event(ctx, alert, "confirmed", d.msg_id, d.value_text)
    elif wanted is Confirmation.NOT_CONFIRMED and current == Confirmation.PENDING.value:
        alert.confirmation = wanted.value
        _event(ctx, alert, "not_confirmed", d.msg_id, f"repeat {d.value_text}")


def expire_confirmation(session: Session, alert: Alert, *, now: datetime) -> bool:
    """Mark a pending severe-BP confirmation as no_repeat (the window ran out); False if not pending."""
    if alert.confirmation != Confirmation.PENDING.value:
        return False
    alert.confirmation = Confirmation.NO_REPEAT.value
    session.add(
        AlertEvent(alert_id=alert.id, at=now, kind="no_repeat", msg_id=None, detail="no repeat reading")
    )
    return True


# --- notifications -------------------------------------------------------------------------------


def _notify_new(ctx: _Context, alert: Alert, d: Decision, *, purpose_suffix: str) -> None:
    """Text the patient (critical/urgent rules with advice) and page staff (critical) about `alert`."""
    if d.late:
        return
    patient = ctx.patients[alert.patient_id]
    severity = d.severity
    template = ADVICE_TEMPLATES.get(d.rule)
    if template is not None and severity in (Severity.CRITICAL, Severity.URGENT):
        purpose = f"advice{purpose_suffix}"
        params = advice_params(d)
        if params is None:
            log.warning("alert %s: cannot read a value from %r for the advice text", alert.id, d.value_text)
        else:
            ctx.tally.notifications += _send_patient(
                ctx.session,
                alert,
                patient,
                template,
                params,
                purpose,
                critical=severity is Severity.CRITICAL,
                now=ctx.now,
            )
    if severity is not Severity.CRITICAL:
        return
    if alert.next_escalation_at is None and alert.escalation_level == 0:
        alert.next_escalation_at = _escalation_starts(ctx, d)
    purpose = f"alert{purpose_suffix}"
    doctor = responsible_doctor(ctx.session, patient.id)
    if doctor is not None:
        ctx.tally.notifications += _send_staff(
            ctx.session, alert, patient, doctor, "staff_alert", purpose, now=ctx.now
        )
        return
    oncall = oncall_now(ctx.session, ctx.now)
    why = "no care team" if patient.care_team_id is None else "no active responsible doctor in the care team"
    names = ", ".join(s.username for s in oncall) or "nobody"
    _event(ctx, alert, "notified", None, f"responsible doctor not paged: {why}; on call instead: {names}")
    for staff in oncall:
        ctx.tally.notifications += _send_staff(
            ctx.session, alert, patient, staff, "staff_alert", purpose, now=ctx.now
        )


def _escalation_starts(ctx: _Context, d: Decision) -> datetime | None:
    """When an unacknowledged alert of this decision is first escalated: critical ones only, not late."""
    if d.late or d.severity is not Severity.CRITICAL:
        return None
    return ctx.now + timedelta(minutes=ctx.settings.escalate_responsible_after_minutes)


def advice_params(d: Decision) -> dict[str, object] | None:
    """The numbers of a patient advice text, read from the decision's value text ("184/112 mmHg",
    "2.9 mmol/L", "LO"); None when there are none."""
    text = d.value_text.strip()
    if d.family in _GLUCOSE_FAMILIES:
        if text.upper() in ("LO", "HI"):
            return {"glucose": text.upper()}
        number = _NUMBER.search(text)
        return None if number is None else {"glucose": float(number.group())}
    match = _BP_VALUE.search(text)
    return None if match is None else {"systolic": int(match.group(1)), "diastolic": int(match.group(2))}


def _send_patient(
    session: Session,
    alert: Alert,
    patient: Patient,
    template: str,
    params: Mapping[str, object],
    purpose: str,
    *,
    critical: bool,
    now: datetime,
) -> int:
    sent = enqueue(
        session,
        key=f"alert:{alert.id}:patient:{purpose}",
        recipient_kind="patient",
        phone=patient.phone,
        template=template,
        language=patient.language,
        params=params,
        critical=critical,
        purpose=purpose,
        patient_id=patient.id,
        alert_id=alert.id,
        now=now,
    )
    return _notified(session, alert, sent, now, f"{_PATIENT_NOTIFIED_PREFIX} {template} ({purpose})")


def _send_staff(
    session: Session,
    alert: Alert,
    patient: Patient,
    staff: Staff,
    template: str,
    purpose: str,
    *,
    now: datetime,
    minutes: int | None = None,
) -> int:
    params: dict[str, object] = {
        "rule": alert.rule,
        "patient_id": patient.id,
        "value": alert.worst_value_text or alert.last_value_text,
        "time": (alert.last_measured_at or alert.opened_at).astimezone(_zone(patient.timezone)),
        "alert_id": alert.id,
    }
    if minutes is not None:
        params["minutes"] = minutes
    sent = enqueue(
        session,
        key=f"alert:{alert.id}:staff:{staff.id}:{purpose}",
        recipient_kind="staff",
        phone=staff.phone,
        template=template,
        language=staff.language,
        params=params,
        critical=alert.severity == Severity.CRITICAL.value,
        purpose=purpose,
        patient_id=patient.id,
        staff_id=staff.id,
        alert_id=alert.id,
        now=now,
    )
    return _notified(session, alert, sent, now, f"staff:{staff.username} {template} ({purpose})")


def _notified(session: Session, alert: Alert, enqueued: bool, now: datetime, detail: str) -> int:
    """Record a `notified` event for a text that was enqueued now (not for a duplicate key)."""
    if not enqueued:
        return 0
    session.add(AlertEvent(alert_id=alert.id, at=now, kind="notified", msg_id=None, detail=detail))
    return 1


def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# --- acknowledgement -----------------------------------------------------------------------------


def acknowledge(
    session: Session, alert_id: int, *, by_username: str, reason_code: str, note: str, now: datetime
) -> Acknowledgement:
    """Record that an active staff member saw the alert and what was done; stops its escalation.

    Closes the alert when it is cleared; texts the patient that a doctor saw it when the alert had
    texted them advice. Raises `UnknownAlert`, `AlreadyAcknowledged`, `InvalidInput` (reason code not
    one of REASON_CODES, empty note) or `UnknownStaff`.
    """
    if reason_code not in REASON_CODES:
        raise InvalidInput(f"invalid reason {reason_code!r}: use one of {', '.join(REASON_CODES)}")
    note = note.strip()
    if not note:
        raise InvalidInput("an acknowledgement needs a note saying what was done")
    alert = session.scalars(
        select(Alert).where(Alert.id == alert_id).with_for_update().execution_options(populate_existing=True)
    ).one_or_none()
    if alert is None:
        raise UnknownAlert(f"unknown alert {alert_id}")
    staff = get_staff(session, by_username, active=True)
    if alert.acknowledged_at is not None:
        raise AlreadyAcknowledged(
            f"alert {alert_id} was acknowledged by {alert.acknowledged_by} at {alert.acknowledged_at.isoformat()}"
        )
    ack = Acknowledgement(
        alert_id=alert.id,
        staff_id=staff.id,
        at=now,
        reason_code=reason_code,
        note=note,
        time_to_ack_seconds=max(0, int((now - alert.opened_at).total_seconds())),
    )
    try:
        with session.begin_nested():
            session.add(ack)
            session.flush()
    except IntegrityError as exc:
        raise AlreadyAcknowledged(f"alert {alert_id} was acknowledged by someone else just now") from exc
    alert.acknowledged_at = now
    alert.acknowledged_by = staff.username
    alert.next_escalation_at = None
    session.add(
        AlertEvent(
            alert_id=alert.id,
            at=now,
            kind="acknowledged",
            msg_id=None,
            detail=f"{staff.username}: {reason_code}: {note}",
        )
    )
    if alert.cleared_at is not None:
        alert.closed_at = now
        session.add(
            AlertEvent(
                alert_id=alert.id, at=now, kind="closed", msg_id=None, detail="cleared and acknowledged"
            )
        )
    if _patient_was_advised(session, alert.id):
        patient = session.get(Patient, alert.patient_id)
        if patient is not None:
            _send_patient(
                session, alert, patient, "seen_by_doctor", {}, "seen_by_doctor", critical=False, now=now
            )
    session.flush()
    return ack


def _patient_was_advised(session: Session, alert_id: int) -> bool:
    found = session.scalar(
        select(AlertEvent.id)
        .where(
            AlertEvent.alert_id == alert_id,
            AlertEvent.kind == "notified",
            AlertEvent.detail.startswith(_PATIENT_NOTIFIED_PREFIX),
            AlertEvent.detail.not_like("%(remeasure)%"),
        )
        .limit(1)
    )
    return found is not None


# --- escalation ----------------------------------------------------------------------------------


def escalate_due(session: Session, *, now: datetime, settings: AlertsSettings) -> int:
    """Escalate unacknowledged critical alerts whose time has come; returns how many steps were taken.

    Level 0 -> 1 (`escalate_responsible_after_minutes` after the alert became critical): the
    responsible doctor is texted again. Level 1 -> 2 (`escalate_oncall_after_minutes`): the doctors
    on call now are texted. Nobody to text is recorded as an event; the alert stays in the inbox.
    Two workers never take the same step: rows are locked (SKIP LOCKED) and keys are idempotent.
    """
    due = session.scalars(
        select(Alert)
        .where(
            Alert.next_escalation_at <= now,
            Alert.acknowledged_at.is_(None),
            Alert.closed_at.is_(None),
            Alert.late.is_(False),
            Alert.severity == Severity.CRITICAL.value,
        )
        .order_by(Alert.id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).all()
    steps = 0
    gap = timedelta(
        minutes=settings.escalate_oncall_after_minutes - settings.escalate_responsible_after_minutes
    )
    for alert in due:
        scheduled = alert.next_escalation_at
        if scheduled is None or scheduled > now:  # changed by someone else meanwhile
            continue
        patient = session.get(Patient, alert.patient_id)
        if patient is None:
            continue
        if alert.escalation_level == 0:
            doctor = responsible_doctor(session, patient.id)
            recipients = [] if doctor is None else [doctor]
            minutes = settings.escalate_responsible_after_minutes
            alert.escalation_level = 1
            alert.next_escalation_at = scheduled + gap
            nobody = "no responsible doctor to re-notify"
        else:
            recipients = oncall_now(session, now)
            minutes = settings.escalate_oncall_after_minutes
            alert.escalation_level = 2
            alert.next_escalation_at = None
            nobody = "no on-call doctor"
        level = alert.escalation_level
        names = ", ".join(s.username for s in recipients) or nobody
        session.add(
            AlertEvent(
                alert_id=alert.id, at=now, kind="escalated", msg_id=None, detail=f"level {level}: {names}"
            )
        )
        for staff in recipients:
            _send_staff(
                session,
                alert,
                patient,
                staff,
                "staff_escalation",
                f"escalation{level}",
                now=now,
                minutes=minutes,
            )
        steps += 1
    session.flush()
    return steps


# --- reading -------------------------------------------------------------------------------------


def get_alert(session: Session, alert_id: int) -> Alert:
    """The alert with this id; raises `UnknownAlert`."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise UnknownAlert(f"unknown alert {alert_id}")
    return alert


def list_alerts(
    session: Session,
    *,
    patient_id: str | None = None,
    state: AlertState = "open",
    team_ids: Sequence[int] | None = None,
    limit: int = 500,
) -> list[Alert]:
    """Alerts, most severe and newest first; `state="open"` leaves out closed ones.

    `team_ids`: only patients of these care teams (a doctor's own patients).
    """
    query = select(Alert)
    if state == "open":
        query = query.where(Alert.closed_at.is_(None))
    if patient_id is not None:
        query = query.where(Alert.patient_id == patient_id)
    if team_ids is not None:
        query = query.join(Patient, Patient.id == Alert.patient_id).where(Patient.care_team_id.in_(team_ids))
    rows = list(session.scalars(query.order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(limit)))
    rows.sort(key=lambda a: (a.closed_at is not None, -Severity(a.severity).rank))
    return rows


def alert_events(session: Session, alert_id: int) -> list[AlertEvent]:
    """The alert's history, oldest first; raises `UnknownAlert`."""
    get_alert(session, alert_id)
    return list(
        session.scalars(
            select(AlertEvent).where(AlertEvent.alert_id == alert_id).order_by(AlertEvent.at, AlertEvent.id)
        )
    )


def acknowledgement_of(session: Session, alert_id: int) -> Acknowledgement | None:
    """The alert's acknowledgement, if any."""
    return session.scalars(select(Acknowledgement).where(Acknowledgement.alert_id == alert_id)).one_or_none()


def rule_title(rule: str, language: str = "en") -> str:
    """A rule's name for people ("Severe blood pressure"); the id itself when unknown."""
    try:
        info = RULES[RuleId(rule)]
    except ValueError:
        return rule
    return info.title_ru if language == "ru" else info.title_en


# --- helpers -------------------------------------------------------------------------------------


def _event(ctx: _Context, alert: Alert, kind: str, msg_id: str | None, detail: str) -> None:
    ctx.session.add(AlertEvent(alert_id=alert.id, at=ctx.now, kind=kind, msg_id=msg_id, detail=detail))
    if msg_id is not None:
        ctx.applied.add((alert.patient_id, alert.family, msg_id))


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if second else first


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]
