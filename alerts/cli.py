"""Alert commands: `rpmgw staff|team|oncall|alerts|thresholds ...`.

Times are shown in the clinic's time zone (RPMGW_TIMEZONE) and accepted as RFC 3339 with an offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import click

from alerts import lifecycle, staff, threshold_store
from alerts.tables import REASON_CODES, STAFF_ROLES, Alert, AlertEvent
from alerts.thresholds import THRESHOLD_DESCRIPTIONS, Thresholds, load_clinic_thresholds
from rpmgw.admin import get_patient
from rpmgw.cli import SettingsContext, pass_settings
from rpmgw.commands.admin import CommandError, clear_errors, rfc3339
from rpmgw.db import migrated_sessions
from rpmgw.models import LANGUAGES
from rpmgw.output import echo_json, echo_table, iso_utc, local_time


def register(cli: click.Group) -> None:
    """Add the alert commands to the `rpmgw` group."""
    cli.add_command(staff_group)
    cli.add_command(team_group)
    cli.add_command(oncall_group)
    cli.add_command(alerts_group)
    cli.add_command(thresholds_group)


# --- staff ---------------------------------------------------------------------------------------


@click.group("staff")
def staff_group() -> None:
    """Doctors, nurses and administrators."""


@staff_group.command("add")
@click.option("--username", required=True, help="Login and CLI name, e.g. ivanova.")
@click.option("--name", "display_name", required=True, help="Name shown to colleagues.")
@click.option("--phone", required=True, help="Mobile number in E.164 for pages, e.g. +79991234567.")
@click.option("--role", type=click.Choice(STAFF_ROLES), required=True)
@click.option("--language", type=click.Choice(LANGUAGES), default="ru", show_default=True)
@pass_settings
@clear_errors
def staff_add(
    ctx: SettingsContext, username: str, display_name: str, phone: str, role: str, language: str
) -> None:
    """Add a staff member."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        added = staff.add_staff(
            session, username=username, display_name=display_name, phone=phone, role=role, language=language
        )
    click.echo(f"staff member {added.username} added ({added.role}, {added.phone}, {added.language})")


@staff_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_settings
@clear_errors
def staff_list(ctx: SettingsContext, as_json: bool) -> None:
    """List the staff members."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions() as session:
        members = staff.list_staff(session)
    if as_json:
        echo_json(
            [
                {
                    "username": m.username,
                    "display_name": m.display_name,
                    "phone": m.phone,
                    "role": m.role,
                    "language": m.language,
                    "active": m.active,
                }
                for m in members
            ]
        )
        return
    echo_table(
        ("USERNAME", "NAME", "ROLE", "PHONE", "LANG", "ACTIVE"),
        [(m.username, m.display_name, m.role, m.phone, m.language, _yes(m.active)) for m in members],
    )


@staff_group.command("deactivate")
@click.argument("username")
@pass_settings
@clear_errors
def staff_deactivate(ctx: SettingsContext, username: str) -> None:
    """Deactivate USERNAME: no more pages, no acknowledgements."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        staff.set_staff_active(session, username, False)
    click.echo(f"staff member {username} deactivated")


@staff_group.command("activate")
@click.argument("username")
@pass_settings
@clear_errors
def staff_activate(ctx: SettingsContext, username: str) -> None:
    """Activate USERNAME again."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        staff.set_staff_active(session, username, True)
    click.echo(f"staff member {username} activated")


# --- care teams ----------------------------------------------------------------------------------


@click.group("team")
def team_group() -> None:
    """Care teams: who looks after which patients, and who is responsible."""


@team_group.command("add")
@click.argument("name")
@pass_settings
@clear_errors
def team_add(ctx: SettingsContext, name: str) -> None:
    """Add a care team called NAME."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        team = staff.add_care_team(session, name)
    click.echo(f"care team {team.name} added")


@team_group.command("member")
@click.argument("team")
@click.option("--staff", "username", required=True, help="Username of the staff member.")
@click.option("--responsible", is_flag=True, help="Make them the team's responsible doctor.")
@pass_settings
@clear_errors
def team_member(ctx: SettingsContext, team: str, username: str, responsible: bool) -> None:
    """Put a staff member in TEAM (optionally as its responsible doctor)."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        staff.add_member(session, team, username, responsible=responsible)
    role = " as its responsible doctor" if responsible else ""
    click.echo(f"{username} is in care team {team}{role}")


@team_group.command("assign")
@click.argument("team")
@click.option("--patient", "patient_id", required=True, help="The patient's id.")
@pass_settings
@clear_errors
def team_assign(ctx: SettingsContext, team: str, patient_id: str) -> None:
    """Make TEAM the care team of a patient."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        staff.assign_patient(session, patient_id, team)
        doctor = staff.responsible_doctor(session, patient_id)
    name = "none" if doctor is None else doctor.username
    click.echo(f"patient {patient_id} assigned to care team {team} (responsible doctor: {name})")


