"""The JSON API under /api/v1: alerts, acknowledgement, patients and their readings.

Authentication: a Bearer token (created on the account page) or the browser's login session (then
state-changing calls carry the X-CSRFToken header). The access rules are the pages' rules
(web.access), and every call is audited the same way. The contract is `openapi.json` (web.openapi).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from flask import Blueprint, Response, abort, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from alerts import lifecycle
from alerts.errors import AlreadyAcknowledged, InvalidInput, UnknownAlert, UnknownStaff
from alerts.tables import Alert
from gateway.errors import StorageError
from gateway.timeseries.base import StoredReading
from gateway.wire import BloodPressureReading
from rpmgw.models import Patient
from web import access
from web.context import commit, current_staff, db, deny, now, record, requires, services
from web.inbox import InboxFilter, visible_alerts
from web.openapi import SPEC
from web.paging import page_number

api = Blueprint("api", __name__, url_prefix="/api/v1")

MAX_RANGE: Final = timedelta(days=92)
# Alerts per page of GET /alerts: by default (and at most) 500, as many as the list held before pages.
MAX_PER_PAGE: Final = 500


def alert_json(alert: Alert, patient: Patient | None = None) -> dict[str, Any]:
    """An alert as the API shows it (times in UTC, RFC 3339)."""
    body: dict[str, Any] = {
        "id": alert.id,
        "patient_id": alert.patient_id,
        "rule": alert.rule,
        "family": alert.family,
        "severity": alert.severity,
        "state": alert.state,
        "active": alert.active,
        "acknowledged": alert.acknowledged,
        "opened_at": _iso(alert.opened_at),
        "first_measured_at": _iso(alert.first_measured_at),
        "last_measured_at": _iso(alert.last_measured_at),
        "reading_count": alert.reading_count,
        "worst_value": alert.worst_value_text,
        "last_value": alert.last_value_text,
        "confirmation": alert.confirmation,
        "threshold_version": alert.threshold_version,
        "cleared_at": _iso(alert.cleared_at),
        "acknowledged_at": _iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "closed_at": _iso(alert.closed_at),
    }
    if patient is not None:
        body["patient_name"] = patient.display_name
    return body


def reading_json(stored: StoredReading) -> dict[str, Any]:
    """A stored reading as the API shows it (glucose in mmol/L and as sent)."""
    reading = stored.reading
    body: dict[str, Any] = {
        "msg_id": reading.msg_id,
        "device_id": reading.device_id,
        "type": reading.type,
        "measured_at": _iso(reading.measured_at),
        "quality": list(stored.quality),
    }
    if isinstance(reading, BloodPressureReading):
        body.update(systolic=reading.systolic, diastolic=reading.diastolic, pulse=reading.pulse)
    else:
        body.update(
            value=reading.value,
            unit=reading.unit,
            value_mmol=None if reading.value_mmol is None else round(reading.value_mmol, 2),
            censored=reading.censored,
            meal=reading.meal,
        )
    return body


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _error(status: int, message: str) -> ResponseReturnValue:
    return jsonify(error=message), status


def _bad_request(message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = 400
    return response


@api.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """The API's OpenAPI 3.1 document."""
    return jsonify(SPEC)


@api.get("/docs")
def docs() -> ResponseReturnValue:
    """The API described for people (rendered from the OpenAPI document)."""
    return render_template("api_docs.html", spec=SPEC)


@api.get("/alerts")
@requires(*access.CLINICAL_ROLES)
def alerts_list() -> ResponseReturnValue:
    """The caller's patients' alerts, in inbox order; same filters as the inbox, a page at a time."""
    per_page = min(page_number(request.args.get("per_page", str(MAX_PER_PAGE))), MAX_PER_PAGE)
    found = visible_alerts(
        db(),
        current_staff(),
        InboxFilter.from_args(),
        page=page_number(request.args.get("page")),
        per_page=per_page,
    )
    record("view_inbox", detail=f"api: {len(found.rows)} alerts (page {found.page} of {found.pages})")
    return jsonify(
        alerts=[alert_json(r.alert, r.patient) for r in found.rows],
        total=found.total,
        page=found.page,
        per_page=found.per_page,
        pages=found.pages,
        next_page=found.next_page,
    )


def _alert(alert_id: int) -> Alert:
    try:
        alert = lifecycle.get_alert(db(), alert_id)
    except UnknownAlert:
        deny(object_type="alert", object_id=alert_id)
    if not access.can_see_alert(db(), current_staff(), alert):
        deny(patient_id=alert.patient_id, object_type="alert", object_id=alert_id)
    return alert


