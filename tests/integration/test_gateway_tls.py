"""The gateway's MQTT connection over TLS, verifying the broker against a throw-away CA."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.mqtt import InboundMessage, MqttConsumer
from rpmgw.errors import SettingsError
from rpmgw.servers.mosquitto import MosquittoServer
from rpmgw.settings import MqttSettings, load_settings
from tests.helpers import publish_all, readings_topic, wait_until
from tests.integration.test_broker_security import tls_broker

__all__ = ["tls_broker"]  # the fixture, shared with the broker security tests


def _settings(broker: MosquittoServer, ca: Path, client_id: str) -> MqttSettings:
    assert broker.tls_port is not None
    credentials = broker.gateway_credentials
    return MqttSettings(
        host="localhost",  # the name in the broker's certificate
        port=broker.tls_port,
        username=credentials.username,
        password=credentials.password,
        client_id=client_id,
        tls_ca=ca,
    )


def test_gateway_receives_over_tls(tls_broker: tuple[MosquittoServer, Path, Path]) -> None:
    broker, ca_cert, _ = tls_broker
    received: list[InboundMessage] = []
    consumer = MqttConsumer(_settings(broker, ca_cert, "gw-tls"), received.extend)
    consumer.start()
    try:
        assert consumer.wait_connected(20), "the gateway did not connect over TLS"
        publish_all(broker.host, broker.port, [(readings_topic("bp-tls-1"), b"{}")])
        wait_until(lambda: len(received) == 1, 20, "the reading to arrive over TLS")
        assert received[0].topic == readings_topic("bp-tls-1")
        assert consumer.ack(received) == 1
    finally:
        consumer.stop()


def test_gateway_refuses_a_broker_signed_by_another_ca(
    tls_broker: tuple[MosquittoServer, Path, Path],
) -> None:
    broker, _, other_ca = tls_broker
    consumer = MqttConsumer(_settings(broker, other_ca, "gw-tls-wrong-ca"), lambda messages: None)
    consumer.start()
    try:
        assert not consumer.wait_connected(3), "connected to a broker whose certificate it cannot verify"
    finally:
        consumer.stop()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RPMGW_MQTT__TLS_CA": "/nonexistent/ca.pem"}, "RPMGW_MQTT__TLS_CA"),
        ({"RPMGW_MQTT__TLS_CERT": "/etc/hostname"}, "RPMGW_MQTT__TLS_KEY"),
    ],
)
def test_bad_tls_settings_fail_at_start_up(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()
