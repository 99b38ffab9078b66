"""Long-running processes: `rpmgw gateway` and `rpmgw demo`."""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from types import FrameType

import click

from gateway.health import Check, HealthServer
from rpmgw import heap
from rpmgw.cli import SettingsContext, pass_settings
from rpmgw.settings import Settings

log = logging.getLogger(__name__)

# Phone numbers in E.164 (+ and 8-15 digits, maybe spaced): a last line of defence, since log calls
# are written not to carry them.
_PHONE = re.compile(r"\+\d[\d ()-]{6,18}\d")
# Attributes a log call may attach with `extra=` that the JSON lines carry as their own fields.
CONTEXT_FIELDS = ("device_id", "patient_id", "alert_id", "msg_id", "batch_size")


def redact(text: str) -> str:
    """The text with anything that looks like a phone number replaced."""
    return _PHONE.sub("[phone]", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the context fields present."""

    converter = time.gmtime  # type: ignore[assignment]  # typeshed: gmtime(secs=None) fits

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class RedactingFormatter(logging.Formatter):
    """The text format, with phone numbers replaced."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(settings: Settings) -> None:
    """Level and format (RPMGW_LOG_LEVEL, RPMGW_LOG_FORMAT) for every handler of the root logger."""
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    formatter: logging.Formatter
    if settings.log_format == "json":
        formatter = JsonFormatter()
    else:
        formatter = RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter)


def _start_health(host: str, port: int, checks: Mapping[str, Check]) -> None:
    if port:
        HealthServer(host, port, checks=checks).start()


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: finishing the current batch, then exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _stop_when_set(stop: threading.Event, action: Callable[[], None]) -> None:
    """Run `action` (a service's stop) in a helper thread once `stop` is set by a signal."""

    def watch() -> None:
        stop.wait()
        action()

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()


@click.command()
@pass_settings
def gateway(ctx: SettingsContext) -> None:
    """Ingest readings: MQTT -> validate -> resolve patient -> InfluxDB, ack after storage."""
    from gateway.errors import StorageUnavailable
    from gateway.service import build_gateway

    settings = ctx.settings
    configure_logging(settings)
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        service = build_gateway(settings, stop=stop)
    except StorageUnavailable:
        if stop.is_set():  # stopped while still waiting for InfluxDB
            return
        raise
    _stop_when_set(stop, service.stop)
    _start_health(settings.gateway.health_host, settings.gateway.health_port, service.checks)
    heap.settle()
    service.between_batches = heap.Keeper().tidy
    log.info(
        "gateway up: broker %s:%s topic %s, store %s",
        settings.mqtt.host,
        settings.mqtt.port,
        settings.mqtt.topic,
        settings.influx.url,
    )
    service.run()


@click.command()
@click.option("--mqtt-port", default=18830, show_default=True, help="Port of the demo's own Mosquitto.")
@click.option("--influx-port", default=18086, show_default=True, help="HTTP port of the demo's own InfluxDB.")
@click.option("--web-port", default=18080, show_default=True, help="Port of the doctors' web application.")
@click.option("--patients", default=20, show_default=True, help="Simulated patients.")
@click.option(
    "--dir",
    "base_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("data/demo"),
    show_default=True,
    help="Where the demo keeps its servers' data and logs.",
)
@click.option(
    "--duration", type=float, default=None, help="Stop after this many seconds (default: until Ctrl-C)."
)
def demo(
    mqtt_port: int, influx_port: int, web_port: int, patients: int, base_dir: Path, duration: float | None
) -> None:
    """Start everything: broker, InfluxDB, gateway and simulated patients; Ctrl-C stops it all."""
    from rpmgw.demo import Demo, DemoOptions

    Demo(
        DemoOptions(
            base_dir=base_dir.resolve(),
            mqtt_port=mqtt_port,
            influx_port=influx_port,
            web_port=web_port,
            patients=patients,
            duration=duration,
        )
    ).run()


@click.command()
@pass_settings
def worker(ctx: SettingsContext) -> None:
    """Time-driven rules (no data, confirmation windows, escalation) and SMS delivery with retries."""
    from alerts.notify.delivery import Delivery
    from alerts.notify.notifier import build_notifier
    from alerts.thresholds import load_clinic_thresholds
    from alerts.worker import Worker
    from gateway.health import database_check
    from gateway.service import utc_now
    from rpmgw.db import check_current, make_engine, session_factory

    settings = ctx.settings
    configure_logging(settings)
    engine = make_engine(settings.database_url)
    check_current(engine)
    sessions = session_factory(engine)
    service = Worker(
        sessions=sessions,
        delivery=Delivery(
            sessions,
            build_notifier(settings),
            settings.sms,
            clock=utc_now,
            default_timezone=settings.timezone,
            in_flight_timeout=timedelta(seconds=settings.sms.in_flight_timeout_seconds),
        ),
        clinic=load_clinic_thresholds(settings.alerts.thresholds_file),
        settings=settings.alerts,
        clock=utc_now,
    )
    stop = threading.Event()
    _stop_on_signals(stop)
    _stop_when_set(stop, service.stop)
    _start_health(
        settings.gateway.health_host, settings.alerts.worker_health_port, {"database": database_check(engine)}
    )
    log.info(
        "worker up: time rules every %.1f s, texts looked for every %.2f s, SMS back end %s",
        settings.alerts.worker_interval_seconds,
        settings.alerts.delivery_interval_seconds,
        settings.sms.backend,
    )
    heap.settle()
    service.run()


@click.command()
@pass_settings
def web(ctx: SettingsContext) -> None:
    """Serve the web application with waitress on RPMGW_WEB__HOST:RPMGW_WEB__PORT."""
    import waitress

    from web import create_app

    settings = ctx.settings
    configure_logging(settings)
    log.info("web on http://%s:%s/", settings.web.host, settings.web.port)
    app = create_app(settings)
    heap.settle()
    waitress.serve(app, host=settings.web.host, port=settings.web.port, threads=8)


def register(cli: click.Group) -> None:
    """Add the long-running commands to the CLI."""
    cli.add_command(gateway)
    cli.add_command(worker)
    cli.add_command(web)
    cli.add_command(demo)
