"""Admin commands: `rpmgw db|patient|device|quarantine ...` and `rpmgw status`."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from typing import IO, Any, Final, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

import click

from gateway.quarantine import Quarantine, QuarantinedRecord
from rpmgw import admin
from rpmgw.cli import SettingsContext, pass_settings
from rpmgw.db import (
    current_revision,
    make_engine,
    migrated_sessions,
    safe_url,
    upgrade,
)
from rpmgw.errors import RpmgwError
from rpmgw.models import DEFAULT_TIMEZONE, DEVICE_KINDS, LANGUAGES, Device, Patient
from rpmgw.output import echo_json, echo_table, iso_utc, local_time
from rpmgw.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")

PAYLOAD_PREVIEW: Final = 120
_CONTROL_ESCAPES: Final = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


class CommandError(click.ClickException):
    """An error of ours, shown like `rpmgw.cli.main` shows one: `rpmgw: message`, exit code 2."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"rpmgw: {self.format_message()}", err=True)


def clear_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Report our own errors as one line and a non-zero exit, also outside `rpmgw.cli.main`."""

    @wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except RpmgwError as exc:
            raise CommandError(str(exc)) from exc

    return wrapper


def rfc3339(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """Click callback: an RFC 3339 date-time with a time zone offset, e.g. 2026-11-28T08:15:00+05:00."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an RFC 3339 date-time like 2026-11-28T08:15:00+05:00", ctx, param
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise click.BadParameter(f"{value!r} has no time zone offset; add one, e.g. +05:00 or Z", ctx, param)
    return parsed


def register(cli: click.Group) -> None:
    """Add the admin commands to the `rpmgw` group."""
    cli.add_command(db)
    cli.add_command(patient)
    cli.add_command(device)
    cli.add_command(quarantine)
    cli.add_command(status)


# --- db ------------------------------------------------------------------------------------------


@click.group()
def db() -> None:
    """The relational database's schema."""


@db.command("upgrade")
@pass_settings
@clear_errors
def db_upgrade(ctx: SettingsContext) -> None:
    """Create or migrate the database schema to this version of rpmgw."""
    url = ctx.settings.database_url
    upgrade(url)
    engine = make_engine(url)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    click.echo(f"database {safe_url(url)} is at revision {revision}")


@db.command("check")
@pass_settings
@clear_errors
def db_check(ctx: SettingsContext) -> None:
    """Exit non-zero unless the database schema is current."""
    with migrated_sessions(ctx.settings.database_url):
        click.echo(f"database {safe_url(ctx.settings.database_url)} is current")


# --- patient -------------------------------------------------------------------------------------


@click.group()
def patient() -> None:
    """Patients."""


@patient.command("add")
@click.option("--id", "patient_id", required=True, help="External patient id, e.g. P-000123.")
@click.option("--name", "display_name", required=True, help="Name shown to doctors.")
@click.option("--phone", required=True, help="Mobile number in E.164, e.g. +79991234567.")
@click.option("--language", type=click.Choice(LANGUAGES), default="ru", show_default=True)
@click.option("--timezone", default=DEFAULT_TIMEZONE, show_default=True, help="IANA time zone.")
@pass_settings
@clear_errors
def patient_add(
    ctx: SettingsContext, patient_id: str, display_name: str, phone: str, language: str, timezone: str
) -> None:
    """Add a patient."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        added = admin.add_patient(
            session,
            patient_id=patient_id,
            display_name=display_name,
            phone=phone,
            language=language,
            timezone=timezone,
        )
    click.echo(f"patient {added.id} added ({added.phone}, {added.language}, {added.timezone})")


@patient.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_settings
@clear_errors
def patient_list(ctx: SettingsContext, as_json: bool) -> None:
    """List the patients."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions() as session:
        patients = admin.list_patients(session)
    if as_json:
        echo_json([_patient_json(p) for p in patients])
        return
    zone = ZoneInfo(ctx.settings.timezone)
    echo_table(
        ("ID", "NAME", "PHONE", "LANG", "TIMEZONE", "CREATED"),
        [
            (p.id, p.display_name, p.phone, p.language, p.timezone, local_time(p.created_at, zone))
            for p in patients
        ],
    )


# --- device --------------------------------------------------------------------------------------


@click.group()
def device() -> None:
    """Devices and their enrolment to patients."""


