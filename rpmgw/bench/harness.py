"""The bench's private deployment: its own broker, InfluxDB and database, enrolled devices, gateway processes.

Everything lives under one directory and on free ports of 127.0.0.1; `BenchEnv.close()` stops it all.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import requests
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from alerts.notify.tables import OutboxMessage
from alerts.tables import Acknowledgement, Alert, AlertEvent
from gateway.mqtt import BurstClient
from rpmgw.bench.errors import BenchError
from rpmgw.db import make_engine, session_factory, upgrade
from rpmgw.models import Device, Enrolment, Patient, QuarantinedMessage
from rpmgw.servers import free_port
from rpmgw.servers.influxdb import InfluxServer
from rpmgw.servers.mosquitto import MosquittoServer

READINGS_TOPIC = "rpm/devices/{device}/readings"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `condition` until true; BenchError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    if not condition():
        raise BenchError(f"timed out after {timeout:g} s waiting for {what}")


def device_id(index: int) -> str:
    """The bench's device ids: bench-d000001..."""
    return f"bench-d{index:06d}"


def patient_id(index: int) -> str:
    """The patient of device `index`."""
    return f"bench-p{index:06d}"


def bp_payload(device: str, measured_at: datetime, systolic: int = 122, diastolic: int = 78) -> bytes:
    """A valid blood-pressure message (wire contract v1) with a fresh msg_id."""
    return json.dumps(
        {
            "v": 1,
            "msg_id": str(uuid.uuid4()),
            "device_id": device,
            "type": "blood_pressure",
            "measured_at": measured_at.isoformat(timespec="milliseconds"),
            "systolic": systolic,
            "diastolic": diastolic,
            "pulse": 70,
        }
    ).encode()


@dataclass(frozen=True, slots=True)
class Workload:
    """Messages to publish, and how many of them are valid (the rest are malformed on purpose)."""

    messages: list[tuple[str, bytes]]
    valid: int


