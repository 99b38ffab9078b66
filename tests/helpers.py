"""Helpers shared by the integration tests: waiting on conditions, publishing, running rpmgw processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.mqtt import InboundMessage
from rpmgw.broker_accounts import Credentials
from rpmgw.servers.mosquitto import find_running


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll `condition` until it is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    if condition():
        return
    raise AssertionError(f"timed out after {timeout:g} s waiting for: {what}")


def bp_payload(
    device_id: str, *, minutes_ago: float = 1, systolic: int = 150, diastolic: int = 95
) -> dict[str, Any]:
    """A valid blood-pressure payload with a fresh msg_id."""
    measured = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return {
        "v": 1,
        "msg_id": str(uuid.uuid4()),
        "device_id": device_id,
        "type": "blood_pressure",
        "measured_at": measured.isoformat(timespec="milliseconds"),
        "systolic": systolic,
        "diastolic": diastolic,
        "pulse": 70,
    }


def bp_message(
    msg_id: str, device_id: str, measured_at: datetime, systolic: int, diastolic: int
) -> InboundMessage:
    """A blood-pressure reading as the gateway's queue holds it (received at `measured_at`)."""
    payload = {
        "v": 1,
        "msg_id": msg_id,
        "device_id": device_id,
        "type": "blood_pressure",
        "measured_at": measured_at.isoformat(),
        "systolic": systolic,
        "diastolic": diastolic,
        "pulse": 70,
    }
    return InboundMessage(readings_topic(device_id), json.dumps(payload).encode(), 1, 1, 1, measured_at)


def publisher_credentials(port: int) -> Credentials | None:
    """The publisher account of our broker on `port` (None for a broker not started by this process)."""
    server = find_running(port)
    return server.publisher_credentials if server is not None else None


def publish_all(
    host: str,
    port: int,
    messages: Iterable[tuple[str, bytes]],
    timeout: float = 60,
    *,
    credentials: Credentials | None = None,
) -> int:
    """Publish (topic, payload) pairs at QoS 1 and wait for every PUBACK; returns how many.

    Logs in as `credentials`, by default as the publisher account of our broker on `port`.
    """
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4()}"
    )
    account = credentials or publisher_credentials(port)
    if account is not None:
        client.username_pw_set(account.username, account.password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connack: list[Any] = []
    client.on_connect = lambda _client, _userdata, _flags, reason, _props: connack.append(reason)
    client.connect(host, port)
    client.loop_start()
    try:
        # A refused login would otherwise show up only as missing PUBACKs after `timeout`.
        wait_until(lambda: bool(connack), timeout, f"a CONNACK from {host}:{port}")
        assert not connack[0].is_failure, (
            f"the broker refused the login of {account and account.username}: {connack[0]}"
        )
        infos = []
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=1)
            assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS, f"publish refused: {mqtt.error_string(info.rc)}"
            infos.append(info)
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "a PUBACK did not arrive in time"
        return len(infos)
    finally:
        client.disconnect()
        client.loop_stop()


def readings_topic(device_id: str) -> str:
    """The readings topic of a device."""
    return f"rpm/devices/{device_id}/readings"


def encode(payload: dict[str, Any]) -> bytes:
    """JSON bytes of a payload."""
    return json.dumps(payload).encode()


class RpmgwProcess:
    """An `rpmgw ...` subprocess with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        full_env = {**os.environ, **env}
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rpmgw", *args],
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        """Whether it is still running."""
        return self.process.poll() is None

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"rpmgw {' '.join(self.args)} ignored SIGTERM for {timeout} s:\n{self.log()[-3000:]}"
            ) from None

    def kill(self) -> None:
        """SIGKILL."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