@device.command("enrol")
@click.argument("device_id")
@click.option("--patient", "patient_id", required=True, help="The patient who gets the device.")
@click.option(
    "--from", "valid_from", metavar="RFC3339", callback=rfc3339, help="Start of the enrolment (default: now)."
)
@click.option("--kind", type=click.Choice(DEVICE_KINDS), default="unknown", show_default=True)
@pass_settings
@clear_errors
def device_enrol(
    ctx: SettingsContext, device_id: str, patient_id: str, valid_from: datetime | None, kind: str
) -> None:
    """Enrol DEVICE_ID to a patient, closing its previous enrolment at that moment."""
    start = valid_from or datetime.now(UTC)
    zone = ZoneInfo(ctx.settings.timezone)
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        before = admin.list_enrolments(session, device_id)
        previous = next((e for e in before if e.valid_to is None), None)
        enrolment = admin.enrol_device(
            session, device_id=device_id, patient_id=patient_id, valid_from=start, kind=kind
        )
    if previous is not None and previous.id == enrolment.id:
        click.echo(
            f"device {device_id} is already enrolled to {patient_id} "
            f"since {local_time(enrolment.valid_from, zone)}"
        )
        return
    click.echo(f"device {device_id} enrolled to {patient_id} from {local_time(enrolment.valid_from, zone)}")
    if previous is not None:
        click.echo(
            f"closed its enrolment to {previous.patient_id} at {local_time(enrolment.valid_from, zone)}"
        )


@device.command("unenrol")
@click.argument("device_id")
@click.option(
    "--at",
    "valid_to",
    metavar="RFC3339",
    callback=rfc3339,
    help="When the device was returned (default: now).",
)
@pass_settings
@clear_errors
def device_unenrol(ctx: SettingsContext, device_id: str, valid_to: datetime | None) -> None:
    """Close DEVICE_ID's open enrolment (the device was returned)."""
    end = valid_to or datetime.now(UTC)
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        closed = admin.end_enrolment(session, device_id=device_id, valid_to=end)
    zone = ZoneInfo(ctx.settings.timezone)
    click.echo(f"device {device_id} no longer enrolled to {closed.patient_id} from {local_time(end, zone)}")


@device.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_settings
@clear_errors
def device_list(ctx: SettingsContext, as_json: bool) -> None:
    """List the devices with their enrolment history."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions() as session:
        devices = admin.list_devices(session)
    if as_json:
        echo_json([_device_json(d) for d in devices])
        return
    zone = ZoneInfo(ctx.settings.timezone)
    rows: list[tuple[str, ...]] = []
    for item in devices:
        if not item.enrolments:
            rows.append((item.id, item.kind, "-", "-", "-"))
        for enrolment in item.enrolments:
            until = "(current)" if enrolment.valid_to is None else local_time(enrolment.valid_to, zone)
            rows.append(
                (item.id, item.kind, enrolment.patient_id, local_time(enrolment.valid_from, zone), until)
            )
    echo_table(("DEVICE", "KIND", "PATIENT", "FROM", "TO"), rows)


# --- quarantine ----------------------------------------------------------------------------------


@click.group()
def quarantine() -> None:
    """Messages kept aside because they could not be stored as readings."""


@quarantine.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--reason", help="Only this reason code (e.g. schema, unknown_device).")
@click.option("--device", "device_id", help="Only this device.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@pass_settings
@clear_errors
def quarantine_list(
    ctx: SettingsContext, as_json: bool, reason: str | None, device_id: str | None, limit: int
) -> None:
    """List quarantined messages, newest first."""
    with migrated_sessions(ctx.settings.database_url) as sessions:
        records = Quarantine(sessions).list(limit=limit, reason=reason, device_id=device_id)
    if as_json:
        echo_json([_quarantined_json(r) for r in records])
        return
    zone = ZoneInfo(ctx.settings.timezone)
    for record in records:
        text, encoding = payload_text(record.payload)
        # One line per message: control characters (newlines...) are shown escaped.
        shown = text.translate(_CONTROL_ESCAPES)
        shown = shown if len(shown) <= PAYLOAD_PREVIEW else shown[:PAYLOAD_PREVIEW] + "..."
        click.echo(
            f"{local_time(record.received_at, zone)}  {record.reason}  device={record.device_id or '-'}  "
            f"topic={record.topic}"
        )
        click.echo(f"    detail: {record.detail}")
        click.echo(f"    payload ({encoding}, {len(record.payload)} bytes): {shown}")


def payload_text(payload: bytes) -> tuple[str, str]:
    """A payload as text: ("...", "utf-8") when it decodes, else its base64 and "base64"."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(payload).decode("ascii"), "base64"
    return text, "utf-8"


