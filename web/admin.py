"""Administration (role admin): staff and care teams, patients, devices and enrolments, quarantine, audit.

An administrator registers people and devices and reads the audit log; they see no readings or alerts.
Every change is audited in the same transaction; enrolment history is never rewritten (rpmgw.admin).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext
from sqlalchemy import select

from alerts import staff as staff_admin
from alerts.errors import AlertsError
from alerts.tables import STAFF_ROLES, CareTeam
from gateway.errors import StorageError
from gateway.quarantine import Quarantine
from rpmgw import admin as registry
from rpmgw.errors import RpmgwError
from rpmgw.models import DEVICE_KINDS
from web import accounts, audit
from web.audit import AuditFilter
from web.context import commit, db, now, record, refused, requires, services
from web.i18n import LANGUAGES
from web.tables import StaffCredential

admin = Blueprint("admin", __name__, url_prefix="/admin")

AUDIT_PAGE: Final = 100
QUARANTINE_PAGE: Final = 200


def _attempt(action: Callable[[], str], success: str, target: str) -> ResponseReturnValue:
    """Run an administrative change; its error message (ours, meant for people) is shown on failure."""
    try:
        detail = action()
    except RpmgwError as exc:
        db().rollback()
        return refused(str(exc), target)
    commit()
    flash(success + (f": {detail}" if detail else ""), "ok")
    return redirect(target)


@admin.get("", endpoint="index")
@requires("admin")
def index() -> ResponseReturnValue:
    """What is in the registry, and whether readings arrive."""
    counts = registry.database_counts(db())
    staff_count = len(staff_admin.list_staff(db()))
    record("view_admin", object_type="page", object_id="index")
    commit()
    quarantine = sorted(Quarantine(services().sessions).counts_by_reason().items())
    summary, store_error = None, None
    try:
        summary = services().store().summary()
    except StorageError as exc:
        store_error = str(exc)
    return render_template(
        "admin/index.html",
        counts=counts,
        staff_count=staff_count,
        quarantine=quarantine,
        summary=summary,
        store_error=store_error,
    )


# --- staff ---------------------------------------------------------------------------------------


@admin.get("/staff")
@requires("admin")
def staff_list() -> ResponseReturnValue:
    """Staff accounts with their teams and whether they can log in."""
    members = staff_admin.list_staff(db())
    with_password = set(db().scalars(select(StaffCredential.staff_id)))
    teams = staff_admin.list_care_teams(db())
    teams_of: dict[str, list[str]] = {}
    for team in teams:
        for member in team.members:
            teams_of.setdefault(member.username, []).append(team.name)
    record("view_admin", object_type="page", object_id="staff")
    return render_template(
        "admin/staff.html",
        members=members,
        with_password=with_password,
        teams_of=teams_of,
        teams=teams,
        roles=STAFF_ROLES,
        languages=LANGUAGES,
        min_password=accounts.MIN_PASSWORD_LENGTH,
    )


@admin.post("/staff")
@requires("admin")
def add_staff() -> ResponseReturnValue:
    """Create a staff account with a first password (and a care team)."""
    form = request.form

    def act() -> str:
        member = staff_admin.add_staff(
            db(),
            username=form.get("username", ""),
            display_name=form.get("display_name", ""),
            phone=form.get("phone", ""),
            role=form.get("role", ""),
            language=form.get("language", "ru"),
        )
        accounts.set_password(db(), member, form.get("password", ""), now=now())
        team = form.get("team", "")
        if team:
            staff_admin.add_member(db(), team, member.username)
        record(
            "add_staff",
            object_type="staff",
            object_id=member.username,
            detail=f"{member.role} {team}".strip(),
        )
        return member.username

    return _attempt(act, gettext("Staff member added"), url_for("admin.staff_list"))


@admin.post("/staff/<username>/active")
@requires("admin")
def set_active(username: str) -> ResponseReturnValue:
    """Deactivate (ending their sessions) or reactivate a staff member."""
    active = request.form.get("active") == "1"

    def act() -> str:
        member = staff_admin.set_staff_active(db(), username, active)
        if not active:
            accounts.end_sessions_of(db(), member.id, now=now(), reason="deactivated")
        record("set_staff_active", object_type="staff", object_id=username, detail=str(active).lower())
        return username

    message = gettext("Account activated") if active else gettext("Account deactivated")
    return _attempt(act, message, url_for("admin.staff_list"))


@admin.post("/staff/<username>/password")
@requires("admin")
def reset_password(username: str) -> ResponseReturnValue:
    """Set a new password for a staff member (they are logged out everywhere)."""

    def act() -> str:
        member = staff_admin.get_staff(db(), username)
        accounts.set_password(db(), member, request.form.get("password", ""), now=now())
        record("reset_password", object_type="staff", object_id=username)
        return username

    return _attempt(act, gettext("Password set"), url_for("admin.staff_list"))


# --- care teams ----------------------------------------------------------------------------------


@admin.get("/teams")
@requires("admin")
def teams() -> ResponseReturnValue:
    """Care teams with their members and patients."""
    record("view_admin", object_type="page", object_id="teams")
    return render_template(
        "admin/teams.html",
        teams=staff_admin.list_care_teams(db()),
        members=[s for s in staff_admin.list_staff(db()) if s.active],
    )


@admin.post("/teams")
@requires("admin")
def add_team() -> ResponseReturnValue:
    """Create a care team."""

    def act() -> str:
        team = staff_admin.add_care_team(db(), request.form.get("name", ""))
        record("add_care_team", object_type="care_team", object_id=team.name)
        return team.name

    return _attempt(act, gettext("Care team added"), url_for("admin.teams"))


@admin.post("/teams/<int:team_id>/members")
@requires("admin")
def add_member(team_id: int) -> ResponseReturnValue:
    """Put a staff member into a team (optionally as its responsible doctor)."""

    def act() -> str:
        team = _team(team_id)
        username = request.form.get("username", "")
        responsible = request.form.get("responsible") == "1"
        staff_admin.add_member(db(), team.name, username, responsible=responsible)
        record(
            "add_team_member",
            object_type="care_team",
            object_id=team.name,
            detail=f"{username}{' (responsible)' if responsible else ''}",
        )
        return f"{username} → {team.name}"

    return _attempt(act, gettext("Team member added"), url_for("admin.teams"))


@admin.post("/teams/<int:team_id>/members/<username>/remove")
@requires("admin")
def remove_member(team_id: int, username: str) -> ResponseReturnValue:
    """Take a staff member out of a team."""

    def act() -> str:
        team = _team(team_id)
        staff_admin.remove_member(db(), team.name, username)
        record("remove_team_member", object_type="care_team", object_id=team.name, detail=username)
        return f"{username} ✕ {team.name}"

    return _attempt(act, gettext("Team member removed"), url_for("admin.teams"))


def _team(team_id: int) -> CareTeam:
    team = db().get(CareTeam, team_id)
    if team is None:
        raise AlertsError(f"unknown care team {team_id}")
    return team


# --- patients ------------------------------------------------------------------------------------


@admin.get("/patients")
@requires("admin")
def patient_list() -> ResponseReturnValue:
    """Registered patients, their care team and devices."""
    record("view_admin", object_type="page", object_id="patients")
    team_names = {t.id: t.name for t in db().scalars(select(CareTeam))}
    return render_template(
        "admin/patients.html",
        patients=registry.list_patients(db()),
        team_names=team_names,
        teams=sorted(team_names.values()),
        languages=LANGUAGES,
    )


@admin.post("/patients")
@requires("admin")
def add_patient() -> ResponseReturnValue:
    """Register a patient (and give them a care team)."""
    form = request.form

    def act() -> str:
        patient = registry.add_patient(
            db(),
            patient_id=form.get("patient_id", "").strip(),
            display_name=form.get("display_name", ""),
            phone=form.get("phone", ""),
            language=form.get("language", "ru"),
            timezone=form.get("timezone", "").strip() or services().settings.timezone,
        )
        team = form.get("team", "")
        if team:
            staff_admin.assign_patient(db(), patient.id, team)
        record("add_patient", patient_id=patient.id, object_type="patient", object_id=patient.id, detail=team)
        return patient.id

    return _attempt(act, gettext("Patient added"), url_for("admin.patient_list"))


@admin.post("/patients/<patient_id>/team")
@requires("admin")
def assign_team(patient_id: str) -> ResponseReturnValue:
    """Give a patient to a care team (or to none)."""

    def act() -> str:
        team = request.form.get("team", "") or None
        staff_admin.assign_patient(db(), patient_id, team)
        record(
            "assign_patient",
            patient_id=patient_id,
            object_type="patient",
            object_id=patient_id,
            detail=team or "-",
        )
        return f"{patient_id} → {team or '—'}"

    return _attempt(act, gettext("Care team changed"), url_for("admin.patient_list"))


# --- devices -------------------------------------------------------------------------------------


@admin.get("/devices")
@requires("admin")
def devices() -> ResponseReturnValue:
    """Devices with their whole enrolment history."""
    record("view_admin", object_type="page", object_id="devices")
    return render_template(
        "admin/devices.html",
        devices=registry.list_devices(db()),
        patients=[p.id for p in registry.list_patients(db())],
        kinds=DEVICE_KINDS,
    )


@admin.post("/devices/enrol")
@requires("admin")
def enrol() -> ResponseReturnValue:
    """Give a device to a patient from now (or from the given local time) on."""
    form = request.form

    def act() -> str:
        device_id = form.get("device_id", "").strip()
        patient_id = form.get("patient_id", "").strip()
        valid_from = _local_time(form.get("valid_from", "")) or now()
        enrolment = registry.enrol_device(
            db(),
            device_id=device_id,
            patient_id=patient_id,
            valid_from=valid_from,
            kind=form.get("kind", "unknown"),
        )
        record(
            "enrol_device",
            patient_id=patient_id,
            object_type="device",
            object_id=device_id,
            detail=f"from {enrolment.valid_from.isoformat()}",
        )
        return f"{device_id} → {patient_id}"

    return _attempt(act, gettext("Device enrolled"), url_for("admin.devices"))


@admin.post("/devices/<device_id>/end")
@requires("admin")
def end_enrolment(device_id: str) -> ResponseReturnValue:
    """Record that a device came back from its patient (now, or at the given local time)."""

    def act() -> str:
        valid_to = _local_time(request.form.get("valid_to", "")) or now()
        enrolment = registry.end_enrolment(db(), device_id=device_id, valid_to=valid_to)
        record(
            "end_enrolment",
            patient_id=enrolment.patient_id,
            object_type="device",
            object_id=device_id,
            detail=f"until {valid_to.isoformat()}",
        )
        return device_id

    return _attempt(act, gettext("Enrolment ended"), url_for("admin.devices"))


def _local_time(text: str) -> datetime | None:
    """A datetime-local form value in the clinic's zone; None when empty; RpmgwError when malformed."""
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise registry.InvalidInput(f"{text!r} is not a date and time like 2026-11-28T08:15") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(services().settings.timezone))
    return value


