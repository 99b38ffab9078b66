"""The gateway's MQTT client (BurstClient) against a real Mosquitto: buffered reads and batched acks.

What could go wrong with them: a message left in the read buffer while paho waits in select() (it
would arrive only with the next keep-alive, a minute later), a batched PUBACK the broker does not take
(everything redelivered), or one acknowledging more than it names.
"""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.mqtt import BURST_HOOKS, BURST_STATE, BurstClient, InboundMessage, MqttConsumer
from rpmgw.servers.mosquitto import MosquittoServer
from rpmgw.settings import MqttSettings
from tests.helpers import bp_payload, encode, publish_all, readings_topic, wait_until


def test_the_paho_internals_burst_client_builds_on_exist() -> None:
    # A paho upgrade that renames them must fail here, not slow the gateway down or break it.
    for name in BURST_HOOKS:
        assert callable(getattr(mqtt.Client, name, None)), f"paho-mqtt no longer has Client.{name}"
    client = BurstClient(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    for name in BURST_STATE:
        assert hasattr(client, name), f"paho-mqtt's Client no longer sets self.{name}"
    assert set(client._in_packet) >= {"command", "packet"}


class _Session:
    """A gateway consumer on a persistent session, collecting what it receives."""

    def __init__(self, broker: MosquittoServer, client_id: str, burst: int) -> None:
        credentials = broker.gateway_credentials
        settings = MqttSettings(
            host=broker.host,
            port=broker.port,
            username=credentials.username,
            password=credentials.password,
            client_id=client_id,
            keepalive=60,  # a message stuck in the buffer would wait for the keep-alive: far past the deadline
        )
        self._broker = broker
        self._client_id = client_id
        self.received: list[InboundMessage] = []
        self._lock = threading.Lock()
        self.consumer = MqttConsumer(settings, self._deliver)
        client = self.consumer._client  # the burst size is what this test varies
        assert isinstance(client, BurstClient)
        client.BURST = burst

    def _deliver(self, messages: list[InboundMessage]) -> None:
        with self._lock:
            self.received.extend(messages)

    def __enter__(self) -> _Session:
        self._disconnects_before = self._disconnects()
        self.consumer.start()
        assert self.consumer.wait_connected(20), "the consumer did not connect"
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.stop()
        # A new connection with this client id takes the session over, and Mosquitto then drops what
        # it had not yet read from the old one (its last PUBACKs too: measured). The DISCONNECT comes
        # after them, so once the broker logs it, it has taken them.
        wait_until(
            lambda: self._disconnects() > self._disconnects_before, 20, "the broker to log the disconnect"
        )

    def _disconnects(self) -> int:
        # A clean DISCONNECT, or (when the client's network loop stopped first, seen on a busy machine)
        # the socket closed: either way the broker has read everything the client sent before it.
        log = self._broker.log_path.read_text()
        return sum(
            log.count(line)
            for line in (
                f"Client {self._client_id} disconnected.",
                f"Client {self._client_id} closed its connection.",
            )
        )

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [m.payload for m in self.received]


def _backlog(count: int, device: str) -> list[tuple[str, bytes]]:
    return [(readings_topic(device), encode(bp_payload(device, systolic=100 + i % 80))) for i in range(count)]


def test_a_backlog_arrives_whole_with_small_bursts_and_acked_halves_are_not_redelivered(
    mosquitto_broker: MosquittoServer,
) -> None:
    broker = mosquitto_broker
    with _Session(broker, "gw-burst", burst=3) as setup:
        # Creates the persistent session; a message through it shows the subscription is in place.
        publish_all(broker.host, broker.port, _backlog(1, "bp-burst-0"))
        wait_until(lambda: len(setup.received) == 1, 20, "the subscription")
        assert setup.consumer.ack(setup.received) == 1
    messages = _backlog(1_500, "bp-burst-1")
    publish_all(broker.host, broker.port, messages)

    with _Session(broker, "gw-burst", burst=3) as first:
        # Hundreds of messages per socket read and a burst of 3: every read leaves most of its
        # messages in the buffer, which must be handled before paho waits on the socket again.
        wait_until(lambda: len(first.received) >= len(messages), 20, "the whole backlog")
        assert sorted(first.payloads()) == sorted(p for _, p in messages)
        acked = first.received[: len(messages) // 2]
        assert first.consumer.ack(acked) == len(acked)
        # The PUBACKs are written by paho's thread: a round trip through the broker shows they went out.
        publish_all(broker.host, broker.port, _backlog(1, "bp-burst-2"))
        wait_until(lambda: len(first.received) > len(messages), 20, "a message after the acks")

    with _Session(broker, "gw-burst", burst=1_000) as second:
        expected = {m.payload for m in first.received[len(messages) // 2 :]}
        wait_until(lambda: len(second.received) >= len(expected), 20, "the unacknowledged half again")
        # Exactly the unacknowledged ones come back (with the later message, also unacknowledged).
        assert set(second.payloads()) == expected
        assert len(second.received) == len(expected)
        assert second.consumer.ack(second.received) == len(expected)

    with _Session(broker, "gw-burst", burst=1_000) as third:
        # Nothing more is owed: a fresh message is the first and only one to arrive.
        fresh = _backlog(1, "bp-burst-3")
        publish_all(broker.host, broker.port, fresh)
        wait_until(lambda: len(third.received) >= 1, 20, "the fresh message")
        assert third.payloads() == [fresh[0][1]]


def test_acknowledging_nothing_sends_nothing_and_the_connection_stays_up(
    mosquitto_broker: MosquittoServer,
) -> None:
    with _Session(mosquitto_broker, "gw-burst-empty", burst=1_000) as session:
        assert session.consumer.ack([]) == 0
        publish_all(mosquitto_broker.host, mosquitto_broker.port, _backlog(1, "bp-burst-4"))
        wait_until(lambda: len(session.received) == 1, 20, "a message after an empty ack")
        assert session.consumer.connected.is_set()
