"""The bench's lean QoS 1 publisher against the project's own Mosquitto: every message arrives once, as
sent, every PUBACK is counted, and a refused login is a clear error."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rpmgw.bench.errors import BenchError
from rpmgw.bench.harness import end_session
from rpmgw.bench.rawpub import RawPublisher, remaining_length
from rpmgw.servers.mosquitto import MosquittoServer
from tests.helpers import publish_all, readings_topic, wait_until


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
        (268_435_455, "ffffff7f"),
    ],
)
def test_remaining_length_is_encoded_as_the_mqtt_specification_shows(length: int, encoded: str) -> None:
    # The boundary values of MQTT 3.1.1, section 2.2.3.
    assert remaining_length(length).hex() == encoded


def test_remaining_length_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        remaining_length(268_435_456)


def _subscriber(broker: MosquittoServer, received: list[tuple[str, bytes]]) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4()}")
    account = broker.gateway_credentials
    client.username_pw_set(account.username, account.password)
    lock = threading.Lock()
    subscribed = threading.Event()

    def on_message(_client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with lock:
            received.append((message.topic, bytes(message.payload)))

    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe("rpm/devices/+/readings", qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert subscribed.wait(30), "the test subscriber never got its SUBACK"
    return client


def test_every_message_arrives_once_as_sent_and_every_puback_is_counted(
    mosquitto_broker: MosquittoServer,
) -> None:
    received: list[tuple[str, bytes]] = []
    subscriber = _subscriber(mosquitto_broker, received)
    account = mosquitto_broker.publisher_credentials
    publisher = RawPublisher(
        mosquitto_broker.host, mosquitto_broker.port, "bench-raw-test", (account.username, account.password)
    )
    sent = [
        (f"rpm/devices/dev-{n % 20:02d}/readings", f'{{"n": {n}, "pad": "{"x" * (n % 300)}"}}'.encode())
        for n in range(3_000)
    ]
    sent.append(("rpm/devices/dev-big/readings", b"y" * 20_000))  # a three-byte remaining length
    try:
        for start in range(0, len(sent), 250):
            assert publisher.publish_many(sent[start : start + 250]) == len(sent[start : start + 250])
            wait_until(lambda: publisher.published - publisher.acknowledged < 1_000, 30, "PUBACKs")
        wait_until(lambda: publisher.acknowledged == len(sent), 30, "every PUBACK")
        wait_until(lambda: len(received) >= len(sent), 30, "every message at the subscriber")
    finally:
        publisher.close()
        subscriber.disconnect()
        subscriber.loop_stop()
    assert publisher.published == publisher.acknowledged == len(sent)
    assert publisher.error is None
    assert Counter(received) == Counter(sent)


def test_a_refused_login_is_a_clear_error(mosquitto_broker: MosquittoServer) -> None:
    with pytest.raises(BenchError, match="refused the bench publisher"):
        RawPublisher(mosquitto_broker.host, mosquitto_broker.port, "bench-raw-bad", ("nobody", "wrong"))


def test_end_session_drops_a_stopped_subscribers_session_and_its_queue(
    mosquitto_broker: MosquittoServer,
) -> None:
    # Between the bench's parts: a stopped gateway's session must not be queued every later reading.
    broker = mosquitto_broker
    credentials = (broker.gateway_credentials.username, broker.gateway_credentials.password)

    def session(clean: bool) -> tuple[mqtt.Client, list[bool], list[bytes]]:
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-gone", protocol=mqtt.MQTTv5
        )
        client.username_pw_set(*credentials)
        present: list[bool] = []
        received: list[bytes] = []
        client.on_connect = lambda _c, _u, flags, _rc, _p: present.append(flags.session_present)
        client.on_message = lambda _c, _u, message: received.append(bytes(message.payload))
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        client.connect(broker.host, broker.port, clean_start=clean, properties=properties)
        client.loop_start()
        return client, present, received

    first, present, _ = session(True)
    subscribed = threading.Event()
    first.on_subscribe = lambda *args: subscribed.set()
    wait_until(lambda: present == [False], 10, "the first CONNACK")
    first.subscribe("rpm/devices/+/readings", qos=1)
    assert subscribed.wait(10)
    first.disconnect()
    first.loop_stop()
    publish_all(broker.host, broker.port, [(readings_topic("bp-gone-1"), b"queued for the stopped session")])

    end_session(broker.host, broker.port, "bench-gone", credentials)

    again, present, received = session(False)
    try:
        wait_until(lambda: len(present) == 1, 10, "the CONNACK")
        assert present == [False]  # the session is gone, and the queued message with it
        # Not subscribed any more either: a message on the old filter, then one on a sentinel
        # subscription, from one connection (in order): only the sentinel may arrive.
        subscribed.clear()
        again.on_subscribe = lambda *args: subscribed.set()
        again.subscribe(readings_topic("bp-sentinel"), qos=1)
        assert subscribed.wait(10)
        publish_all(
            broker.host,
            broker.port,
            [(readings_topic("bp-gone-2"), b"after"), (readings_topic("bp-sentinel"), b"sentinel")],
        )
        wait_until(lambda: len(received) >= 1, 10, "the sentinel")
        assert received == [b"sentinel"]
    finally:
        again.disconnect()
        again.loop_stop()