def backlog_workload(
    count: int, devices: int, invalid_ratio: float, critical_ratio: float = 0.0, seed: int = 7
) -> Workload:
    """`count` readings spread over `devices` devices and the last 7 days; every 1/`invalid_ratio`-th
    message is malformed (quarantined as not JSON), and about a `critical_ratio` share of the readings
    are severe blood pressure (they open alerts: whether any is opened twice is then worth asking)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    every = round(1 / invalid_ratio) if invalid_ratio > 0 else 0
    messages = []
    invalid = 0
    for index in range(count):
        device = device_id(index % devices)
        topic = READINGS_TOPIC.format(device=device)
        if every and index % every == every - 1:
            messages.append((topic, b'{"v": 1, "msg_id": "broken'))
            invalid += 1
            continue
        measured = now - timedelta(minutes=rng.uniform(5, 7 * 24 * 60))
        if rng.random() < critical_ratio:
            pressure = (rng.randint(180, 210), rng.randint(100, 125))
        else:
            pressure = (rng.randint(105, 135), rng.randint(65, 85))
        messages.append((topic, bp_payload(device, measured, *pressure)))
    return Workload(messages, count - invalid)


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_rss_mib(pid: int) -> float:
    """Current resident memory (VmRSS) of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class RpmgwProcess:
    """An `rpmgw <command>` child process with its log file and (optionally) its health port."""

    process: subprocess.Popen[bytes]
    log_path: Path
    health_port: int | None
    started: float

    @classmethod
    def start(
        cls, args: list[str], env: dict[str, str], log_path: Path, health_port: int | None
    ) -> RpmgwProcess:
        """Spawn `python -m rpmgw ARGS` with `env` added to ours."""
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "rpmgw", *args],
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(process, log_path, health_port, time.monotonic())

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def check_alive(self) -> None:
        """BenchError with the log's tail when the process has exited."""
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"rpmgw process exited with {self.process.returncode}:\n{tail}")

    def metrics(self) -> dict[str, float]:
        """The process's /metrics, as {series name (labels dropped, summed): value}."""
        if self.health_port is None:
            raise BenchError("process has no health port")
        text = requests.get(f"http://127.0.0.1:{self.health_port}/metrics", timeout=5).text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            values[name] = values.get(name, 0.0) + float(value)
        return values

    def ready(self) -> bool:
        """Whether /readyz answers 200."""
        self.check_alive()
        try:
            return requests.get(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):
            return False  # not answering yet (or busy): asked again until the caller's deadline

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, wait, SIGKILL after `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class BenchEnv:
    """The servers and the database of one bench run."""

    base_dir: Path
    broker: MosquittoServer
    influx: InfluxServer
    db_url: str
    devices: int
    processes: list[RpmgwProcess] = field(default_factory=list)
    # Client ids of the persistent sessions made so far (gateways, bare subscribers): `discard_sessions`.
    sessions: set[str] = field(default_factory=set)

    @functools.cached_property
    def engine(self) -> Engine:
        """The database engine of the bench's own queries (one pool for the run; `close` disposes it)."""
        return make_engine(self.db_url)

    @functools.cached_property
    def db(self) -> sessionmaker[Session]:
        """Sessions on `engine`."""
        return session_factory(self.engine)

    @classmethod
    def start(cls, base_dir: Path, *, devices: int, db_url: str | None) -> BenchEnv:
        """Start a broker and InfluxDB under `base_dir`, migrate the database, enrol `devices` devices."""
        base_dir.mkdir(parents=True, exist_ok=True)
        url = db_url or f"sqlite:///{(base_dir / 'rpmgw.sqlite3').resolve()}"
        upgrade(url)
        broker = MosquittoServer.start(base_dir / "mosquitto")
        try:
            influx = InfluxServer.start(base_dir / "influxdb")
        except Exception:
            broker.stop()
            raise
        env = cls(base_dir, broker, influx, url, devices)
        env.enrol(devices)
        return env

    def enrol(self, devices: int) -> None:
        """Patients bench-p*, devices bench-d* 0..devices-1, one enrolment each (skips those present)."""
        sessions = self.db
        with sessions() as session:
            have = session.scalar(select(func.count()).select_from(Device).where(Device.id.like("bench-d%")))
        self.enrol_range(min(int(have or 0), devices), devices)

    def enrol_range(self, start: int, stop: int, *, days_ago: float = 400) -> None:
        """Patients, devices and enrolments for indices start..stop-1 (bulk inserts), enrolled `days_ago`."""
        sessions = self.db
        since = datetime.now(UTC) - timedelta(days=days_ago)
        with sessions.begin() as session:
            for chunk in _chunks(range(start, stop), 5_000):
                session.execute(
                    insert(Patient),
                    [
                        {
                            "id": patient_id(i),
                            "display_name": f"Bench Patient {i}",
                            "phone": f"+7999{i % 10_000_000:07d}",
                            "timezone": "UTC",
                        }
                        for i in chunk
                    ],
                )
                session.execute(
                    insert(Device), [{"id": device_id(i), "kind": "blood_pressure"} for i in chunk]
                )
                session.execute(
                    insert(Enrolment),
                    [
                        {"device_id": device_id(i), "patient_id": patient_id(i), "valid_from": since}
                        for i in chunk
                    ],
                )

    def reset_alerts(self) -> None:
        """Delete every alert with its events, acknowledgement and texts: the drains' severe readings
        open alerts of the enrolled patients, and each part starts with none, as it did before they did."""
        sessions = self.db
        with sessions.begin() as session:
            session.execute(delete(Acknowledgement))
            session.execute(delete(AlertEvent))
            session.execute(delete(OutboxMessage))
            session.execute(delete(Alert))

    def alerts(self) -> dict[str, int]:
        """Rows in the alerts table, by rule."""
        sessions = self.db
        with sessions() as session:
            rows = session.execute(select(Alert.rule, func.count()).group_by(Alert.rule)).all()
        return {rule: int(count) for rule, count in sorted(rows)}

    def quarantined(self) -> int:
        """Rows in the quarantine table."""
        sessions = self.db
        with sessions() as session:
            return int(session.scalar(select(func.count()).select_from(QuarantinedMessage)) or 0)

    def broker_credentials(self, role: str) -> tuple[str, str] | None:
        """(username, password) of the broker's gateway or publisher account, when it has accounts."""
        credentials = getattr(self.broker, f"{role}_credentials", None)
        if credentials is None:
            return None
        return (credentials.username, credentials.password)

    def gateway_env(self, *, database: str, client_id: str, topic: str | None = None) -> dict[str, str]:
        """RPMGW_* variables of a gateway process writing to InfluxDB database `database`."""
        env = {
            "RPMGW_MQTT__HOST": self.broker.host,
            "RPMGW_MQTT__PORT": str(self.broker.port),
            "RPMGW_MQTT__CLIENT_ID": client_id,
            "RPMGW_INFLUX__URL": self.influx.url,
            "RPMGW_INFLUX__DATABASE": database,
            "RPMGW_DATABASE__URL": self.db_url,
            "RPMGW_DATA_DIR": str(self.base_dir),
            "RPMGW_GATEWAY__HEALTH_HOST": "127.0.0.1",
            "RPMGW_GATEWAY__HEALTH_PORT": str(free_port()),
            "RPMGW_LOG_LEVEL": "WARNING",
        }
        credentials = self.broker_credentials("gateway")
        if credentials is not None:
            env["RPMGW_MQTT__USERNAME"], env["RPMGW_MQTT__PASSWORD"] = credentials
        if topic is not None:
            env["RPMGW_MQTT__TOPIC"] = topic
        return env

    def start_rpmgw(self, args: list[str], env: dict[str, str], name: str) -> RpmgwProcess:
        """Start an rpmgw process whose health port is in `env` (gateway) or None."""
        port = (
            env.get("RPMGW_GATEWAY__HEALTH_PORT")
            if args == ["gateway"]
            else env.get("RPMGW_ALERTS__WORKER_HEALTH_PORT")
        )
        process = RpmgwProcess.start(args, env, self.base_dir / f"{name}.log", int(port) if port else None)
        self.processes.append(process)
        if args == ["gateway"] and "RPMGW_MQTT__CLIENT_ID" in env:
            self.sessions.add(env["RPMGW_MQTT__CLIENT_ID"])
        return process

    def discard_sessions(self, timeout: float = 10) -> None:
        """End the persistent sessions made so far (call between parts, once their subscribers stopped).

        A stopped subscriber's session stays on the broker and is queued every later reading of its
        topic: in a full run, each part after the limits fed up to six such sessions, and Mosquitto, which
        saves its whole store every `autosave_interval` (5 s), stalled delivery while it did (alert
        latency spikes of 0.6-1.9 s, about 5 s apart, only in runs with earlier parts). A connection with
        clean start and a session expiry of 0 ends a session (MQTT v5).
        """
        credentials = self.broker_credentials("gateway")
        for client_id in sorted(self.sessions):
            end_session(self.broker.host, self.broker.port, client_id, credentials, timeout)
        self.sessions.clear()

    def mqtt_client(
        self, client_id: str, *, v5: bool = False, role: str = "publisher", burst: bool = False
    ) -> mqtt.Client:
        """A paho client logged in with the broker's `role` account (when the broker has accounts);
        `burst`: the gateway's own client class (buffered reads, batched acks) instead of stock paho."""
        client = (BurstClient if burst else mqtt.Client)(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        credentials = self.broker_credentials(role)
        if credentials is not None:
            client.username_pw_set(*credentials)
        return client

    def publish(self, messages: Sequence[tuple[str, bytes]], *, inflight: int = 2_000) -> float:
        """Publish at QoS 1 as fast as the broker takes them, wait for every PUBACK; returns msgs/s."""
        client = self.mqtt_client(f"bench-pub-{uuid.uuid4().hex[:8]}")
        # The windows below bound what is in flight; with paho's own limit (0: none) paho walks every
        # message in flight on each PUBACK.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        if client.connect(self.broker.host, self.broker.port) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BenchError("publisher could not connect")
        client.loop_start()
        started = time.perf_counter()
        published = 0
        try:
            # Windows of `inflight` bound what paho holds (its outgoing list is a dict of every message).
            for chunk in _chunks(range(len(messages)), inflight):
                infos = [client.publish(messages[i][0], messages[i][1], qos=1) for i in chunk]
                for info in infos:
                    info.wait_for_publish(120)
                    if not info.is_published():
                        raise BenchError("a PUBACK did not arrive within 120 s")
                published += len(infos)
        finally:
            client.disconnect()
            client.loop_stop()
        return published / (time.perf_counter() - started)

    def close(self) -> None:
        """Stop every process and server the bench started."""
        for process in self.processes:
            process.stop(timeout=30)
        if "engine" in self.__dict__:
            self.engine.dispose()
        self.influx.stop()
        self.broker.stop()


def end_session(
    host: str, port: int, client_id: str, credentials: tuple[str, str] | None, timeout: float = 10
) -> None:
    """End `client_id`'s persistent session on the broker: connect with clean start and a session
    expiry of 0 (MQTT v5), then disconnect. Its queued messages go with it."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    if credentials is not None:
        client.username_pw_set(*credentials)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    rc = client.connect(host, port, clean_start=True, properties=properties)
    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
        raise BenchError(f"could not connect to end the session {client_id}: {mqtt.error_string(rc)}")
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise BenchError(f"no CONNACK while ending the session {client_id}")
    finally:
        client.disconnect()
        client.loop_stop()


def _chunks(items: range, size: int) -> Iterator[range]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
