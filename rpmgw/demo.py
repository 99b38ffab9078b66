"""`rpmgw demo`: the whole product on one machine, with its own broker and InfluxDB.

Everything lives under one directory (default ./data/demo): servers' data, logs and pid files. A
second run first stops whatever a previous, killed run left behind there, so it is safe to run twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from alerts.lifecycle import list_alerts
from alerts.notify.tables import OutboxMessage
from gateway.errors import StorageError
from gateway.quarantine import Quarantine
from gateway.timeseries import open_store
from gateway.timeseries.base import ReadingStore
from rpmgw.db import make_engine, session_factory, upgrade
from rpmgw.demo_seed import DEMO_ADMIN, DEMO_DOCTOR, DEMO_PASSWORDS, DEMO_SEED, seed_demo
from rpmgw.errors import ServerStartError
from rpmgw.models import Device
from rpmgw.servers import die_with_parent
from rpmgw.servers.influxdb import InfluxServer
from rpmgw.servers.mosquitto import MosquittoServer
from rpmgw.settings import Settings, load_settings


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What `rpmgw demo` was asked for."""

    base_dir: Path
    mqtt_port: int
    influx_port: int
    web_port: int
    patients: int
    duration: float | None = None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers themselves do: a port left in TIME_WAIT by the previous run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Demo:
    """Starts the servers and processes in order and stops them in reverse order."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.base = options.base_dir
        self.pid_dir = self.base / "pids"
        self.log_dir = self.base / "logs"
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()

    def run(self) -> None:
        """Run until Ctrl-C / SIGTERM (or --duration), then stop everything."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.pid_dir.mkdir(exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self._stop_leftovers()
        for option, port in (
            ("--mqtt-port", self.options.mqtt_port),
            ("--influx-port", self.options.influx_port),
            ("--web-port", self.options.web_port),
        ):
            if not _port_free(port):
                raise ServerStartError(
                    f"port {port} for the demo is taken by another program; choose another with {option}"
                )
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        mosquitto: MosquittoServer | None = None
        influx: InfluxServer | None = None
        try:
            click.echo(f"starting Mosquitto on 127.0.0.1:{self.options.mqtt_port} ...")
            mosquitto = MosquittoServer.start(
                self.base / "mosquitto", self.options.mqtt_port, die_with_parent=True
            )
            self._write_pid("mosquitto", mosquitto.process.pid)
            click.echo(f"starting InfluxDB 1.x on 127.0.0.1:{self.options.influx_port} ...")
            influx = InfluxServer.start(
                self.base / "influxdb", http_port=self.options.influx_port, die_with_parent=True
            )
            self._write_pid("influxd", influx.process.pid)
            env = {**self._child_env(influx.url), **mosquitto.client_env(mosquitto.gateway_credentials)}
            settings = load_settings(
                data_dir=self.base,
                mqtt={"port": self.options.mqtt_port},
                influx={"url": influx.url, "version": "1"},
            )
            upgrade(settings.database_url)
            sessions = session_factory(make_engine(settings.database_url))
            seed_demo(sessions, settings.database_url, patients=self.options.patients, seed=DEMO_SEED)
            self._spawn("gateway", ["gateway"], env)
            self._spawn("web", ["web"], env)
            self._spawn(
                "sim",
                [
                    "sim",
                    "--enrol",
                    "--patients",
                    str(self.options.patients),
                    "--seed",
                    str(DEMO_SEED),
                    "--faults",
                    "malformed=0.02,duplicate=0.02,censored=0.01",
                ],
                {**env, **mosquitto.client_env(mosquitto.publisher_credentials)},
            )
            # The worker's no-data and silent-device rules would fire for devices enrolled "long ago"
            # that simply have not sent their first demo reading yet: start it once every device spoke.
            self._wait_devices_seen(sessions, timeout=60)
            self._spawn("worker", ["worker"], env)
            self._banner(influx.url)
            self._watch(settings)
        finally:
            self._stop_children()
            if influx is not None:
                influx.stop()
            if mosquitto is not None:
                mosquitto.stop()
            for pid_file in self.pid_dir.glob("*.pid"):
                pid_file.unlink(missing_ok=True)
            click.echo("demo stopped: broker, InfluxDB, gateway and simulator are down.")

    def _wait_devices_seen(self, sessions: sessionmaker[Session], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            with sessions() as session:
                silent = session.scalar(
                    select(func.count()).select_from(Device).where(Device.last_seen_at.is_(None))
                )
            if not silent:
                return
            self._stop.wait(1.0)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _child_env(self, influx_url: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "RPMGW_DATA_DIR": str(self.base),
                "RPMGW_MQTT__HOST": "127.0.0.1",
                "RPMGW_MQTT__PORT": str(self.options.mqtt_port),
                "RPMGW_INFLUX__URL": influx_url,
                "RPMGW_INFLUX__VERSION": "1",
                "RPMGW_WEB__HOST": "127.0.0.1",
                "RPMGW_WEB__PORT": str(self.options.web_port),
            }
        )
        env.pop("RPMGW_DATABASE__URL", None)
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log_file = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "rpmgw", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log_file.close()
        self._children[name] = process
        self._write_pid(name, process.pid)

    def _banner(self, influx_url: str) -> None:
        click.echo(
            "\n".join(
                [
                    "",
                    "rpm-gateway demo is running:",
                    f"  doctors' web  http://127.0.0.1:{self.options.web_port}/   login: {DEMO_DOCTOR} / "
                    f"{DEMO_PASSWORDS[DEMO_DOCTOR]}  (admin: {DEMO_ADMIN} / {DEMO_PASSWORDS[DEMO_ADMIN]})",
                    f"  MQTT broker   127.0.0.1:{self.options.mqtt_port}  (topic rpm/devices/+/readings)",
                    f"  InfluxDB      {influx_url}  (database rpm)",
                    f"  logs          {self.log_dir}/{{gateway,worker,web,sim}}.log",
                    f"  {self.options.patients} simulated patients publish blood pressure and glucose readings.",
                    "  In another terminal (same directory):",
                    f"    export RPMGW_DATA_DIR={self.base} RPMGW_MQTT__PORT={self.options.mqtt_port}"
                    f" RPMGW_INFLUX__URL={influx_url}",
                    "    .venv/bin/rpmgw status           # readings stored, quarantine",
                    "    .venv/bin/rpmgw quarantine list  # rejected payloads with reasons",
                    "    .venv/bin/rpmgw alerts list      # open alerts (ack: rpmgw alerts ack ID --by ...)",
                    "    .venv/bin/rpmgw sms list         # texts to patients and doctors (recorded, not sent)",
                    f"    curl -G {influx_url}/query --data-urlencode db=rpm "
                    "--data-urlencode 'q=SELECT * FROM blood_pressure ORDER BY time DESC LIMIT 5'",
                    "Ctrl-C stops everything.",
                    "",
                ]
            )
        )

    def _watch(self, settings: Settings) -> None:
        store = open_store(settings.influx)
        sessions = session_factory(make_engine(settings.database_url))
        quarantine = Quarantine(sessions)
        started = time.monotonic()
        try:
            while not self._stop.wait(5.0):
                for name, process in self._children.items():
                    if process.poll() is not None and name in ("gateway", "worker", "web"):
                        click.echo(
                            f"the {name} exited with code {process.returncode}; see {self.log_dir}/{name}.log"
                        )
                        return
                self._print_status(store, quarantine, sessions)
                if self.options.duration is not None and time.monotonic() - started >= self.options.duration:
                    return
        finally:
            store.close()

    def _print_status(
        self, store: ReadingStore, quarantine: Quarantine, sessions: sessionmaker[Session]
    ) -> None:
        try:
            summary = store.summary()
        except StorageError as exc:
            click.echo(f"InfluxDB not answering: {exc}")
            return
        counts = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.counts.items())) or "none yet"
        rejected = sum(quarantine.counts_by_reason().values())
        with sessions() as session:
            open_alerts = list_alerts(session, state="open")
            texts = session.scalar(select(func.count()).select_from(OutboxMessage)) or 0
        by_severity = Counter(alert.severity for alert in open_alerts)
        alerts = ", ".join(
            f"{by_severity[s]} {s}" for s in ("critical", "urgent", "routine") if by_severity[s]
        )
        click.echo(
            f"[{time.strftime('%H:%M:%S')}] readings stored: {counts}; quarantined: {rejected}; "
            f"open alerts: {alerts or 'none'}; texts: {texts}"
        )

    def _stop_children(self) -> None:
        for process in self._children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self._children.items():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                click.echo(f"{name} did not stop within 20 s; killing it")
                process.kill()
                process.wait()

    def _write_pid(self, name: str, pid: int) -> None:
        (self.pid_dir / f"{name}.pid").write_text(str(pid))

    def _stop_leftovers(self) -> None:
        """Stop processes a previous run (killed without cleanup) left behind in this directory."""
        for pid_file in self.pid_dir.glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                if "rpmgw" in cmdline or str(self.base) in cmdline:
                    click.echo(f"stopping {pid_file.stem} (pid {pid}) left over from an earlier run")
                    os.kill(pid, signal.SIGTERM)
                    _wait_gone(pid, 15)
            pid_file.unlink(missing_ok=True)


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
