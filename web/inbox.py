"""The alert inbox of a doctor or nurse, an alert's page, and acknowledgement (blueprint "alerts").

The inbox lists the open alerts of the staff member's own patients (their care teams): those waiting
for acknowledgement first, most severe and then oldest first; acknowledged alerts whose condition is
still active stay below, "in care", until they clear. The page asks for news every few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from flask import Blueprint, abort, flash, g, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from alerts import lifecycle
from alerts.errors import AlreadyAcknowledged, InvalidInput, UnknownAlert, UnknownStaff
from alerts.model import RULES, Family, RuleId, Severity
from alerts.tables import REASON_CODES, SEVERITIES, Acknowledgement, Alert, AlertEvent, Staff
from gateway.errors import StorageError
from rpmgw.models import Patient
from web import access
from web.context import commit, current_staff, db, deny, now, record, refused, requires, services
from web.paging import Paged, last_page, page_number
from web.patients import chart_context

inbox = Blueprint("alerts", __name__, url_prefix="/alerts")

STATES: Final = ("open", "unacknowledged", "in_care", "closed", "all")
_BP_FAMILIES: Final = {Family.BP_HIGH, Family.UNCONTROLLED_BP, Family.LOW_BP, Family.PULSE}
_GLUCOSE_FAMILIES: Final = {Family.HYPO, Family.HYPER, Family.REPEATED_HYPO}
# Rows per page of the inbox (and the API's default): a page a doctor can read, and quick to draw.
PAGE_SIZE: Final = 100


@dataclass(frozen=True, slots=True)
class InboxFilter:
    """What the inbox shows; empty means any."""

    severity: str = ""
    rule: str = ""
    patient: str = ""
    state: str = "open"

    @classmethod
    def from_args(cls) -> InboxFilter:
        """From the query string, ignoring values that are not offered."""
        severity = request.args.get("severity", "")
        rule = request.args.get("rule", "")
        state = request.args.get("state", "open")
        return cls(
            severity=severity if severity in SEVERITIES else "",
            rule=rule if rule in {r.value for r in RuleId} else "",
            patient=request.args.get("patient", "").strip()[:100],
            state=state if state in STATES else "open",
        )

    def query_args(self) -> dict[str, str]:
        """The non-empty filters, for links."""
        return {
            k: v
            for k, v in (
                ("severity", self.severity),
                ("rule", self.rule),
                ("patient", self.patient),
                ("state", self.state),
            )
            if v and not (k == "state" and v == "open")
        }


@dataclass(frozen=True, slots=True)
class InboxRow:
    """An alert with its patient, as one line of the inbox."""

    alert: Alert
    patient: Patient

    @property
    def waiting(self) -> timedelta:
        """How long it has waited for a person (since opened; for "in care" since acknowledged)."""
        return now() - self.alert.opened_at


@dataclass(frozen=True, slots=True)
class InboxPage(Paged):
    """One page of the alerts matching a filter, in inbox order, and how many match in all."""

    rows: list[InboxRow]
    total: int
    # Of `total`, those nobody acknowledged yet (they come first, before those "in care").
    unacknowledged: int
    page: int
    per_page: int


def _inbox_order() -> tuple[ColumnElement[Any], ...]:
    """Unacknowledged first, then most severe, then oldest (ORDER BY, so the database cuts the pages)."""
    acknowledged = case((Alert.acknowledged_at.is_(None), 0), else_=1)
    rank = case({s.value: -s.rank for s in Severity}, value=Alert.severity, else_=0)
    return acknowledged, rank, Alert.opened_at.asc(), Alert.id.asc()


def visible_alerts(
    session: Session, staff: Staff, where: InboxFilter, *, page: int = 1, per_page: int = PAGE_SIZE
) -> InboxPage:
    """One page of the alerts of the staff member's patients matching `where`, in inbox order.

    Sorted and cut in the database: a page past the last one gives the last page.
    """
    teams = access.team_ids(session, staff)
    conditions: list[ColumnElement[bool]] = [Patient.care_team_id.in_(teams)]
    if where.severity:
        conditions.append(Alert.severity == where.severity)
    if where.rule:
        conditions.append(Alert.rule == where.rule)
    if where.patient:
        # Matched here, not in SQL: SQLite's lower() and LIKE fold only ASCII, and names are Cyrillic.
        needle = where.patient.casefold()
        candidates = session.execute(
            select(Patient.id, Patient.display_name).where(Patient.care_team_id.in_(teams))
        ).tuples()
        conditions.append(
            Patient.id.in_(
                [pid for pid, name in candidates if needle in pid.casefold() or needle in name.casefold()]
            )
        )
    if where.state == "open":
        conditions.append(Alert.closed_at.is_(None))
    elif where.state == "unacknowledged":
        conditions.append(Alert.acknowledged_at.is_(None))
    elif where.state == "in_care":
        conditions.extend([Alert.closed_at.is_(None), Alert.acknowledged_at.is_not(None)])
    elif where.state == "closed":
        conditions.append(Alert.closed_at.is_not(None))
    total, unacknowledged = session.execute(
        select(func.count(), func.count(case((Alert.acknowledged_at.is_(None), 1))))
        .select_from(Alert)
        .join(Patient, Patient.id == Alert.patient_id)
        .where(*conditions)
    ).one()
    page = min(page, last_page(total, per_page))
    query = select(Alert, Patient).join(Patient, Patient.id == Alert.patient_id).where(*conditions)
    if where.state == "closed":
        query = query.order_by(Alert.closed_at.desc(), Alert.id.desc())
    else:
        query = query.order_by(*_inbox_order())
    found = session.execute(query.limit(per_page).offset((page - 1) * per_page)).tuples()
    return InboxPage(
        rows=[InboxRow(a, p) for a, p in found],
        total=total,
        unacknowledged=unacknowledged or 0,
        page=page,
        per_page=per_page,
    )


def severity_counts(session: Session, staff: Staff) -> dict[str, int]:
    """Open alerts of the staff member's patients waiting for acknowledgement, per severity.

    Asked once per request (the header and the inbox both show them).
    """
    cached: dict[str, int] | None = g.get("severity_counts")
    if cached is not None and g.get("severity_counts_of") == staff.id:
        return dict(cached)
    counts = dict.fromkeys(SEVERITIES, 0)
    found = session.execute(
        select(Alert.severity, func.count())
        .join(Patient, Patient.id == Alert.patient_id)
        .where(
            Patient.care_team_id.in_(access.team_ids(session, staff)),
            Alert.closed_at.is_(None),
            Alert.acknowledged_at.is_(None),
        )
        .group_by(Alert.severity)
    ).tuples()
    counts.update(dict(found.all()))
    g.severity_counts, g.severity_counts_of = counts, staff.id
    return dict(counts)


def _split(rows: Sequence[InboxRow], state: str) -> tuple[list[InboxRow], list[InboxRow]]:
    if state != "open":
        return list(rows), []
    return [r for r in rows if r.alert.acknowledged_at is None], [r for r in rows if r.alert.acknowledged_at]


def _rule_choices() -> list[tuple[str, str]]:
    return [(rule.value, rule_title(rule.value)) for rule in RULES]


def rule_title(rule: str) -> str:
    """The rule's name in the interface language."""
    from web.i18n import select_language

    return lifecycle.rule_title(rule, select_language())