# --- quarantine and audit ------------------------------------------------------------------------


@admin.get("/quarantine")
@requires("admin")
def quarantine() -> ResponseReturnValue:
    """Rejected payloads with the reason, newest first; filters by reason and device."""
    reason = request.args.get("reason", "").strip() or None
    device = request.args.get("device", "").strip() or None
    record("view_admin", object_type="page", object_id="quarantine")
    commit()
    store = Quarantine(services().sessions)
    return render_template(
        "admin/quarantine.html",
        entries=store.list(limit=QUARANTINE_PAGE, reason=reason, device_id=device),
        counts=sorted(store.counts_by_reason().items()),
        reason=reason or "",
        device=device or "",
    )


def _local_date(text: str, *, end: bool = False) -> datetime | None:
    try:
        day = datetime.strptime(text.strip(), "%Y-%m-%d").date()
    except ValueError:
        return None
    start = datetime.combine(day, time(0), tzinfo=ZoneInfo(services().settings.timezone))
    return start + timedelta(days=1) if end else start


@admin.get("/audit")
@requires("admin")
def audit_log() -> ResponseReturnValue:
    """The audit log with filters (who, what, outcome, patient, address, dates), newest first."""
    args = request.args
    where = AuditFilter(
        actor=args.get("actor", "").strip() or None,
        action=args.get("action", "").strip() or None,
        outcome=args.get("outcome", "").strip() or None,
        patient_id=args.get("patient", "").strip() or None,
        ip=args.get("ip", "").strip() or None,
        since=_local_date(args.get("since", "")),
        until=_local_date(args.get("until", ""), end=True),
    )
    before = args.get("before", type=int)
    found = audit.entries(db(), where, limit=AUDIT_PAGE + 1, before_id=before)
    record("view_admin", object_type="page", object_id="audit")
    return render_template(
        "admin/audit.html",
        entries=found[:AUDIT_PAGE],
        more=found[AUDIT_PAGE - 1].id if len(found) > AUDIT_PAGE else None,
        actions=audit.actions_in_use(db()),
        args=args,
        older_args={k: v for k, v in args.items() if k != "before"},
    )
