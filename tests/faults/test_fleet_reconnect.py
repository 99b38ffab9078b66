"""A thousand simulated devices, each on its own connection, survive a broker restart: they come back
with exponential backoff and jitter (not all at once), and a persistent subscriber gets every reading
the devices had acknowledged."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rpmgw.servers.mosquitto import MosquittoServer
from tests.faults.conftest import FaultResult
from tests.helpers import RpmgwProcess, wait_until

FLEET = 1_000
CONNECTED = re.compile(r"^(\S+): New client connected from .* as sim-", re.MULTILINE)


class PersistentSubscriber:
    """The gateway's account with a persistent MQTT v5 session: collects msg_ids of every reading."""

    def __init__(self, broker: MosquittoServer) -> None:
        self.msg_ids: set[str] = set()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="fleet-watch", protocol=mqtt.MQTTv5
        )
        credentials = broker.gateway_credentials
        self.client.username_pw_set(credentials.username, credentials.password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("rpm/devices/+/readings", qos=1)
        self.client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=properties)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        # The simulator publishes only well-formed readings here (no faults configured).
        with contextlib.suppress(ValueError, KeyError, TypeError):
            self.msg_ids.add(str(json.loads(message.payload)["msg_id"]))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _connect_times(log: str) -> list[str]:
    return CONNECTED.findall(log)


def test_a_thousand_devices_reconnect_with_jitter_after_a_broker_restart(
    mosquitto_broker: MosquittoServer, tmp_path: Path, fault_report: Callable[[FaultResult], None]
) -> None:
    broker = mosquitto_broker
    watcher = PersistentSubscriber(broker)
    manifest = tmp_path / "manifest.jsonl"
    env = {**broker.client_env(broker.publisher_credentials), "RPMGW_DATA_DIR": str(tmp_path)}
    sim = RpmgwProcess(
        [
            "sim",
            "--patients",
            str(FLEET),
            "--mix",
            "controlled_htn=1",
            "--seed",
            "11",
            "--rate",
            "300",
            "--duration",
            "40",
            "--manifest",
            str(manifest),
            "--no-progress",
        ],
        env,
        tmp_path / "sim.log",
    )
    try:
        wait_until(
            lambda: len(_connect_times(broker.log_path.read_text())) >= FLEET, 90, "the fleet to connect"
        )
        before = len(_connect_times(broker.log_path.read_text()))
        broker.restart()
        restarted = time.monotonic()
        wait_until(
            lambda: len(_connect_times(broker.log_path.read_text())) - before >= FLEET,
            120,
            "every device to reconnect",
        )
        recovery = time.monotonic() - restarted
        assert sim.process.wait(120) == 0, sim.log()[-3000:]
    finally:
        sim.kill()
    reconnects = _connect_times(broker.log_path.read_text())[before:]
    per_second = Counter(reconnects)
    acked = {json.loads(line)["msg_id"] for line in manifest.read_text().splitlines() if line.strip()}
    wait_until(lambda: acked <= watcher.msg_ids, 60, "every acknowledged reading to reach the subscriber")
    watcher.close()
    lost = len(acked - watcher.msg_ids)
    busiest = max(per_second.values())
    fault_report(
        FaultResult(
            "fleet_reconnect",
            f"{FLEET:,} devices on {FLEET:,} connections; {len(acked):,} readings acknowledged",
            lost,
            None,
            None,
            None,
            recovery,
            f"reconnects spread over {len(per_second)} s, at most {busiest} in one second",
        )
    )
    assert lost == 0
    # Jitter: the fleet does not come back in lockstep within one second.
    assert len(per_second) >= 2 and busiest < FLEET, per_second