@api.get("/alerts/<int:alert_id>")
@requires(*access.CLINICAL_ROLES)
def alert_detail(alert_id: int) -> ResponseReturnValue:
    """One alert with its events and acknowledgement."""
    alert = _alert(alert_id)
    events = lifecycle.alert_events(db(), alert.id)
    ack = lifecycle.acknowledgement_of(db(), alert.id)
    record("view_alert", patient_id=alert.patient_id, object_type="alert", object_id=alert.id, detail="api")
    body = alert_json(alert, db().get(Patient, alert.patient_id))
    body["events"] = [{"at": _iso(e.at), "kind": e.kind, "detail": e.detail} for e in events]
    body["acknowledgement"] = (
        None
        if ack is None
        else {
            "at": _iso(ack.at),
            "by": alert.acknowledged_by,
            "reason_code": ack.reason_code,
            "note": ack.note,
            "time_to_ack_seconds": ack.time_to_ack_seconds,
        }
    )
    return jsonify(body)


@api.post("/alerts/<int:alert_id>/acknowledge")
@requires(*access.CLINICAL_ROLES)
def acknowledge(alert_id: int) -> ResponseReturnValue:
    """Acknowledge: JSON {"reason_code": ..., "note": ...}."""
    alert = _alert(alert_id)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _error(400, 'send a JSON object {"reason_code": ..., "note": ...}')
    reason, note = body.get("reason_code"), body.get("note")
    if not isinstance(reason, str) or not isinstance(note, str):
        return _error(400, "reason_code and note must be strings")
    staff = current_staff()
    try:
        ack = lifecycle.acknowledge(
            db(), alert.id, by_username=staff.username, reason_code=reason, note=note, now=now()
        )
    except InvalidInput as exc:
        db().rollback()
        return _error(400, str(exc))
    except AlreadyAcknowledged as exc:
        db().rollback()
        return _error(409, str(exc))
    except UnknownStaff:
        db().rollback()
        deny(patient_id=alert.patient_id, object_type="alert", object_id=alert_id)
    record(
        "acknowledge",
        patient_id=alert.patient_id,
        object_type="alert",
        object_id=alert.id,
        detail=f"api: {reason}; {ack.time_to_ack_seconds} s after opening",
    )
    commit()
    return jsonify(alert_json(alert)), 200


@api.get("/patients")
@requires(*access.CLINICAL_ROLES)
def patients_list() -> ResponseReturnValue:
    """The caller's patients."""
    mine = list(db().scalars(access.patients_query(db(), current_staff()).order_by(Patient.id)))
    record("view_population", detail=f"api: {len(mine)} patients")
    return jsonify(
        patients=[
            {"id": p.id, "name": p.display_name, "language": p.language, "timezone": p.timezone} for p in mine
        ]
    )


def _time_arg(name: str) -> datetime | None:
    text = request.args.get(name)
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        abort(_bad_request(f"{name}: {text!r} is not an RFC 3339 time like 2026-11-28T08:15:00+05:00"))
    if value.tzinfo is None:
        abort(_bad_request(f"{name}: {text!r} has no time zone"))
    return value


@api.get("/patients/<patient_id>/readings")
@requires(*access.CLINICAL_ROLES)
def patient_readings(patient_id: str) -> ResponseReturnValue:
    """A patient's readings in [start, end) (default: the last 7 days), optionally of one type."""
    if not access.can_see_patient(db(), current_staff(), patient_id):
        deny(patient_id=patient_id, object_type="patient", object_id=patient_id)
    reading_type = request.args.get("type") or None
    if reading_type not in (None, "blood_pressure", "glucose"):
        return _error(400, "type must be blood_pressure or glucose")
    end = _time_arg("end") or now()
    start = _time_arg("start") or end - timedelta(days=7)
    if not start < end or end - start > MAX_RANGE:
        return _error(400, f"start must be before end, at most {MAX_RANGE.days} days apart")
    record("view_readings", patient_id=patient_id, object_type="patient", object_id=patient_id, detail="api")
    commit()
    try:
        found = services().store().readings(patient_id, start, end, reading_type)  # type: ignore[arg-type]
    except StorageError as exc:
        return _error(503, f"readings are unavailable: {exc}")
    return jsonify(
        patient_id=patient_id, start=_iso(start), end=_iso(end), readings=[reading_json(r) for r in found]
    )