@team_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_settings
@clear_errors
def team_list(ctx: SettingsContext, as_json: bool) -> None:
    """List the care teams with their members and patients."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions() as session:
        teams = staff.list_care_teams(session)
    if as_json:
        echo_json(
            [
                {
                    "name": t.name,
                    "members": [
                        {"username": m.username, "role": m.role, "responsible": m.responsible}
                        for m in t.members
                    ],
                    "patients": list(t.patients),
                }
                for t in teams
            ]
        )
        return
    for team in teams:
        click.echo(f"{team.name}: {len(team.patients)} patient(s)")
        for member in team.members:
            mark = " (responsible)" if member.responsible else ""
            inactive = " [deactivated]" if not member.active else ""
            click.echo(f"    {member.username} {member.role}{mark}{inactive}")


# --- on call -------------------------------------------------------------------------------------


@click.group("oncall")
def oncall_group() -> None:
    """The on-call roster: who is paged when a critical alert is not acknowledged."""


@oncall_group.command("add")
@click.option("--staff", "username", required=True, help="Username of the doctor on call.")
@click.option("--from", "starts_at", metavar="RFC3339", required=True, callback=rfc3339, help="Shift start.")
@click.option("--to", "ends_at", metavar="RFC3339", required=True, callback=rfc3339, help="Shift end.")
@pass_settings
@clear_errors
def oncall_add(ctx: SettingsContext, username: str, starts_at: datetime, ends_at: datetime) -> None:
    """Put a doctor on call for a shift."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        staff.add_shift(session, username, starts_at=starts_at, ends_at=ends_at)
    zone = ZoneInfo(ctx.settings.timezone)
    click.echo(f"{username} on call from {local_time(starts_at, zone)} to {local_time(ends_at, zone)}")


@oncall_group.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also past shifts.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_settings
@clear_errors
def oncall_list(ctx: SettingsContext, show_all: bool, as_json: bool) -> None:
    """List current and future on-call shifts."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions() as session:
        shifts = staff.list_shifts(session, ending_after=None if show_all else datetime.now(UTC))
    if as_json:
        echo_json(
            [
                {"username": s.username, "starts_at": iso_utc(s.starts_at), "ends_at": iso_utc(s.ends_at)}
                for s in shifts
            ]
        )
        return
    zone = ZoneInfo(ctx.settings.timezone)
    echo_table(
        ("STAFF", "FROM", "TO"),
        [(s.username, local_time(s.starts_at, zone), local_time(s.ends_at, zone)) for s in shifts],
    )


# --- alerts --------------------------------------------------------------------------------------


@click.group("alerts")
def alerts_group() -> None:
    """Alerts: list, show, acknowledge."""


@alerts_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--patient", "patient_id", help="Only this patient's alerts.")
@click.option(
    "--state",
    type=click.Choice(["open", "all"]),
    default="open",
    show_default=True,
    help="open: not yet both cleared and acknowledged.",
)
@click.option("--limit", type=click.IntRange(min=1), default=500, show_default=True)
@pass_settings
@clear_errors
def alerts_list(ctx: SettingsContext, as_json: bool, patient_id: str | None, state: str, limit: int) -> None:
    """List alerts, most severe first."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions() as session:
        found = lifecycle.list_alerts(
            session, patient_id=patient_id, state="all" if state == "all" else "open", limit=limit
        )
    if as_json:
        echo_json([_alert_json(a) for a in found])
        return
    zone = ZoneInfo(ctx.settings.timezone)
    echo_table(
        (
            "ID",
            "PATIENT",
            "RULE",
            "SEVERITY",
            "STATE",
            "WORST",
            "LAST",
            "FIRST READING",
            "LAST READING",
            "N",
            "LATE",
            "CONFIRM",
        ),
        [
            (
                str(a.id),
                a.patient_id,
                a.rule,
                a.severity,
                a.state,
                a.worst_value_text or "-",
                a.last_value_text or "-",
                local_time(a.first_measured_at, zone) if a.first_measured_at else "-",
                local_time(a.last_measured_at, zone) if a.last_measured_at else "-",
                str(a.reading_count),
                "late" if a.late else "-",
                a.confirmation or "-",
            )
            for a in found
        ],
    )


