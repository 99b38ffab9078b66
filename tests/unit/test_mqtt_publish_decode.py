"""BurstClient decodes a property-less MQTT v5 PUBLISH itself: it must agree with paho on every field.

Fed the same packets as stock paho's client (hypothesis), no broker needed: the packet bytes are what
the broker would send, built here from the MQTT v5 layout (3.3.2).
"""

from __future__ import annotations

import itertools
import struct

import paho.mqtt.client as mqtt
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
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


class _Socket:
    """What paho reads from: the stream in the given pieces, then nothing more for now."""

    def __init__(self, stream: bytes, cuts: list[int]) -> None:
        edges = [0, *sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]
        self._pieces = [stream[a:b] for a, b in itertools.pairwise(edges)]

    def recv(self, size: int) -> bytes:
        if not self._pieces:
            raise BlockingIOError
        piece = self._pieces[0]
        if len(piece) <= size:
            del self._pieces[0]
            return piece
        self._pieces[0] = piece[size:]
        return piece[:size]

    def close(self) -> None:  # paho closes its socket when the client is collected
        self._pieces.clear()

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    sent = b""

    @property
    def empty(self) -> bool:
        return not self._pieces


def _stream_received(
    client_class: type[mqtt.Client], stream: bytes, cuts: list[int], burst: int
) -> list[tuple[str, bytes, int, int]]:
    """What a client's on_message (and, for BurstClient, on_burst) got from `stream` read in pieces."""
    client = client_class(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.manual_ack_set(True)  # nothing is written: there is no real connection
    got: list[tuple[str, bytes, int, int]] = []
    client.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload), m.mid, m.qos))
    if isinstance(client, BurstClient):
        client.BURST = burst
        client.on_burst = lambda received: got.extend(
            (topic.decode(), payload, mid, qos) for topic, payload, mid, qos in received
        )
    socket = _Socket(stream, cuts)
    client._sock = socket  # type: ignore[assignment]
    for _ in range(10 * len(stream) + 10):  # stock paho: a packet per call at most
        assert client.loop_read() == MQTTErrorCode.MQTT_ERR_SUCCESS
        if socket.empty and client._in_packet["command"] == 0 and not getattr(client, "_read_buffer", b""):
            break
    else:
        raise AssertionError("the stream was not read to its end")
    return got


_PACKET = st.tuples(
    st.text(min_size=1, max_size=20).filter(lambda t: "\x00" not in t),  # topic
    st.binary(max_size=200),  # payload (with 128+ bytes, the remaining length takes two bytes)
    st.sampled_from([0, 1]),  # QoS
    st.integers(min_value=1, max_value=65_535),  # packet id
    st.booleans(),  # with a property: paho's path
    st.booleans(),  # a PINGRESP after it: another packet type in the stream
)


@settings(max_examples=200, deadline=None)
@given(
    packets=st.lists(_PACKET, min_size=1, max_size=30),
    cuts=st.lists(st.integers(min_value=1, max_value=8_000), max_size=12),
    burst=st.integers(min_value=1, max_value=40),
)
def test_burst_client_reads_a_stream_in_any_pieces_as_paho_does(
    packets: list[tuple[str, bytes, int, int, bool, bool]], cuts: list[int], burst: int
) -> None:
    stream = bytearray()
    for topic, payload, qos, mid, with_property, ping in packets:
        encoded = topic.encode()
        body = (
            struct.pack("!H", len(encoded))
            + encoded
            + (struct.pack("!H", mid) if qos else b"")
            + _properties(60 if with_property else None, None)
            + payload
        )
        length, remaining = bytearray(), len(body)
        while True:
            byte, remaining = remaining % 128, remaining // 128
            length.append(byte | (0x80 if remaining else 0))
            if not remaining:
                break
        stream += bytes([0x30 | qos << 1]) + length + body
        if ping:
            stream += b"\xd0\x00"
    ours = _stream_received(BurstClient, bytes(stream), cuts, burst)
    paho = _stream_received(mqtt.Client, bytes(stream), cuts, burst)
    assert ours == paho
    assert [(t, p, m if q else 0, q) for t, p, q, m, _, _ in packets] == ours


def test_with_automatic_acks_burst_client_leaves_every_message_to_paho_which_acknowledges_it() -> None:
    client = BurstClient(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    got: list[int] = []
    bursts: list[object] = []
    client.on_message = lambda _c, _u, m: got.append(m.mid)
    client.on_burst = bursts.append
    topic = b"rpm/devices/d-001/readings"
    stream = b"".join(
        bytes([0x32, 2 + len(topic) + 2 + 1 + 2])
        + struct.pack("!H", len(topic))
        + topic
        + struct.pack("!H", mid)
        + b"\x00{}"
        for mid in (7, 8, 9)
    )
    socket = _Socket(stream, [])
    client._sock = socket  # type: ignore[assignment]
    for _ in range(10):
        client.loop_read()
    assert got == [7, 8, 9]
    assert bursts == []
    assert socket.sent == b"".join(bytes([0x40, 2]) + struct.pack("!H", mid) for mid in (7, 8, 9))


def _read_until_error(client_class: type[mqtt.Client], stream: bytes) -> tuple[list[int], MQTTErrorCode]:
    """The packet ids a client delivered from `stream` and the first error its reads returned."""
    client = client_class(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.manual_ack_set(True)
    got: list[int] = []
    client.on_message = lambda _c, _u, m: got.append(m.mid)
    if isinstance(client, BurstClient):
        client.on_burst = lambda received: got.extend(mid for _, _, mid, _ in received)
    client._sock = _Socket(stream, [])  # type: ignore[assignment]
    for _ in range(20):
        rc = client.loop_read()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return got, rc
    raise AssertionError("no error was reported")


def test_a_length_field_longer_than_four_bytes_goes_to_paho_which_reports_it() -> None:
    # MQTT allows at most 4 bytes of remaining length (2.1.4); a fifth one is a malformed packet. The
    # burst path must take the good packet before it and leave the bad one to paho, not decode it.
    topic = b"rpm/devices/d-001/readings"
    good = (
        bytes([0x32, 2 + len(topic) + 2 + 1 + 2])
        + struct.pack("!H", len(topic))
        + topic
        + struct.pack("!H", 7)
        + b"\x00{}"
    )
    # Remaining length 6 spelled in five bytes (6, then four continued zeros): a whole PUBLISH of topic
    # "a", packet id 8, no properties follows, which a decoder reading a fifth length byte would deliver.
    bad = b"\x32\x86\x80\x80\x80\x00" + b"\x00\x01a\x00\x08\x00"
    ours = _read_until_error(BurstClient, good + bad)
    paho = _read_until_error(mqtt.Client, good + bad)
    assert ours == paho == ([7], MQTTErrorCode.MQTT_ERR_PROTOCOL)
