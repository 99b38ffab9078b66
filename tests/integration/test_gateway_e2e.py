"""End to end with real processes: simulator -> Mosquitto -> `rpmgw gateway` -> InfluxDB 1.6.7 + quarantine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.quarantine import Quarantine
from gateway.timeseries.influx_v1 import InfluxV1Store
from rpmgw.admin import add_patient, enrol_device
from rpmgw.db import make_engine, session_factory, upgrade
from rpmgw.servers.influxdb import InfluxServer
from rpmgw.servers.mosquitto import MosquittoServer
from rpmgw.settings import InfluxSettings
from tests.helpers import RpmgwProcess, bp_payload, encode, publish_all, readings_topic, wait_until

pytestmark = pytest.mark.slow
PROBE_DEVICE = "probe-1"


@dataclass
class Deployment:
    """One broker, one InfluxDB database, one SQLite database, and the environment that wires them."""

    broker: MosquittoServer
    influx: InfluxServer
    db_url: str
    database: str
    env: dict[str, str]
    tmp: Path

    def store(self) -> InfluxV1Store:
        return InfluxV1Store(InfluxSettings(url=self.influx.url, database=self.database))

    def quarantine(self) -> Quarantine:
        return Quarantine(session_factory(make_engine(self.db_url)))

    def stored_counts(self) -> Counter[str]:
        with self.store() as store:
            counts: Counter[str] = Counter()
            for kind in ("blood_pressure", "glucose"):
                counts.update(store.msg_id_counts(kind))
            return counts

    def quarantined(self) -> int:
        return sum(self.quarantine().counts_by_reason().values())

    def start_gateway(self, name: str = "gateway") -> RpmgwProcess:
        return RpmgwProcess(["gateway"], self.env, self.tmp / f"{name}.log")

    def enrol(self, device_id: str, patient_id: str = "P-E2E-1") -> None:
        from datetime import UTC, datetime, timedelta

        sessions = session_factory(make_engine(self.db_url))
        with sessions.begin() as session:
            add_patient(session, patient_id=patient_id, display_name="Test Patient", phone="+79990000001")
        with sessions.begin() as session:
            enrol_device(
                session,
                device_id=device_id,
                patient_id=patient_id,
                valid_from=datetime.now(UTC) - timedelta(days=30),
                kind="blood_pressure",
            )


@pytest.fixture
def deployment(
    mosquitto_broker: MosquittoServer, influx_server: InfluxServer, tmp_path: Path
) -> Iterator[Deployment]:
    db_url = f"sqlite:///{tmp_path / 'rpmgw.sqlite3'}"
    upgrade(db_url)
    database = f"e2e_{uuid.uuid4().hex[:12]}"
    env = {
        "RPMGW_MQTT__HOST": mosquitto_broker.host,
        "RPMGW_MQTT__PORT": str(mosquitto_broker.port),
        "RPMGW_MQTT__USERNAME": mosquitto_broker.gateway_credentials.username,
        "RPMGW_MQTT__PASSWORD": mosquitto_broker.gateway_credentials.password,
        "RPMGW_MQTT__CLIENT_ID": f"gw-{uuid.uuid4().hex[:8]}",
        "RPMGW_INFLUX__URL": influx_server.url,
        "RPMGW_INFLUX__DATABASE": database,
        "RPMGW_DATABASE__URL": db_url,
        "RPMGW_DATA_DIR": str(tmp_path),
        "RPMGW_GATEWAY__BATCH_MAX_WAIT": "0.05",
    }
    yield Deployment(mosquitto_broker, influx_server, db_url, database, env, tmp_path)


def wait_gateway_subscribed(deployment: Deployment, gateway: RpmgwProcess) -> None:
    """Publish probes from an unenrolled device until one lands in quarantine: the pipeline is live."""
    before = deployment.quarantined()

    def probe_arrived() -> bool:
        assert gateway.alive, f"gateway died:\n{gateway.log()[-3000:]}"
        publish_all(
            deployment.broker.host,
            deployment.broker.port,
            [(readings_topic(PROBE_DEVICE), encode(bp_payload(PROBE_DEVICE)))],
        )
        return deployment.quarantined() > before

    wait_until(probe_arrived, 60, "the gateway to quarantine a probe from an unenrolled device", interval=0.5)


def test_simulated_patients_end_to_end(deployment: Deployment) -> None:
    gateway = deployment.start_gateway()
    try:
        wait_gateway_subscribed(deployment, gateway)
        probes = deployment.quarantined()
        manifest_path = deployment.tmp / "manifest.jsonl"
        sim = subprocess.run(
            [
                sys.executable,
                "-m",
                "rpmgw",
                "sim",
                "--enrol",
                "--patients",
                "40",
                "--seed",
                "42",
                "--count",
                "3000",
                "--rate",
                "1500",
                "--faults",
                "malformed=0.05,duplicate=0.05,skew=0.03,offline=0.03,censored=0.03",
                "--manifest",
                str(manifest_path),
            ],
            env={
                **os.environ,
                **deployment.env,
                **deployment.broker.client_env(deployment.broker.publisher_credentials),
            },
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sim.returncode == 0, sim.stderr[-3000:]
        lines = [json.loads(line) for line in manifest_path.read_text().splitlines() if line.strip()]
        assert len(lines) >= 3000
        expected_stored = {line["msg_id"] for line in lines if line["expected"] == "stored"}
        expected_rejected = Counter(line["reason"] for line in lines if line["expected"] == "rejected")
        assert sum(1 for line in lines if line["duplicate"]) > 0, "the run should include redeliveries"
        assert sum(expected_rejected.values()) > 0, "the run should include malformed payloads"

        wait_until(
            lambda: (
                set(deployment.stored_counts()) >= expected_stored
                and deployment.quarantined() - probes >= sum(expected_rejected.values())
            ),
            120,
            "every valid reading stored and every invalid one quarantined",
            interval=0.5,
        )
        counts = deployment.stored_counts()
        assert set(counts) == expected_stored, "stored msg_ids differ from the valid ones published"
        doubled = {msg_id: n for msg_id, n in counts.items() if n != 1}
        assert doubled == {}, f"readings stored more than once: {list(doubled.items())[:5]}"

        records = [r for r in deployment.quarantine().list(limit=100_000) if r.device_id != PROBE_DEVICE]
        assert Counter(record.reason for record in records) == expected_rejected
        assert all(record.detail for record in records), "every quarantined payload carries a reason text"
        assert gateway.alive, "the gateway must survive the faults"
    finally:
        exit_code = gateway.terminate()
    assert exit_code == 0, gateway.log()[-3000:]


def test_backlog_queued_while_gateway_is_down_is_delivered_once(deployment: Deployment) -> None:
    deployment.enrol("bp-backlog-1")
    gateway = deployment.start_gateway("gateway-1")
    wait_gateway_subscribed(deployment, gateway)
    assert gateway.terminate() == 0

    # The broker keeps the gateway's persistent session: readings published now wait there.
    payloads = [bp_payload("bp-backlog-1", minutes_ago=i / 10) for i in range(2000)]
    publish_all(
        deployment.broker.host,
        deployment.broker.port,
        [(readings_topic("bp-backlog-1"), encode(p)) for p in payloads],
    )

    gateway = deployment.start_gateway("gateway-2")
    try:
        expected = {p["msg_id"] for p in payloads}
        wait_until(lambda: set(deployment.stored_counts()) >= expected, 60, "the backlog to be stored")
        wait_gateway_subscribed(deployment, gateway)
        assert all(n == 1 for n in deployment.stored_counts().values())
    finally:
        assert gateway.terminate() == 0


def test_sigterm_under_load_then_restart_stores_everything_once(deployment: Deployment) -> None:
    deployment.enrol("bp-load-1")
    gateway = deployment.start_gateway("gateway-1")
    wait_gateway_subscribed(deployment, gateway)
    payloads = [bp_payload("bp-load-1", minutes_ago=i / 100) for i in range(20_000)]
    messages = [(readings_topic("bp-load-1"), encode(p)) for p in payloads]
    publisher = threading.Thread(
        target=publish_all, args=(deployment.broker.host, deployment.broker.port, messages, 120)
    )
    publisher.start()
    try:
        wait_until(lambda: len(deployment.stored_counts()) >= 1000, 60, "the first batches to be stored")
        assert publisher.is_alive(), "the SIGTERM must land while readings are still being published"
        assert gateway.terminate() == 0, gateway.log()[-3000:]
        assert "SIGTERM received" in gateway.log()
        assert "stopped: flushed" in gateway.log()
    finally:
        publisher.join(180)

    gateway = deployment.start_gateway("gateway-2")
    try:
        wait_gateway_subscribed(deployment, gateway)
        expected = {p["msg_id"] for p in payloads}
        wait_until(lambda: set(deployment.stored_counts()) >= expected, 90, "every reading after the restart")
        counts = deployment.stored_counts()
        assert set(counts) == expected
        assert all(n == 1 for n in counts.values())
    finally:
        assert gateway.terminate() == 0


def test_influxdb_down_nothing_is_acknowledged_and_all_arrives_later(
    deployment: Deployment, tmp_path: Path
) -> None:
    own_influx = InfluxServer.start(tmp_path / "own-influx")
    env = {
        **deployment.env,
        "RPMGW_INFLUX__URL": own_influx.url,
        "RPMGW_GATEWAY__STORAGE_RETRY_MAX_DELAY": "1",
    }
    deployment = Deployment(
        deployment.broker, own_influx, deployment.db_url, deployment.database, env, tmp_path
    )
    deployment.enrol("bp-outage-1")
    gateway = deployment.start_gateway()
    try:
        wait_gateway_subscribed(deployment, gateway)
        own_influx.stop()
        payloads = [bp_payload("bp-outage-1", minutes_ago=i / 10) for i in range(500)]
        publish_all(
            deployment.broker.host,
            deployment.broker.port,
            [(readings_topic("bp-outage-1"), encode(p)) for p in payloads],
        )
        wait_until(lambda: "not stored" in gateway.log(), 30, "the gateway to report the failed write")
        assert gateway.alive, "the gateway must stay up while InfluxDB is down"

        restarted = InfluxServer.start(
            own_influx.base_dir, http_port=own_influx.http_port, rpc_port=own_influx.rpc_port
        )
        deployment.influx = restarted
        try:
            expected = {p["msg_id"] for p in payloads}
            wait_until(
                lambda: set(deployment.stored_counts()) >= expected,
                90,
                "the readings after InfluxDB returned",
            )
            assert all(n == 1 for n in deployment.stored_counts().values())
            # Logged once the whole batch went through (the rules after the write): it may lag the points.
            wait_until(lambda: "storage is back" in gateway.log(), 30, "the gateway to report storage back")
        finally:
            assert gateway.terminate() == 0
            restarted.stop()
    finally:
        gateway.kill()
        own_influx.stop()