@alerts_group.command("show")
@click.argument("alert_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_settings
@clear_errors
def alerts_show(ctx: SettingsContext, alert_id: int, as_json: bool) -> None:
    """Show ALERT_ID with its history of events."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions() as session:
        alert = lifecycle.get_alert(session, alert_id)
        events = lifecycle.alert_events(session, alert_id)
        ack = lifecycle.acknowledgement_of(session, alert_id)
    if as_json:
        document = _alert_json(alert) | {"events": [_event_json(e) for e in events]}
        if ack is not None:
            document["acknowledgement"] = {
                "by": alert.acknowledged_by,
                "at": iso_utc(ack.at),
                "reason_code": ack.reason_code,
                "note": ack.note,
                "time_to_ack_seconds": ack.time_to_ack_seconds,
            }
        echo_json(document)
        return
    zone = ZoneInfo(ctx.settings.timezone)
    click.echo(
        f"alert {alert.id}: {lifecycle.rule_title(alert.rule)} ({alert.rule}, {alert.severity}), "
        f"patient {alert.patient_id}"
    )
    click.echo(f"  state: {alert.state}{', late' if alert.late else ''}")
    click.echo(
        f"  worst: {alert.worst_value_text or '-'}  last: {alert.last_value_text or '-'}  readings: {alert.reading_count}"
    )
    if alert.confirmation:
        click.echo(f"  confirmation: {alert.confirmation}")
    click.echo(f"  opened: {local_time(alert.opened_at, zone)}  thresholds: {alert.threshold_version}")
    if ack is not None:
        click.echo(
            f"  acknowledged by {alert.acknowledged_by} at {local_time(ack.at, zone)}: {ack.reason_code}: {ack.note}"
        )
    click.echo("  events:")
    for event in events:
        msg = f" [{event.msg_id}]" if event.msg_id else ""
        click.echo(f"    {local_time(event.at, zone)}  {event.kind}{msg}  {event.detail}")


@alerts_group.command("ack")
@click.argument("alert_id", type=int)
@click.option("--by", "username", required=True, help="Username of the staff member acknowledging.")
@click.option("--reason", type=click.Choice(REASON_CODES), required=True, help="What was done.")
@click.option("--note", required=True, help="Free text: what was done and why.")
@pass_settings
@clear_errors
def alerts_ack(ctx: SettingsContext, alert_id: int, username: str, reason: str, note: str) -> None:
    """Acknowledge ALERT_ID (stops its escalation; closes it when it is cleared)."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        lifecycle.acknowledge(
            session, alert_id, by_username=username, reason_code=reason, note=note, now=datetime.now(UTC)
        )
        alert = lifecycle.get_alert(session, alert_id)
        state = alert.state
    click.echo(f"alert {alert_id} acknowledged by {username} ({reason}); now {state}")


# --- thresholds ----------------------------------------------------------------------------------


@click.group("thresholds")
def thresholds_group() -> None:
    """Clinical thresholds: the clinic's, and per-patient overrides (versioned)."""


@thresholds_group.command("set")
@click.option("--patient", "patient_id", required=True, help="The patient's id.")
@click.option("--by", "username", required=True, help="Username of the staff member deciding.")
@click.option("--reason", required=True, help="Why (kept with the version).")
@click.option("--replace", is_flag=True, help="Replace all the patient's overrides instead of changing some.")
@click.option(
    "--unset", "unset", multiple=True, metavar="KEY", help="Drop an override (back to the clinic's)."
)
@click.argument("assignments", nargs=-1, metavar="KEY=VALUE...")
@pass_settings
@clear_errors
def thresholds_set(
    ctx: SettingsContext,
    patient_id: str,
    username: str,
    reason: str,
    replace: bool,
    unset: Sequence[str],
    assignments: Sequence[str],
) -> None:
    """Store a new version of a patient's threshold overrides, e.g. `low_sbp=100 high_sbp=150`."""
    changes = _parse_assignments(assignments)
    if not changes and not unset and not replace:
        raise CommandError("nothing to change: give KEY=VALUE pairs, --unset KEY or --replace")
    clinic = load_clinic_thresholds(ctx.settings.alerts.thresholds_file)
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        overrides = {} if replace else threshold_store.current_overrides(session, patient_id)
        for key in unset:
            if key not in overrides:
                raise CommandError(f"patient {patient_id} has no override {key!r} to unset")
            del overrides[key]
        overrides.update(changes)
        version = threshold_store.set_patient_thresholds(
            session,
            patient_id,
            overrides,
            by_username=username,
            reason=reason,
            now=datetime.now(UTC),
            clinic=clinic,
        )
    shown = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "none (clinic thresholds)"
    click.echo(f"patient {patient_id} thresholds v{version}: {shown}")


