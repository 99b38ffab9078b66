"""`rpmgw sim`: simulated BP monitors and glucometers publishing to the MQTT broker of the settings."""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from device_sim.accounts import ensure_device_accounts, load_device_passwords
from device_sim.devices import build_fleet
from device_sim.errors import SimConfigError
from device_sim.faults import FaultKind, parse_fault_spec
from device_sim.profiles import Condition, parse_mix_spec
from device_sim.run import SimConfig, SimReport, enrol_fleet, run_simulation, utc_now
from rpmgw.cli import SettingsContext, pass_settings

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}
_FAULTS = ", ".join(kind.value for kind in FaultKind)
_CONDITIONS = ", ".join(condition.value for condition in Condition)


def _faults(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dict[FaultKind, float]:
    if value is None:
        return {}
    try:
        return parse_fault_spec(value)
    except SimConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _mix(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dict[Condition, float] | None:
    if value is None:
        return None
    try:
        return parse_mix_spec(value)
    except SimConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _start(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """`-7d`, `-12h`, `-30m` (before now) or an ISO 8601 time with an offset."""
    if value is None or value == "now":
        return None
    match = _RELATIVE.match(value)
    if match:
        return utc_now() - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither -7d/-12h/-30m nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} has no time zone; add one, e.g. 2026-11-20T08:00:00+05:00")
    return moment.astimezone(UTC)


@click.command("sim")
@click.option(
    "--patients", type=click.IntRange(min=1), default=10, show_default=True, help="Simulated patients."
)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same patients and readings.")
@click.option(
    "--mix",
    callback=_mix,
    metavar="SPEC",
    help=f"Relative weights of the patients' conditions, e.g. controlled_htn=3,t2d=2 ({_CONDITIONS}). "
    "Hypertension and hypotension get a BP monitor, diabetes a glucometer (half of t2d also a BP monitor).",
)
@click.option(
    "--danger",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="Probability per reading of a dangerous episode (severe/low BP, hypo-/hyperglycaemia).",
)
@click.option(
    "--mg-dl-share",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Share of glucometers that report mg/dL instead of mmol/L.",
)
@click.option(
    "--start",
    callback=_start,
    metavar="WHEN",
    help="Simulated start time: -7d, -12h, -30m or an ISO 8601 time with offset [default: now].",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Simulated seconds per real second; measured_at never passes the wall clock.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds between two readings of one device.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    help="Readings per second in total, spread over all devices (load tests); overrides --interval.",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after publishing this many messages.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after this many seconds.")
@click.option(
    "--faults",
    callback=_faults,
    metavar="SPEC",
    help=f"Fault probabilities per reading, e.g. malformed=0.02,duplicate=0.01 ({_FAULTS}); "
    "offline=P starts an offline spell of 3-12 readings published later in one burst.",
)
@click.option(
    "--connections",
    type=click.IntRange(min=1),
    help="At most this many MQTT connections, shared by the devices [default: one per device].",
)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write one JSON line per acknowledged message: msg_id, device_id, patient_id, topic, type, "
    "expected (stored|rejected), reason, duplicate, fault.",
)
@click.option(
    "--enrol",
    is_flag=True,
    help="First create the simulated patients and enrol their devices in the database (idempotent).",
)
@click.option(
    "--max-inflight",
    type=click.IntRange(1, 65_535),
    default=100,
    show_default=True,
    help="Unacknowledged QoS 1 publishes per connection.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="On SIGINT/SIGTERM, wait this long for outstanding PUBACKs.",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress line on stderr.")
@click.option(
    "--device-credentials",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Each device logs in as itself with its password from this file (`device_id password` lines).",
)
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --device-credentials: create the missing device accounts in this broker password file.",
)
@click.option(
    "--accounts-only", is_flag=True, help="Create the device accounts, then exit (reload the broker)."
)
@pass_settings
def sim(context: SettingsContext, /, **options: Any) -> None:
    """Simulate patients' home BP monitors and glucometers publishing readings over MQTT.

    Readings follow wire contract v1 on rpm/devices/{device_id}/readings (QoS 1); each device also
    keeps a retained status (online, battery, firmware) on rpm/devices/{device_id}/status. The broker
    is RPMGW_MQTT__HOST/PORT/USERNAME/PASSWORD; --enrol uses RPMGW_DATABASE__URL.

    \b
    Examples:
      rpmgw sim --enrol --patients 20                        # demo: a reading per device every 5 s
      rpmgw sim --patients 1000 --connections 50 --rate 2000 --duration 60
      rpmgw sim --start -7d --speed 2016 --duration 300     # a week of history in 5 minutes
      rpmgw sim --faults malformed=0.02,duplicate=0.01,skew=0.01 --manifest run.jsonl --count 500
      rpmgw sim --device-credentials devices.txt --password-file P --accounts-only  # then SIGHUP the broker
      rpmgw sim --device-credentials devices.txt            # each device logs in as itself
    """
    settings = context.settings
    progress = options.pop("progress")
    enrol = options.pop("enrol")
    credentials, password_file, accounts_only = (
        options.pop("device_credentials"),
        options.pop("password_file"),
        options.pop("accounts_only"),
    )
    if (password_file is not None or accounts_only) and credentials is None:
        raise click.UsageError("--password-file and --accounts-only need --device-credentials")
    if accounts_only and password_file is None:
        raise click.UsageError("--accounts-only needs --password-file")
    if options["mix"] is None:
        options.pop("mix")
    try:
        config = SimConfig(timezone=settings.timezone, **options)
    except ValidationError as exc:
        raise click.UsageError(_problems(exc)) from None
    if enrol:
        fleet = build_fleet(
            patients=config.patients,
            seed=config.seed,
            mix=config.mix,
            mg_dl_share=config.mg_dl_share,
            timezone=config.timezone,
        )
        summary = enrol_fleet(fleet, settings.database_url, now=utc_now())
        click.echo(
            f"sim: {summary.patients} patients ready; {summary.enrolled} devices enrolled, "
            f"{summary.unchanged} already enrolled",
            err=True,
        )
    if credentials is not None:
        config = _with_device_accounts(config, credentials, password_file)
        if accounts_only:
            return
    report = asyncio.run(run_simulation(config, settings.mqtt, progress=sys.stderr if progress else None))
    click.echo(_summary(report, config), err=True)


def _with_device_accounts(config: SimConfig, credentials: Path, password_file: Path | None) -> SimConfig:
    if password_file is not None:
        fleet = build_fleet(
            patients=config.patients,
            seed=config.seed,
            mix=config.mix,
            mg_dl_share=config.mg_dl_share,
            timezone=config.timezone,
        )
        created = ensure_device_accounts([d.device_id for d in fleet.devices], credentials, password_file)
        click.echo(
            f"sim: {len(created)} new device accounts in {password_file}; "
            "reload the broker (SIGHUP) before they connect",
            err=True,
        )
    try:
        return SimConfig(**{**config.model_dump(), "device_passwords": load_device_passwords(credentials)})
    except ValidationError as exc:
        raise click.UsageError(_problems(exc)) from None


def _summary(report: SimReport, config: SimConfig) -> str:
    text = (
        f"sim: {report.acked:,} of {report.generated:,} messages acknowledged in {report.elapsed:,.1f} s "
        f"({report.expected_stored:,} to store, {report.expected_rejected:,} to reject, "
        f"{report.duplicates:,} duplicates); {report.reconnects} reconnects"
    )
    if report.buffered:
        text += f"; {report.buffered} readings still buffered by offline devices, not sent"
    if report.interrupted:
        text += "; stopped by a signal"
    if config.manifest is not None:
        text += f"; manifest: {config.manifest}"
    return text


def _problems(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = "--" + "-".join(str(part) for part in err["loc"]).replace("_", "-") if err["loc"] else ""
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}" if where else err["msg"])
    return "; ".join(parts)
