"""The population overview and the patient page (blueprint "patients").

The overview puts the patients who need attention first: an open critical alert, and as visibly a
patient who stopped measuring; sorted over the whole care team from the database, shown a page at a
time, with InfluxDB asked for the page's patients only. The patient page shows blood pressure and glucose charts with the
patient's own thresholds drawn as bands, the readings with their quality flags, adherence, time in
range, alert and SMS history, and the per-patient thresholds (a doctor changes them with a reason).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext, lazy_gettext
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from alerts import threshold_store
from alerts.errors import AlertsError
from alerts.model import Severity
from alerts.notify.tables import OutboxMessage
from alerts.tables import Alert, CareTeam, PatientActivity, Staff
from alerts.thresholds import Thresholds, ThresholdsError
from gateway.errors import StorageError
from gateway.timeseries.base import StoredReading
from rpmgw.models import Enrolment, Patient
from web import access, readings
from web.context import commit, current_staff, db, deny, now, record, refused, requires, services
from web.paging import Paged, last_page, page_number
from web.readings import GLUCOSE_UNITS, BpMean, GlucoseUnit

patients = Blueprint("patients", __name__, url_prefix="/patients")

PERIODS: Final = (7, 30, 90)
ADHERENCE_DAYS: Final = 30
SORTS: Final = ("attention", "patient", "alerts", "last", "adherence", "bp", "glucose")
# Orders that need every patient's readings from InfluxDB (the others come from the database).
_SORTS_BY_READINGS: Final = frozenset({"adherence", "bp", "glucose"})
# Patients per page of the overview: a page a doctor can read, and quick to draw.
PAGE_SIZE: Final = 100
_UNIT_ARGS: Final[Mapping[str, GlucoseUnit]] = {"mmol": "mmol/L", "mgdl": "mg/dL"}

# Every threshold a doctor can set for one patient, grouped as a doctor thinks of them.
THRESHOLD_GROUPS: Final = (
    (
        lazy_gettext("Blood pressure"),
        (
            "severe_sbp",
            "severe_dbp",
            "high_sbp",
            "high_dbp",
            "high_required",
            "high_of_last",
            "high_window_hours",
            "low_sbp",
            "low_dbp",
            "uncontrolled_sbp",
            "uncontrolled_dbp",
            "uncontrolled_days",
            "uncontrolled_min_readings",
            "confirm_window_min_minutes",
            "confirm_window_max_minutes",
        ),
    ),
    (
        lazy_gettext("Pulse"),
        ("pulse_urgent_low", "pulse_routine_low", "pulse_routine_high", "pulse_urgent_high"),
    ),
    (
        lazy_gettext("Glucose"),
        (
            "hypo_l2_mmol",
            "hypo_l1_mmol",
            "hyper_marked_mmol",
            "hyper_severe_mmol",
            "repeated_hypo_count",
            "repeated_hypo_days",
        ),
    ),
    (lazy_gettext("Measuring"), ("no_data_days_bp", "no_data_days_glucose", "device_silent_days")),
)
THRESHOLD_LABELS: Final = {
    "severe_sbp": lazy_gettext("Severe BP: systolic at or above (mmHg)"),
    "severe_dbp": lazy_gettext("Severe BP: diastolic at or above (mmHg)"),
    "high_sbp": lazy_gettext("High BP: systolic at or above (mmHg)"),
    "high_dbp": lazy_gettext("High BP: diastolic at or above (mmHg)"),
    "high_required": lazy_gettext("High BP: how many of the last readings must be high"),
    "high_of_last": lazy_gettext("High BP: how many last readings are looked at"),
    "high_window_hours": lazy_gettext("High BP: the last readings must lie within this many hours"),
    "uncontrolled_sbp": lazy_gettext("Uncontrolled BP: mean systolic at or above (mmHg)"),
    "uncontrolled_dbp": lazy_gettext("Uncontrolled BP: mean diastolic at or above (mmHg)"),
    "uncontrolled_days": lazy_gettext("Uncontrolled BP: days the mean is taken over"),
    "uncontrolled_min_readings": lazy_gettext("Uncontrolled BP: fewest readings for a mean to count"),
    "low_sbp": lazy_gettext("Low BP: systolic below (mmHg)"),
    "low_dbp": lazy_gettext("Low BP: diastolic below (mmHg)"),
    "pulse_urgent_low": lazy_gettext("Pulse: urgent below (bpm)"),
    "pulse_urgent_high": lazy_gettext("Pulse: urgent above (bpm)"),
    "pulse_routine_low": lazy_gettext("Pulse: routine below (bpm)"),
    "pulse_routine_high": lazy_gettext("Pulse: routine above (bpm)"),
    "hypo_l2_mmol": lazy_gettext("Level 2 hypoglycaemia: glucose below (mmol/L)"),
    "hypo_l1_mmol": lazy_gettext("Level 1 hypoglycaemia: glucose below (mmol/L)"),
    "hyper_marked_mmol": lazy_gettext("Marked hyperglycaemia: glucose above (mmol/L)"),
    "hyper_severe_mmol": lazy_gettext("Severe hyperglycaemia: glucose at or above (mmol/L)"),
    "repeated_hypo_count": lazy_gettext("Repeated hypoglycaemia: this many readings below level 1"),
    "repeated_hypo_days": lazy_gettext("Repeated hypoglycaemia: within this many days"),
    "confirm_window_min_minutes": lazy_gettext("Severe BP: a repeat counts from this many minutes after"),
    "confirm_window_max_minutes": lazy_gettext("Severe BP: a repeat counts up to this many minutes after"),
    "no_data_days_bp": lazy_gettext("No BP reading for this many days: reminder (alert after twice that)"),
    "no_data_days_glucose": lazy_gettext(
        "No glucose reading for this many days: reminder (alert after twice that)"
    ),
    "device_silent_days": lazy_gettext("An enrolled device silent for this many days: alert"),
}


# --- population overview -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PatientStatus:
    """One line of the population overview.

    The database gives every patient of the team their open alerts and last reading (`team_status`);
    InfluxDB adds adherence and the 7-day means, and a reading the database has not noted yet
    (`with_readings`), for the patients shown.
    """

    patient_id: str
    display_name: str
    open_alerts: int
    unacknowledged: int
    top_severity: str | None
    last_reading: datetime | None
    silent: bool
    adherence: int | None = None
    bp7: BpMean | None = None
    glucose7: float | None = None

    @property
    def attention(self) -> int:
        """Bigger needs a person sooner: a critical alert; then urgent or stopped measuring; then routine."""
        rank = Severity(self.top_severity).rank if self.top_severity else 0
        if self.silent:
            rank = max(rank, Severity.URGENT.rank)
        return rank


@dataclass(frozen=True, slots=True)
class PopulationPage(Paged):
    """One page of the staff member's patients in the order asked for, sorted over all of them."""

    rows: list[PatientStatus]
    total: int
    page: int
    per_page: int