@thresholds_group.command("show")
@click.option("--patient", "patient_id", help="The patient's effective thresholds and their history.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_settings
@clear_errors
def thresholds_show(ctx: SettingsContext, patient_id: str | None, as_json: bool) -> None:
    """Show the clinic's thresholds, or a patient's effective ones with the history of changes."""
    clinic = load_clinic_thresholds(ctx.settings.alerts.thresholds_file)
    if patient_id is None:
        _show_thresholds(clinic, {}, "clinic", [], as_json, ZoneInfo(ctx.settings.timezone))
        return
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions() as session:
        get_patient(session, patient_id)
        effective, label = threshold_store.thresholds_for(session, [patient_id], clinic)[patient_id]
        versions = threshold_store.history(session, patient_id)
    overrides = versions[-1].overrides if versions else {}
    _show_thresholds(effective, overrides, label, versions, as_json, ZoneInfo(ctx.settings.timezone))


def _show_thresholds(
    values: Thresholds,
    overrides: dict[str, int | float],
    label: str,
    versions: Sequence[threshold_store.ThresholdVersionView],
    as_json: bool,
    zone: ZoneInfo,
) -> None:
    if as_json:
        echo_json(
            {
                "label": label,
                "thresholds": values.model_dump(),
                "overrides": overrides,
                "history": [
                    {
                        "version": v.version,
                        "overrides": v.overrides,
                        "changed_by": v.changed_by,
                        "changed_at": iso_utc(v.changed_at),
                        "reason": v.reason,
                    }
                    for v in versions
                ],
            }
        )
        return
    click.echo(f"thresholds: {label}")
    echo_table(
        ("KEY", "VALUE", "", "MEANING"),
        [
            (key, str(value), "*" if key in overrides else "", THRESHOLD_DESCRIPTIONS[key])
            for key, value in values.model_dump().items()
        ],
    )
    if versions:
        click.echo("history (* marks the patient's overrides above):")
        for v in versions:
            shown = ", ".join(f"{k}={x}" for k, x in sorted(v.overrides.items())) or "clinic thresholds"
            click.echo(
                f"  v{v.version} {local_time(v.changed_at, zone)} by {v.changed_by}: {shown} ({v.reason})"
            )


def _parse_assignments(assignments: Sequence[str]) -> dict[str, int | float]:
    parsed: dict[str, int | float] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw:
            raise CommandError(f"expected KEY=VALUE, got {item!r} (e.g. low_sbp=100)")
        if key not in Thresholds.model_fields:
            raise CommandError(f"unknown threshold {key!r}: `rpmgw thresholds show` lists them")
        try:
            parsed[key] = int(raw)
        except ValueError:
            try:
                parsed[key] = float(raw)
            except ValueError:
                raise CommandError(f"{key}: {raw!r} is not a number") from None
    return parsed


# --- output --------------------------------------------------------------------------------------


def _alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "patient_id": alert.patient_id,
        "family": alert.family,
        "rule": alert.rule,
        "severity": alert.severity,
        "state": alert.state,
        "active": alert.active,
        "acknowledged": alert.acknowledged,
        "closed": alert.closed_at is not None,
        "worst_value": alert.worst_value_text,
        "last_value": alert.last_value_text,
        "first_measured_at": iso_utc(alert.first_measured_at),
        "last_measured_at": iso_utc(alert.last_measured_at),
        "reading_count": alert.reading_count,
        "late": alert.late,
        "confirmation": alert.confirmation,
        "threshold_version": alert.threshold_version,
        "opened_at": iso_utc(alert.opened_at),
        "cleared_at": iso_utc(alert.cleared_at),
        "acknowledged_at": iso_utc(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "closed_at": iso_utc(alert.closed_at),
        "escalation_level": alert.escalation_level,
    }


def _event_json(event: AlertEvent) -> dict[str, Any]:
    return {"at": iso_utc(event.at), "kind": event.kind, "msg_id": event.msg_id, "detail": event.detail}


def _yes(value: bool) -> str:
    return "yes" if value else "no"