def _inbox_context() -> dict[str, Any]:
    """What the inbox's tables show: the page asked for, split into waiting and in care."""
    staff = current_staff()
    where = InboxFilter.from_args()
    found = visible_alerts(db(), staff, where, page=page_number(request.args.get("page")))
    waiting, in_care = _split(found.rows, where.state)
    return {
        "where": where,
        "found": found,
        "waiting": waiting,
        "in_care": in_care,
        "counts": severity_counts(db(), staff),
        "rule_title": rule_title,
    }


@inbox.get("", endpoint="inbox")
@requires(*access.CLINICAL_ROLES)
def inbox_page() -> ResponseReturnValue:
    """The inbox, a page of `PAGE_SIZE` alerts at a time."""
    context = _inbox_context()
    found: InboxPage = context["found"]
    record(
        "view_inbox",
        detail=f"{len(found.rows)} alerts shown (page {found.page} of {found.pages}, {found.total} in all)",
    )
    return render_template(
        "inbox.html", rules=_rule_choices(), states=STATES, severities=SEVERITIES, **context
    )


@inbox.get("/live")
@requires(*access.CLINICAL_ROLES)
def live() -> ResponseReturnValue:
    """The inbox's tables and counts as JSON, for the page's polling (does not extend the session)."""
    context = _inbox_context()
    counts = context["counts"]
    html = render_template("_inbox_tables.html", **context)
    return jsonify(
        counts=counts,
        total=sum(counts.values()),
        html=html,
        ids=[r.alert.id for r in context["waiting"]],
        page=context["found"].page,
    )