def _sort_key(sort: str, now_: datetime) -> Any:
    oldest = now_ - timedelta(days=10_000)

    def key(s: PatientStatus) -> Any:
        last = s.last_reading or oldest
        if sort == "patient":
            return (s.display_name.lower(), s.patient_id)
        if sort == "alerts":
            return (-s.unacknowledged, -s.open_alerts, last)
        if sort == "last":
            return (last, s.patient_id)
        if sort == "adherence":
            return (s.adherence if s.adherence is not None else -1, last)
        if sort == "bp":
            return (-(s.bp7.systolic if s.bp7 else -1), -(s.bp7.diastolic if s.bp7 else -1))
        if sort == "glucose":
            return (-(s.glucose7 if s.glucose7 is not None else -1), s.patient_id)
        return (-s.attention, -s.unacknowledged, last, s.patient_id)

    return key


def _silent_after() -> timedelta:
    clinic = services().clinic
    return timedelta(days=max(clinic.no_data_days_bp, clinic.no_data_days_glucose))


def team_status(session: Session, staff: Staff, *, now_: datetime) -> list[PatientStatus]:
    """Every patient the staff member may see, by id, with open alerts and last reading.

    Counted in the database (GROUP BY): open alerts, those waiting for acknowledgement and the most
    severe of these; the last reading is the newest of the patient's `patient_activity` rows, which
    the gateway keeps at most a minute behind InfluxDB. Adherence and means are left empty.
    """
    if not access.sees_clinical_data(staff):
        return []
    teams = access.team_ids(session, staff)
    mine = Patient.care_team_id.in_(teams)
    waiting = Alert.acknowledged_at.is_(None)
    rank = case({s.value: s.rank for s in Severity}, value=Alert.severity, else_=0)
    # Three plain queries merged here: joined as subqueries, PostgreSQL without statistics yet (just
    # after a bulk load) rescanned the alerts' aggregate once per patient (a second, not milliseconds).
    alerts_ = {
        patient_id: (open_, unacknowledged, top)
        for patient_id, open_, unacknowledged, top in session.execute(
            select(
                Alert.patient_id,
                func.count(),
                func.count(case((waiting, 1))),
                func.max(case((waiting, rank), else_=0)),
            )
            .join(Patient, Patient.id == Alert.patient_id)
            .where(mine, Alert.closed_at.is_(None))
            .group_by(Alert.patient_id)
        ).tuples()
    }
    activity = dict(
        session.execute(
            select(PatientActivity.patient_id, func.max(PatientActivity.last_measured_at))
            .join(Patient, Patient.id == PatientActivity.patient_id)
            .where(mine)
            .group_by(PatientActivity.patient_id)
        )
        .tuples()
        .all()
    )
    found = session.execute(select(Patient.id, Patient.display_name).where(mine).order_by(Patient.id))
    severities = {s.rank: s.value for s in Severity}
    silent_after = _silent_after()
    result = []
    for patient_id, name in found.tuples():
        open_, unacknowledged, top = alerts_.get(patient_id, (0, 0, 0))
        last = activity.get(patient_id)
        result.append(
            PatientStatus(
                patient_id=patient_id,
                display_name=name,
                open_alerts=open_,
                unacknowledged=unacknowledged or 0,
                top_severity=severities.get(top or 0),
                last_reading=last,
                silent=last is None or now_ - last >= silent_after,
            )
        )
    return result