# --- status --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ReadingsStatus:
    counts: dict[str, int]
    last_measured_at: datetime | None
    error: str | None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_settings
@clear_errors
def status(ctx: SettingsContext, as_json: bool) -> None:
    """Readings stored, quarantined messages, patients, devices and enrolments."""
    settings = ctx.settings
    with migrated_sessions(settings.database_url) as sessions:
        with sessions() as session:
            counts = admin.database_counts(session)
        quarantined = Quarantine(sessions).counts_by_reason()
    readings = _readings_status(settings)
    influx_url = settings.influx.url
    if as_json:
        echo_json(
            {
                "database": {
                    "url": safe_url(settings.database_url),
                    "patients": counts.patients,
                    "devices": counts.devices,
                    "open_enrolments": counts.open_enrolments,
                },
                "quarantine": dict(sorted(quarantined.items())),
                "readings": {
                    "url": influx_url,
                    "reachable": readings.error is None,
                    "counts": readings.counts,
                    "last_measured_at": iso_utc(readings.last_measured_at),
                    "error": readings.error,
                },
            }
        )
    else:
        zone = ZoneInfo(settings.timezone)
        click.echo(f"database: {safe_url(settings.database_url)}")
        click.echo(
            f"  patients: {counts.patients}  devices: {counts.devices}  "
            f"open enrolments: {counts.open_enrolments}"
        )
        by_reason = ", ".join(f"{reason}: {n}" for reason, n in sorted(quarantined.items()))
        click.echo(f"quarantined: {sum(quarantined.values())}" + (f" ({by_reason})" if by_reason else ""))
        if readings.error is None:
            by_type = ", ".join(f"{kind}: {n}" for kind, n in sorted(readings.counts.items())) or "none"
            last = local_time(readings.last_measured_at, zone) if readings.last_measured_at else "never"
            click.echo(f"readings ({influx_url}): {by_type}; last measured at {last}")
    if readings.error is not None:
        raise CommandError(readings.error)


def _readings_status(settings: Settings) -> _ReadingsStatus:
    from gateway.errors import StorageError, StorageUnavailable
    from gateway.timeseries import open_store

    url = settings.influx.url
    try:
        store = open_store(settings.influx)
        try:
            summary = store.summary()
        finally:
            store.close()
    except StorageUnavailable as exc:
        detail = str(exc).removeprefix(f"InfluxDB at {url} ")
        return _ReadingsStatus(
            counts={}, last_measured_at=None, error=f"InfluxDB at {url} is unreachable: {detail}"
        )
    except StorageError as exc:
        return _ReadingsStatus(counts={}, last_measured_at=None, error=f"InfluxDB at {url}: {exc}")
    return _ReadingsStatus(counts=dict(summary.counts), last_measured_at=summary.last_measured_at, error=None)


# --- output --------------------------------------------------------------------------------------


def _patient_json(item: Patient) -> dict[str, Any]:
    return {
        "id": item.id,
        "display_name": item.display_name,
        "phone": item.phone,
        "language": item.language,
        "timezone": item.timezone,
        "created_at": iso_utc(item.created_at),
    }


def _device_json(item: Device) -> dict[str, Any]:
    return {
        "id": item.id,
        "kind": item.kind,
        "created_at": iso_utc(item.created_at),
        "enrolments": [
            {
                "patient_id": e.patient_id,
                "valid_from": iso_utc(e.valid_from),
                "valid_to": iso_utc(e.valid_to),
                "current": e.valid_to is None,
            }
            for e in item.enrolments
        ],
    }


def _quarantined_json(record: QuarantinedRecord) -> dict[str, Any]:
    text, encoding = payload_text(record.payload)
    return {
        "id": record.id,
        "received_at": iso_utc(record.received_at),
        "topic": record.topic,
        "device_id": record.device_id,
        "reason": record.reason,
        "detail": record.detail,
        "payload": text,
        "payload_encoding": encoding,
        "payload_bytes": len(record.payload),
    }