def _alert_for(alert_id: int) -> Alert:
    staff = current_staff()
    try:
        alert = lifecycle.get_alert(db(), alert_id)
    except UnknownAlert:
        deny(object_type="alert", object_id=alert_id)
    if not access.can_see_alert(db(), staff, alert):
        deny(patient_id=alert.patient_id, object_type="alert", object_id=alert_id)
    return alert


def reading_type_of(family: str) -> str | None:
    """Which readings explain an alert of this family (None: both kinds)."""
    if family in _BP_FAMILIES:
        return "blood_pressure"
    if family in _GLUCOSE_FAMILIES:
        return "glucose"
    return None


@inbox.get("/<int:alert_id>")
@requires(*access.CLINICAL_ROLES)
def alert_page(alert_id: int) -> ResponseReturnValue:
    """One alert: what fired, its history, the patient's recent readings, and the acknowledgement."""
    return _render_alert(_alert_for(alert_id))


def _render_alert(alert: Alert, *, error: str = "", reason: str = "", note: str = "") -> ResponseReturnValue:
    patient = db().get(Patient, alert.patient_id)
    if patient is None:
        abort(404)
    events = list(
        db().scalars(
            select(AlertEvent).where(AlertEvent.alert_id == alert.id).order_by(AlertEvent.at, AlertEvent.id)
        )
    )
    ack = (
        db()
        .execute(
            select(Acknowledgement, Staff)
            .join(Staff, Staff.id == Acknowledgement.staff_id)
            .where(Acknowledgement.alert_id == alert.id)
        )
        .one_or_none()
    )
    record("view_alert", patient_id=patient.id, object_type="alert", object_id=alert.id)
    commit()  # before InfluxDB is asked: no database lock is held while it answers
    chart = _chart_for(patient, reading_type_of(alert.family))
    page = render_template(
        "alert.html",
        alert=alert,
        patient=patient,
        events=events,
        ack=ack,
        reasons=REASON_CODES,
        chart=chart,
        rule_title=rule_title,
        error=error,
        reason=reason,
        note=note,
    )
    return page, (400 if error else 200)


def _chart_for(patient: Patient, reading_type: str | None) -> dict[str, object]:
    try:
        return chart_context(patient, days=7, unit="mmol/L", only=reading_type)
    except StorageError as exc:
        return {"error": str(exc)}


@inbox.post("/<int:alert_id>/acknowledge")
@requires(*access.CLINICAL_ROLES)
def acknowledge(alert_id: int) -> ResponseReturnValue:
    """Acknowledge with a reason code and a note; the alert leaves the inbox (or stays "in care")."""
    alert = _alert_for(alert_id)
    staff = current_staff()
    reason = request.form.get("reason_code", "")
    note = request.form.get("note", "")
    try:
        ack = lifecycle.acknowledge(
            db(), alert.id, by_username=staff.username, reason_code=reason, note=note, now=now()
        )
    except InvalidInput:
        db().rollback()
        return _render_alert(
            alert, error=gettext("Choose what was done and write a note."), reason=reason, note=note
        )
    except AlreadyAcknowledged:
        db().rollback()
        return refused(
            gettext("Someone acknowledged this alert already."),
            url_for("alerts.alert_page", alert_id=alert_id),
            409,
        )
    except UnknownStaff:
        db().rollback()
        deny(patient_id=alert.patient_id, object_type="alert", object_id=alert_id)
    record(
        "acknowledge",
        patient_id=alert.patient_id,
        object_type="alert",
        object_id=alert.id,
        detail=f"{reason}; {ack.time_to_ack_seconds} s after opening",
    )
    commit()
    flash(gettext("Alert acknowledged."), "ok")
    return redirect(url_for("alerts.inbox"))


def poll_interval() -> int:
    """Seconds between the inbox's polls."""
    return services().settings.web.poll_seconds