def with_readings(
    statuses: Sequence[PatientStatus],
    recent: Mapping[str, Sequence[StoredReading]] | None,
    *,
    now_: datetime,
) -> list[PatientStatus]:
    """The statuses with adherence and 7-day means from `recent`, the last 30 days of readings (None:
    InfluxDB unavailable); a reading newer than the database's last one moves the last reading."""
    if recent is None:
        return list(statuses)
    zone = ZoneInfo(services().settings.timezone)
    week_ago = now_ - timedelta(days=7)
    silent_after = _silent_after()
    result = []
    for status in statuses:
        mine = list(recent.get(status.patient_id, []))
        last = status.last_reading
        newest = readings.last_measured(mine) if mine else None
        if newest is not None and (last is None or newest > last):
            last = newest
        result.append(
            replace(
                status,
                last_reading=last,
                silent=last is None or now_ - last >= silent_after,
                adherence=readings.adherence_days(mine, now=now_, zone=zone),
                bp7=readings.bp_mean(mine, since=week_ago),
                glucose7=readings.glucose_mean(mine, since=week_ago),
            )
        )
    return result


def _recent(patient_ids: Sequence[str]) -> tuple[dict[str, list[StoredReading]] | None, str | None]:
    """The last 30 days of readings of these patients, or None and why InfluxDB did not give them."""
    if not patient_ids:
        return {}, None
    try:
        return services().store().recent(patient_ids, now() - timedelta(days=ADHERENCE_DAYS)), None
    except StorageError as exc:
        return None, str(exc)


@patients.get("", endpoint="overview")
@requires(*access.CLINICAL_ROLES)
def overview() -> ResponseReturnValue:
    """The staff member's patients with their status, sorted over all of them, `PAGE_SIZE` a page.

    The order needs InfluxDB for the whole team only when it is by adherence or a 7-day mean;
    otherwise the database orders and InfluxDB is asked for the page's patients.
    """
    sort = request.args.get("sort", "attention")
    sort = sort if sort in SORTS else "attention"
    reverse = request.args.get("dir") == "desc"
    now_ = now()
    team = team_status(db(), current_staff(), now_=now_)
    total = len(team)
    pages = last_page(total, PAGE_SIZE)
    page = min(page_number(request.args.get("page")), pages)
    cut = slice((page - 1) * PAGE_SIZE, page * PAGE_SIZE)
    record(
        "view_population",
        detail=f"{len(range(total)[cut])} patients shown (page {page} of {pages}, {total} in all)",
    )
    commit()  # before InfluxDB is asked: no database lock is held while it answers
    key = _sort_key(sort, now_)
    if sort in _SORTS_BY_READINGS:
        recent, store_error = _recent([s.patient_id for s in team])
        rows = sorted(with_readings(team, recent, now_=now_), key=key, reverse=reverse)[cut]
    else:
        shown = sorted(team, key=key, reverse=reverse)[cut]
        recent, store_error = _recent([s.patient_id for s in shown])
        rows = with_readings(shown, recent, now_=now_)
    return render_template(
        "population.html",
        found=PopulationPage(rows=rows, total=total, page=page, per_page=PAGE_SIZE),
        sort=sort,
        reverse=reverse,
        sort_args={"sort": None if sort == "attention" else sort, "dir": "desc" if reverse else None},
        store_error=store_error,
        adherence_reference=readings.ADHERENCE_REFERENCE,
    )


