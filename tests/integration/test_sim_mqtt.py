"""The simulator against a real Mosquitto: every acknowledged message arrives, as its manifest line says."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from device_sim.cli import sim
from device_sim.errors import BrokerUnreachable
from device_sim.faults import FaultKind
from device_sim.run import SimConfig, SimReport, run_simulation
from gateway.wire import Rejection, device_from_topic, parse
from rpmgw.admin import list_enrolments, list_patients
from rpmgw.broker_accounts import Credentials
from rpmgw.servers import free_port
from rpmgw.settings import MqttSettings
from tests.fixtures.db import MigratedDb

DEADLINE = 30.0


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    at: datetime


class Collector:
    """A paho subscriber recording every reading and status message, with a condition to wait on."""

    def __init__(self, host: str, port: int, credentials: Credentials) -> None:
        self.messages: list[Received] = []
        self._changed = threading.Condition()
        self._subscribed = False
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(credentials.username, credentials.password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.wait_for(lambda: self._subscribed), "collector could not subscribe"

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe([("rpm/devices/+/readings", 1), ("rpm/devices/+/status", 1)])

    def _on_subscribe(self, *_: Any) -> None:
        with self._changed:
            self._subscribed = True
            self._changed.notify_all()

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        with self._changed:
            self.messages.append(Received(message.topic, bytes(message.payload), datetime.now(UTC)))
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = DEADLINE) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def readings(self) -> list[Received]:
        with self._changed:
            return [m for m in self.messages if m.topic.endswith("/readings")]

    def statuses(self) -> dict[str, list[dict[str, Any]]]:
        by_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with self._changed:
            for message in self.messages:
                if message.topic.endswith("/status"):
                    by_device[message.topic.split("/")[2]].append(json.loads(message.payload))
        return by_device

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collector(mosquitto_broker: Any) -> Iterator[Collector]:
    subscriber = Collector(mosquitto_broker.host, mosquitto_broker.port, mosquitto_broker.gateway_credentials)
    try:
        yield subscriber
    finally:
        subscriber.close()


def _mqtt(broker: Any) -> MqttSettings:
    account = broker.publisher_credentials
    return MqttSettings(
        host=broker.host, port=broker.port, username=account.username, password=account.password
    )


def _manifest(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _verdict(message: Received) -> tuple[str, str | None]:
    result = parse(message.topic, message.payload, now=message.at)
    return ("rejected", result.reason) if isinstance(result, Rejection) else ("stored", None)


def test_every_published_message_arrives_as_the_manifest_says(
    mosquitto_broker: Any, collector: Collector, tmp_path: Path
) -> None:
    manifest_path = tmp_path / "manifest.jsonl"
    config = SimConfig(
        patients=25,
        seed=4,
        rate=400.0,
        count=400,
        start=datetime.now(UTC) - timedelta(days=2),
        speed=500.0,
        faults={kind: 0.03 for kind in FaultKind},
        manifest=manifest_path,
    )
    report = asyncio.run(run_simulation(config, _mqtt(mosquitto_broker), handle_signals=False))

    assert (report.generated, report.acked, report.unacked) == (400, 400, 0)
    assert collector.wait_for(lambda: len(collector.readings()) >= 400), len(collector.readings())
    received = collector.readings()
    manifest = _manifest(manifest_path)
    assert len(received) == len(manifest) == 400

    # Per device, the gateway's verdicts on what arrived are exactly what the manifest announced.
    announced: dict[str, Counter[tuple[str, str | None]]] = defaultdict(Counter)
    for line in manifest:
        assert line["topic"] == f"rpm/devices/{line['device_id']}/readings"
        announced[line["device_id"]][(line["expected"], line["reason"])] += 1
    verdicts: dict[str, Counter[tuple[str, str | None]]] = defaultdict(Counter)
    for message in received:
        device_id = device_from_topic(message.topic)
        assert device_id is not None
        verdicts[device_id][_verdict(message)] += 1
    assert verdicts == announced

    # What the gateway must store: the distinct valid msg_ids, duplicates included once.
    stored_ids = Counter(
        reading.msg_id
        for reading in (parse(m.topic, m.payload, now=m.at) for m in received)
        if not isinstance(reading, Rejection)
    )
    must_store = {line["msg_id"] for line in manifest if line["expected"] == "stored"}
    assert set(stored_ids) == must_store
    assert len(must_store) == report.expected_stored
    duplicates = [line for line in manifest if line["duplicate"]]
    assert len(duplicates) == report.duplicates > 0
    for line in duplicates:
        assert stored_ids[line["msg_id"]] == 2

    faults = {(line["fault"] or "none").split(":")[0] for line in manifest}
    assert faults == {"none", *(kind.value for kind in FaultKind)}

    # Each device announced itself online with battery and firmware, and went offline on a clean stop.
    assert collector.wait_for(
        lambda: len(collector.statuses()) == len({line["device_id"] for line in manifest})
    )
    for device_id, history in collector.statuses().items():
        assert history[0]["online"] is True and history[0]["firmware"], device_id
        assert 0 <= history[0]["battery"] <= 100
    assert collector.wait_for(lambda: all(h[-1] == {"online": False} for h in collector.statuses().values()))


def test_shared_connections_carry_every_device(
    mosquitto_broker: Any, collector: Collector, tmp_path: Path
) -> None:
    config = SimConfig(
        patients=60, seed=2, rate=500.0, count=300, connections=4, manifest=tmp_path / "m.jsonl"
    )
    report = asyncio.run(run_simulation(config, _mqtt(mosquitto_broker), handle_signals=False))

    assert report.acked == 300
    assert collector.wait_for(lambda: len(collector.readings()) >= 300)
    devices = {line["device_id"] for line in _manifest(tmp_path / "m.jsonl")}
    assert devices == {device_from_topic(m.topic) for m in collector.readings()}
    assert len(devices) > 60
    log = mosquitto_broker.log_path.read_text()
    assert "sim-pool-0004" in log and "sim-pool-0005" not in log


def test_stop_waits_for_outstanding_acks_and_reports_what_was_sent(
    mosquitto_broker: Any, collector: Collector, tmp_path: Path
) -> None:
    manifest_path = tmp_path / "manifest.jsonl"
    config = SimConfig(patients=5, seed=3, interval=0.05, manifest=manifest_path)

    async def run_until_stopped() -> SimReport:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_simulation(config, _mqtt(mosquitto_broker), stop=stop, handle_signals=False)
        )
        arrived = await asyncio.to_thread(collector.wait_for, lambda: len(collector.readings()) >= 40)
        assert arrived
        stop.set()
        return await asyncio.wait_for(task, DEADLINE)

    report = asyncio.run(run_until_stopped())

    assert report.interrupted
    assert report.acked >= 40
    assert report.acked == len(_manifest(manifest_path))
    assert report.unacked == report.generated - report.acked
    assert collector.wait_for(lambda: len(collector.readings()) >= report.acked)


def test_an_unreachable_broker_fails_after_the_start_up_deadline() -> None:
    config = SimConfig(patients=2, connect_deadline=1.0)
    with pytest.raises(BrokerUnreachable, match=r"127\.0\.0\.1:\d+ within 1 s .*refused"):
        asyncio.run(run_simulation(config, MqttSettings(port=free_port()), handle_signals=False))


def test_cli_enrols_the_patients_once_and_publishes(
    mosquitto_broker: Any, collector: Collector, migrated_db: MigratedDb, tmp_path: Path
) -> None:
    env = {
        "RPMGW_MQTT__HOST": mosquitto_broker.host,
        "RPMGW_MQTT__PORT": str(mosquitto_broker.port),
        "RPMGW_MQTT__USERNAME": mosquitto_broker.publisher_credentials.username,
        "RPMGW_MQTT__PASSWORD": mosquitto_broker.publisher_credentials.password,
        "RPMGW_DATABASE__URL": migrated_db.url,
        "RPMGW_DATA_DIR": str(tmp_path),
    }
    args = ["--enrol", "--patients", "6", "--seed", "9", "--rate", "100", "--count", "20", "--no-progress"]
    runner = CliRunner()

    first = runner.invoke(sim, [*args, "--manifest", str(tmp_path / "first.jsonl")], env=env)
    assert first.exit_code == 0, first.output
    with migrated_db.sessions() as session:
        enrolments = list_enrolments(session)
        patients = list_patients(session)
    devices = {line["device_id"]: line["patient_id"] for line in _manifest(tmp_path / "first.jsonl")}
    assert len(patients) == 6
    assert f"{len(enrolments)} devices enrolled, 0 already enrolled" in first.output
    assert {e.device_id: e.patient_id for e in enrolments}.items() >= devices.items()
    for enrolment in enrolments:
        assert enrolment.valid_to is None
        # Far enough back that offline-buffered readings resolve to the patient.
        assert enrolment.valid_from < datetime.now(UTC) - timedelta(days=399)
    assert "20 of 20 messages acknowledged" in first.output

    second = runner.invoke(sim, args, env=env)
    assert second.exit_code == 0, second.output
    assert f"0 devices enrolled, {len(enrolments)} already enrolled" in second.output
    with migrated_db.sessions() as session:
        again = list_enrolments(session)
    assert [(e.id, e.device_id, e.patient_id, e.valid_to) for e in again] == [
        (e.id, e.device_id, e.patient_id, e.valid_to) for e in enrolments
    ]
    assert collector.wait_for(lambda: len(collector.readings()) >= 40)
