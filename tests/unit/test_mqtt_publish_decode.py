"""BurstClient decodes a property-less MQTT v5 PUBLISH itself: it must agree with paho on every field.

Fed the same packets as stock paho's client (hypothesis), no broker needed: the packet bytes are what
the broker would send, built here from the MQTT v5 layout (3.3.2).
"""

from __future__ import annotations

import struct

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt import BurstClient


def _received(client_class: type[mqtt.Client], header: int, packet: bytes) -> mqtt.MQTTMessage:
    client = client_class(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.manual_ack_set(True)  # nothing to send: no connection here
    got: list[mqtt.MQTTMessage] = []
    client.on_message = lambda _client, _userdata, message: got.append(message)
    client._in_packet["command"] = header
    client._in_packet["packet"] = bytearray(packet)
    client._handle_publish()
    assert len(got) == 1
    return got[0]


def _properties(expiry: int | None, user: tuple[str, str] | None) -> bytes:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if expiry is not None:
        properties.MessageExpiryInterval = expiry
    if user is not None:
        properties.UserProperty = user
    packed: bytes = properties.pack()  # type: ignore[no-untyped-call]
    return packed


_NO_NUL = st.text(max_size=10).filter(lambda t: "\x00" not in t)  # MQTT strings may not hold U+0000


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(min_size=1, max_size=60).filter(lambda t: "\x00" not in t),
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1]),
    mid=st.integers(min_value=1, max_value=65_535),
    dup=st.booleans(),
    retain=st.booleans(),
    expiry=st.none() | st.integers(min_value=0, max_value=2**32 - 1),
    user=st.none() | st.tuples(_NO_NUL, _NO_NUL),
)
def test_burst_client_decodes_a_publish_as_paho_does(
    topic: str,
    payload: bytes,
    qos: int,
    mid: int,
    dup: bool,
    retain: bool,
    expiry: int | None,
    user: tuple[str, str] | None,
) -> None:
    encoded = topic.encode()
    header = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    packet = (
        struct.pack("!H", len(encoded))
        + encoded
        + (struct.pack("!H", mid) if qos else b"")
        + _properties(expiry, user)
        + payload
    )
    ours = _received(BurstClient, header, packet)
    paho = _received(mqtt.Client, header, packet)
    assert (ours.topic, ours.payload, ours.qos, ours.mid, ours.dup, ours.retain) == (
        paho.topic,
        paho.payload,
        paho.qos,
        paho.mid,
        paho.dup,
        paho.retain,
    )
    assert ours.payload == payload and ours.topic == topic
    if expiry is None and user is None:
        assert ours.properties is None  # decoded here, without paho's Properties object
    else:
        assert ours.properties is not None and paho.properties is not None
        assert ours.properties.json() == paho.properties.json()  # type: ignore[no-untyped-call]