# --- the patient page ----------------------------------------------------------------------------


def _patient_for(patient_id: str) -> Patient:
    staff = current_staff()
    if not access.can_see_patient(db(), staff, patient_id):
        deny(patient_id=patient_id, object_type="patient", object_id=patient_id)
    patient = db().get(Patient, patient_id)
    if patient is None:
        abort(404)
    return patient


def _unit() -> GlucoseUnit:
    return _UNIT_ARGS.get(request.args.get("unit", ""), "mmol/L")


def _days() -> int:
    days = request.args.get("days", type=int) or 7
    return days if days in PERIODS else 7


def chart_thresholds(thresholds: Thresholds, unit: GlucoseUnit) -> dict[str, float]:
    """The numbers the charts draw as bands, glucose in `unit`."""
    g = readings.glucose_in
    return {
        "severe_sbp": thresholds.severe_sbp,
        "severe_dbp": thresholds.severe_dbp,
        "high_sbp": thresholds.high_sbp,
        "high_dbp": thresholds.high_dbp,
        "low_sbp": thresholds.low_sbp,
        "low_dbp": thresholds.low_dbp,
        "hypo_l2": g(thresholds.hypo_l2_mmol, unit),
        "hypo_l1": g(thresholds.hypo_l1_mmol, unit),
        "target_high": g(readings.TIR_HIGH, unit),
        "hyper_marked": g(thresholds.hyper_marked_mmol, unit),
        "hyper_severe": g(thresholds.hyper_severe_mmol, unit),
    }


def chart_context(
    patient: Patient,
    *,
    days: int,
    unit: GlucoseUnit,
    only: str | None = None,
    stored: Sequence[StoredReading] | None = None,
) -> dict[str, Any]:
    """What the chart script needs (JSON-ready): series, threshold bands, the period and labels.

    Reads the patient's thresholds, commits (releasing the database), then asks InfluxDB unless the
    readings are given. Raises StorageError when InfluxDB does not answer.
    """
    thresholds, label = threshold_store.thresholds_for(db(), [patient.id], services().clinic)[patient.id]
    commit()
    end = now()
    start = end - timedelta(days=days)
    if stored is None:
        stored = services().store().readings(patient.id, start, end + timedelta(minutes=10))
    shown = [r for r in stored if r.reading.measured_at >= start]
    series = readings.chart_series(shown, unit)
    if only == "blood_pressure":
        series["glucose"] = []
    elif only == "glucose":
        series["bp"] = []
    return {
        "series": series,
        "thresholds": chart_thresholds(thresholds, unit),
        "threshold_label": label,
        "start": int(start.timestamp() * 1000),
        "end": int(end.timestamp() * 1000),
        "unit": unit,
        "timezone": services().settings.timezone,
        "labels": {
            "systolic": gettext("Systolic"),
            "diastolic": gettext("Diastolic"),
            "pulse": gettext("Pulse"),
            "glucose": gettext("Glucose"),
            "flagged": gettext("needs re-measurement"),
        },
    }


