"""`rpmgw bench`: the gateway's throughput, latency and footprint against the machine's own limits.

Starts a private Mosquitto, InfluxDB and database under --dir, runs the parts asked for, prints a table
and writes the figures as JSON. Not a test: nothing here asserts a number.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rpmgw.bench.harness import BenchEnv

PARTS = ("limits", "drain", "scaleout", "ramp", "alerts", "web")


@click.command()
@click.option("--readings", default=100_000, show_default=True, help="Backlog size (QoS 1 messages).")
@click.option("--invalid", default=0.01, show_default=True, help="Share of malformed messages in it.")
@click.option(
    "--critical",
    type=click.FloatRange(min=0.0, max=1.0),
    default=0.001,
    show_default=True,
    help="Share of severe blood-pressure readings in it (they open alerts; none may open twice).",
)
@click.option("--devices", default=1_000, show_default=True, help="Enrolled devices the readings come from.")
@click.option(
    "--parts",
    default=",".join(PARTS),
    show_default=True,
    help="Comma-separated parts to run: " + ", ".join(PARTS) + ".",
)
@click.option("--database-url", default=None, help="An empty database to use (default: SQLite under --dir).")
@click.option(
    "--dir",
    "base_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the bench keeps its servers' data and logs (default: a temporary directory, removed).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("bench-results.json"),
    show_default=True,
    help="Where to write the figures.",
)
@click.option("--ramp-start", default=500, show_default=True, help="First step of 'ramp', readings/s.")
@click.option(
    "--ramp-step",
    default="x1.5",
    show_default=True,
    help="Next step of 'ramp': xF multiplies the rate by F (two significant digits), N adds N readings/s.",
)
@click.option("--ramp-max", default=20_000, show_default=True, help="Highest step of 'ramp', readings/s.")
@click.option(
    "--ramp-step-seconds",
    type=click.FloatRange(min=1.0),
    default=10.0,
    show_default=True,
    help="How long 'ramp' holds each step (the first quarter is not measured).",
)
@click.option(
    "--ramp-publishers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Publisher threads in 'ramp' (each its own MQTT connection; one process, so one GIL).",
)
@click.option("--alert-probes", default=60, show_default=True, help="Critical readings timed in 'alerts'.")
@click.option("--background-rate", default=5_000, show_default=True, help="Readings/s of load in 'alerts'.")
@click.option(
    "--alert-gateways",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Gateway processes in 'alerts' (more than one share the load through $share).",
)
@click.option("--inbox-alerts", default=10_000, show_default=True, help="Alerts in the inbox in 'web'.")
@click.option("--web-requests", default=50, show_default=True, help="Requests per page timed in 'web'.")
def bench(
    readings: int,
    invalid: float,
    critical: float,
    devices: int,
    parts: str,
    database_url: str | None,
    base_dir: Path | None,
    json_path: Path,
    ramp_start: int,
    ramp_step: str,
    ramp_max: int,
    ramp_step_seconds: float,
    ramp_publishers: int,
    alert_probes: int,
    background_rate: int,
    alert_gateways: int,
    inbox_alerts: int,
    web_requests: int,
) -> None:
    """Measure backlog drain, limits, scale-out, live-ingest ramp, alert latency and web pages; print a table."""
    # Imported here: every rpmgw command imports this module, and these pull in Flask and more.
    from rpmgw import heap
    from rpmgw.bench import scenarios
    from rpmgw.bench.harness import BenchEnv, backlog_workload
    from rpmgw.bench.latency import alert_latency
    from rpmgw.bench.ramp import RampOptions, live_ramp
    from rpmgw.bench.report import render_table
    from rpmgw.bench.webpages import web_response_times

    wanted = [part.strip() for part in parts.split(",") if part.strip()]
    unknown = set(wanted) - set(PARTS)
    if unknown:
        raise click.BadParameter(f"unknown parts: {', '.join(sorted(unknown))}", param_hint="--parts")
    ramp = RampOptions(
        start=ramp_start,
        step=ramp_step,
        max_rate=ramp_max,
        step_seconds=ramp_step_seconds,
        publishers=ramp_publishers,
    )
    try:
        ramp_steps = ramp.rates()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--ramp-start/--ramp-step/--ramp-max") from exc
    temporary = base_dir is None
    root = Path(tempfile.mkdtemp(prefix="rpmgw-bench-")) if base_dir is None else base_dir.resolve()
    results: dict[str, object] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {
            "readings": readings,
            "invalid": invalid,
            "critical": critical,
            "devices": devices,
            "parts": wanted,
            "background_rate": background_rate,
            "alert_gateways": alert_gateways,
            "inbox_alerts": inbox_alerts,
            "ramp_rates": ramp_steps,
        },
    }
    click.echo(f"bench: servers and logs under {root}", err=True)
    env = BenchEnv.start(root, devices=devices, db_url=database_url)
    try:
        workload = backlog_workload(readings, devices, invalid, critical)
        # The bench times things itself (probe polls, publish ticks): a full collection walking the
        # workload's 100,000 messages paused it for up to 0.09 s and added that to a probe's latency.
        heap.settle()
        if "limits" in wanted:
            click.echo("bench: limits (bare subscriber, InfluxDB writes)", err=True)
            results["bare_subscriber"] = scenarios.bare_subscriber(env, workload)
            results["bare_gateway_client"] = scenarios.bare_subscriber(env, workload, client="gateway")
            results["influx_write"] = scenarios.influx_write(env, workload)
            _end_part(json_path, results, env)
        if "drain" in wanted:
            click.echo("bench: backlog drain, 1 gateway", err=True)
            results["drain_1"] = scenarios.backlog_drain(env, workload, scenarios.DrainOptions(processes=1))
            _end_part(json_path, results, env)
        if "scaleout" in wanted:
            click.echo("bench: backlog drain, 2 gateways ($share)", err=True)
            results["drain_2"] = scenarios.backlog_drain(env, workload, scenarios.DrainOptions(processes=2))
            _end_part(json_path, results, env)
        if "ramp" in wanted:
            click.echo(f"bench: live-ingest ramp, {ramp_start:,} to {ramp_max:,} readings/s", err=True)
            results["ramp"] = live_ramp(env, ramp)
            _end_part(json_path, results, env)
        if "alerts" in wanted:
            click.echo(
                f"bench: alert latency under {background_rate:,} readings/s, {alert_gateways} gateway(s)",
                err=True,
            )
            results["alert_latency"] = alert_latency(
                env, probes=alert_probes, background_rate=background_rate, gateways=alert_gateways
            )
            _end_part(json_path, results, env)
        if "web" in wanted:
            click.echo("bench: web pages", err=True)
            results["web"] = web_response_times(env, alerts=inbox_alerts, requests_per_page=web_requests)
    finally:
        env.close()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    results["ratios"] = _ratios(results)
    _save(json_path, results)
    click.echo(render_table(results))
    click.echo(f"\nfigures written to {json_path}", err=True)


def _end_part(json_path: Path, results: dict[str, object], env: BenchEnv) -> None:
    """A part has ended: save what is measured so far, and end the part's persistent sessions so that
    later parts do not feed them (see `BenchEnv.discard_sessions`)."""
    _save(json_path, results)
    env.discard_sessions()


def _save(json_path: Path, results: dict[str, object]) -> None:
    """Write what is measured so far (a later part failing keeps the earlier figures)."""
    json_path.write_text(json.dumps(results, indent=2) + "\n")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _ratios(results: dict[str, object]) -> dict[str, float]:
    """The gateway's drain rates as shares of the limits measured in the same run."""
    ratios: dict[str, float] = {}
    bare = results.get("bare_subscriber")
    bare_gateway = results.get("bare_gateway_client")
    influx = results.get("influx_write")
    for key in ("drain_1", "drain_2"):
        drain = results.get(key)
        if not isinstance(drain, dict):
            continue
        rate = float(drain["readings_per_s"])
        if isinstance(bare, dict):
            ratios[f"{key}_vs_bare_subscriber"] = round(rate / float(bare["msgs_per_s"]), 3)
        if isinstance(bare_gateway, dict):
            ratios[f"{key}_vs_bare_gateway_client"] = round(rate / float(bare_gateway["msgs_per_s"]), 3)
        if isinstance(influx, dict):
            ratios[f"{key}_vs_influx_write"] = round(rate / float(influx["points_per_s"]), 3)
    one, two = results.get("drain_1"), results.get("drain_2")
    if isinstance(one, dict) and isinstance(two, dict):
        ratios["two_vs_one_gateway"] = round(float(two["readings_per_s"]) / float(one["readings_per_s"]), 3)
    return ratios


def register(cli: click.Group) -> None:
    """Add `rpmgw bench` to the CLI."""
    cli.add_command(bench)
