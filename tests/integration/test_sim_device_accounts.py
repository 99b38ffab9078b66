"""`rpmgw sim` with per-device broker accounts: each simulated device logs in as itself."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from device_sim.accounts import load_device_passwords
from device_sim.cli import sim
from device_sim.errors import BrokerUnreachable
from device_sim.run import SimConfig, run_simulation
from rpmgw.broker_accounts import usernames
from rpmgw.servers.mosquitto import MosquittoServer
from rpmgw.settings import MqttSettings
from tests.helpers import wait_until
from tests.integration.test_broker_security import Client

ARGS = ["--patients", "3", "--seed", "5"]


def _create_accounts(broker: MosquittoServer, credentials: Path) -> dict[str, str]:
    result = CliRunner().invoke(
        sim,
        [
            *ARGS,
            "--device-credentials",
            str(credentials),
            "--password-file",
            str(broker.password_file),
            "--accounts-only",
        ],
    )
    assert result.exit_code == 0, result.output
    broker.reload()
    return load_device_passwords(credentials)


def test_every_device_publishes_under_its_own_account(
    mosquitto_broker: MosquittoServer, tmp_path: Path
) -> None:
    credentials = tmp_path / "devices.txt"
    passwords = _create_accounts(mosquitto_broker, credentials)
    assert passwords and set(passwords) <= set(usernames(mosquitto_broker.password_file))
    assert credentials.stat().st_mode & 0o077 == 0
    assert _create_accounts(mosquitto_broker, credentials) == passwords  # a second run keeps them

    gateway = Client(mosquitto_broker.gateway_credentials)
    try:
        assert not gateway.connect(mosquitto_broker.port).is_failure
        gateway.subscribe("rpm/devices/+/readings")
        env = {"RPMGW_MQTT__HOST": mosquitto_broker.host, "RPMGW_MQTT__PORT": str(mosquitto_broker.port)}
        result = CliRunner().invoke(
            sim,
            [
                *ARGS,
                "--device-credentials",
                str(credentials),
                "--rate",
                "50",
                "--count",
                "30",
                "--no-progress",
            ],
            env=env,
        )
        assert result.exit_code == 0, result.output
        wait_until(lambda: len(gateway.received()) >= 30, 30, "30 readings at the gateway")
    finally:
        gateway.close()
    senders = {
        json.loads(payload)["device_id"] for _, payload in gateway.received() if payload.startswith(b"{")
    }
    assert senders == set(passwords)
    log = mosquitto_broker.log_path.read_text()
    assert all(f"u'{device_id}'" in log for device_id in passwords)


def test_a_device_with_another_devices_password_cannot_connect(
    mosquitto_broker: MosquittoServer, tmp_path: Path
) -> None:
    passwords = _create_accounts(mosquitto_broker, tmp_path / "devices.txt")
    ids = sorted(passwords)
    swapped = {device_id: passwords[ids[(i + 1) % len(ids)]] for i, device_id in enumerate(ids)}
    config = SimConfig(patients=3, seed=5, count=5, connect_deadline=2.0, device_passwords=swapped)
    mqtt = MqttSettings(host=mosquitto_broker.host, port=mosquitto_broker.port)
    with pytest.raises(BrokerUnreachable):
        asyncio.run(run_simulation(config, mqtt, handle_signals=False))


def test_per_device_accounts_need_a_connection_per_device() -> None:
    with pytest.raises(ValidationError, match="one connection per device"):
        SimConfig(patients=3, connections=1, device_passwords={})


def test_accounts_only_needs_the_files() -> None:
    result = CliRunner().invoke(sim, [*ARGS, "--accounts-only"])
    assert result.exit_code == 2 and "--device-credentials" in result.output