@patients.get("/<patient_id>")
@requires(*access.CLINICAL_ROLES)
def patient_page(patient_id: str) -> ResponseReturnValue:
    """Charts, readings, adherence, time in range, alert and SMS history, thresholds."""
    patient = _patient_for(patient_id)
    staff = current_staff()
    days, unit = _days(), _unit()
    team = db().get(CareTeam, patient.care_team_id) if patient.care_team_id is not None else None
    devices = list(
        db().scalars(
            select(Enrolment)
            .where(Enrolment.patient_id == patient.id)
            .order_by(Enrolment.valid_to.is_(None).desc(), Enrolment.valid_from.desc())
        )
    )
    alert_history = list(
        db().scalars(
            select(Alert).where(Alert.patient_id == patient.id).order_by(Alert.opened_at.desc()).limit(100)
        )
    )
    texts = list(
        db().scalars(
            select(OutboxMessage)
            .where(OutboxMessage.patient_id == patient.id)
            .order_by(OutboxMessage.created_at.desc())
            .limit(100)
        )
    )
    overrides = threshold_store.current_overrides(db(), patient.id)
    versions = list(reversed(threshold_store.history(db(), patient.id)))
    can_edit = access.can_change_thresholds(db(), staff, patient.id)
    record(
        "view_patient",
        patient_id=patient.id,
        object_type="patient",
        object_id=patient.id,
        detail=f"{days} days",
    )
    commit()

    store_error = None
    stored: list[StoredReading] = []
    end = now()
    try:
        stored = (
            services()
            .store()
            .readings(
                patient.id, end - timedelta(days=max(days, ADHERENCE_DAYS)), end + timedelta(minutes=10)
            )
        )
    except StorageError as exc:
        store_error = str(exc)
    chart = chart_context(patient, days=days, unit=unit, stored=stored)
    period = [r for r in stored if r.reading.measured_at >= end - timedelta(days=days)]
    month = [r for r in stored if r.reading.measured_at >= end - timedelta(days=ADHERENCE_DAYS)]
    zone = ZoneInfo(services().settings.timezone)
    clinic = services().clinic
    return render_template(
        "patient.html",
        patient=patient,
        team=team,
        devices=devices,
        days=days,
        periods=PERIODS,
        unit=unit,
        unit_arg="mgdl" if unit == "mg/dL" else "mmol",
        units=GLUCOSE_UNITS,
        chart=chart,
        store_error=store_error,
        rows=readings.rows(period, unit),
        adherence=readings.adherence_days(month, now=end, zone=zone),
        adherence_days=ADHERENCE_DAYS,
        adherence_reference=readings.ADHERENCE_REFERENCE,
        tir=readings.time_in_range(period),
        bp7=readings.bp_mean(stored, since=end - timedelta(days=7)),
        glucose7=readings.glucose_mean(stored, since=end - timedelta(days=7)),
        alert_history=alert_history,
        texts=texts,
        overrides=overrides,
        versions=versions,
        clinic=clinic,
        groups=THRESHOLD_GROUPS,
        labels=THRESHOLD_LABELS,
        can_edit=can_edit,
        has_bp=bool(chart["series"]["bp"]) or any(d.device.kind == "blood_pressure" for d in devices),
        has_glucose=bool(chart["series"]["glucose"]) or any(d.device.kind == "glucose" for d in devices),
    )


def parse_overrides(form: Mapping[str, str]) -> dict[str, int | float]:
    """The threshold fields filled in on the form ("t_<name>"), as numbers of the field's type.

    An empty field means "the clinic's value". Raises ValueError naming the field for a non-number.
    """
    overrides: dict[str, int | float] = {}
    for name, field in Thresholds.model_fields.items():
        raw = form.get(f"t_{name}", "").strip().replace(",", ".")
        if not raw:
            continue
        try:
            value: int | float = int(raw) if field.annotation is int else float(raw)
        except ValueError:
            raise ValueError(f"{name}: {raw!r} is not a number") from None
        overrides[name] = value
    return overrides


@patients.post("/<patient_id>/thresholds")
@requires("doctor")
def change_thresholds(patient_id: str) -> ResponseReturnValue:
    """Store a new version of the patient's thresholds (a doctor of the patient's care team, with a reason)."""
    patient = _patient_for(patient_id)
    staff = current_staff()
    if not access.can_change_thresholds(db(), staff, patient.id):
        deny(patient_id=patient.id, object_type="thresholds", object_id=patient.id)
    reason = request.form.get("reason", "").strip()
    target = url_for("patients.patient_page", patient_id=patient.id) + "#thresholds"
    if not reason:
        return refused(gettext("A threshold change needs a reason."), target)
    try:
        overrides = parse_overrides(request.form)
        version = threshold_store.set_patient_thresholds(
            db(),
            patient.id,
            overrides,
            by_username=staff.username,
            reason=reason,
            now=now(),
            clinic=services().clinic,
        )
    except (ValueError, ThresholdsError, AlertsError) as exc:
        db().rollback()
        return refused(gettext("Thresholds not changed: %(why)s", why=str(exc)), target)
    record(
        "change_thresholds",
        patient_id=patient.id,
        object_type="thresholds",
        object_id=f"v{version}",
        detail=f"{reason} | {overrides}",
    )
    commit()
    flash(gettext("Thresholds saved as version %(v)d.", v=version), "ok")
    return redirect(target)
