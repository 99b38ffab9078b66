"""The paho-mqtt boundary: connect, subscribe, hand messages over, acknowledge them manually.

The gateway must acknowledge a QoS 1 reading only after it is durably stored, so paho's automatic
acknowledgement is switched off (`manual_ack_set(True)`) and the pipeline calls `ack()` per batch.
paho's integer return codes become `BrokerError` here; no caller sees an `rc`.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

import paho.mqtt.client as mqtt
from paho.mqtt.client import PUBACK
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import BrokerError
from gateway.wire import Reading, Rejection
from rpmgw.settings import MqttSettings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class InboundMessage:
    """One message as received; `generation` counts connections, so acks never cross a reconnect.

    Not frozen: built for every message on paho's thread, where a frozen dataclass's constructor cost
    twice as much (it sets each field through `object.__setattr__`), and `parsed` is set on arrival
    (`IngestPipeline.triage`). Nothing changes a message after that.
    """

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    received_at: datetime
    # The payload as parsed on arrival (gateway.ingest.IngestPipeline.triage); None: parsed in its batch.
    parsed: Reading | Rejection | None = None


# A PUBLISH as BurstClient.on_burst gets it: (topic as sent, payload, packet id, QoS).
Received = tuple[bytes, bytes, int, int]

# paho's internals that BurstClient builds on (present in 2.1 and 2.2; a test checks them).
BURST_HOOKS: Final = (
    "_sock_recv",
    "_sock_close",
    "_packet_read",
    "_loop_rc_handle",
    "_packet_queue",
    "_handle_publish",
    "_handle_on_message",
    "_send_puback",
)
# paho's connection state that BurstClient reads and sets (instance attributes; the test checks them too).
BURST_STATE: Final = (
    "_in_packet",
    "_msgtime_mutex",
    "_in_callback_mutex",
    "_last_bytes_received",
    "_sock",
    "_manual_ack",
)
_PUBACK_HEADER: Final = 0x4002 << 16  # PUBACK, remaining length 2: success, no properties (MQTT v5 3.4.2.1)


class BurstClient(mqtt.Client):
    """paho's client, reading the socket in large chunks and acknowledging a batch in one packet write.

    Stock paho reads one packet per wake-up of its network thread, with a system call for the first byte,
    one per byte of the remaining length and one for the rest; and each `ack()` queues its own 4-byte
    packet, wakes the network thread and is sent with its own system call. Draining a backlog, that was
    half of what a message cost the gateway (profiled with py-spy). Here:
    - `_sock_recv` reads up to READ_SIZE bytes and serves paho's small reads from that buffer;
    - `loop_read` handles packets until the socket has no more, but after BURST packets it reads no more
      from the socket, only what is buffered, so acknowledgements and keep-alives are written in between
      and nothing is left in the buffer when paho waits in select() again;
    - `ack_many` queues the PUBACKs of many messages as one write;
    - a PUBLISH without MQTT v5 properties (what devices send) is decoded without building paho's
      `Properties` object, which alone was two fifths of paho's thread; `message.properties` is None
      then, as for an MQTT 3 message. Anything else is paho's to decode.
    - with `on_burst` set, the complete QoS 0/1 PUBLISH packets without properties at the head of the
      buffer are decoded straight from it and handed over together as `Received` tuples: no
      `MQTTMessage` (each builds a lock and a condition) and one callback per burst, not per message
      (profiled: paho's per-packet reading and per-message callback were nearly a quarter of a
      draining gateway's CPU samples). `on_message` still gets every other message.
    The buffer belongs to one connection and is dropped when paho closes the socket.
    """

    READ_SIZE = 65_536
    BURST = 1_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_buffer = bytearray()
        self._may_read_socket = True
        self.on_burst: Callable[[list[Received]], None] | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        buffer = self._read_buffer
        if not buffer:
            if not self._may_read_socket:
                raise BlockingIOError
            data = super()._sock_recv(max(bufsize, self.READ_SIZE))
            if len(data) <= bufsize:  # also the empty read of a closed connection
                return data
            buffer += data
        chunk = bytes(buffer[:bufsize])
        del buffer[:bufsize]
        return chunk

    def _sock_close(self) -> None:
        self._read_buffer.clear()
        super()._sock_close()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Handle the packets that have arrived (paho's own handles one per call)."""
        self._may_read_socket = True
        handled = 0
        while True:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if self.on_burst is not None and self._read_buffer and self._in_packet["command"] == 0:
                taken = self._take_buffered(self.on_burst)
                if taken:
                    handled += taken
                    if handled >= self.BURST:
                        self._may_read_socket = False
                    continue
            rc = self._packet_read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return self._loop_rc_handle(rc)
            handled += 1
            if handled >= self.BURST:
                self._may_read_socket = False

    def _take_buffered(self, on_burst: Callable[[list[Received]], None]) -> int:
        """Decode the complete QoS 0/1 PUBLISH packets without properties at the head of the read
        buffer, hand them to `on_burst` and return how many; stops at anything else (another packet
        type, properties, a packet not all here, a malformed length), which paho's reader then takes.
        Only in manual-ack mode: nothing here sends a PUBACK (paho's path does, in its automatic mode)."""
        if self._protocol != mqtt.MQTTv5 or not self._manual_ack:
            return 0
        buffer = self._read_buffer
        size = len(buffer)
        pos = 0
        burst: list[Received] = []
        while pos + 1 < size:
            header = buffer[pos]
            qos = (header & 0x06) >> 1
            if header & 0xF0 != 0x30 or qos > 1:
                break
            length, multiplier, at = 0, 1, pos + 1
            while at < size and at - pos <= 4:
                byte = buffer[at]
                at += 1
                length += (byte & 0x7F) * multiplier
                multiplier <<= 7
                if byte < 0x80:
                    break
            else:
                break  # length not all here yet, or longer than 4 bytes (paho reports that)
            end = at + length
            fields = _plain_publish(buffer, at, end, qos) if end <= size else None
            if fields is None:
                break
            burst.append((*fields, qos))
            pos = end
        if not burst:
            return 0
        del buffer[:pos]
        with self._msgtime_mutex:
            self._last_bytes_received = time.monotonic()
        with self._in_callback_mutex:  # as paho calls its callbacks
            on_burst(burst)
        return len(burst)

    def _handle_publish(self) -> MQTTErrorCode:
        header: int = self._in_packet["command"]
        packet: bytearray = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        fields = (
            _plain_publish(packet, 0, len(packet), qos) if self._protocol == mqtt.MQTTv5 and qos < 2 else None
        )
        if fields is None:  # properties, QoS 2, MQTT 3 or malformed: paho decodes it
            return super()._handle_publish()
        topic, payload, mid = fields
        message = mqtt.MQTTMessage(mid=mid, topic=topic)
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.payload = payload
        message.timestamp = time.monotonic()  # paho's own clock for it
        self._handle_on_message(message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(message.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_many(self, mids: Sequence[int]) -> MQTTErrorCode:
        """Acknowledge QoS 1 messages (manual ack mode) with one queued write."""
        if not mids:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        packet = struct.pack(f"!{len(mids)}I", *[_PUBACK_HEADER | mid for mid in mids])
        return self._packet_queue(PUBACK, packet, 0, 0)


def _plain_publish(data: bytearray, start: int, end: int, qos: int) -> tuple[bytes, bytes, int] | None:
    """(topic, payload, packet id) of the PUBLISH whose variable header and payload are data[start:end],
    when it has no MQTT v5 properties (MQTT v5 3.3.2); None when it has some or is too short to be whole."""
    if end - start < 3:  # topic length and the properties' length at least
        return None
    topic_end = start + 2 + (data[start] << 8 | data[start + 1])
    properties_at = topic_end + (2 if qos else 0)
    if properties_at >= end or data[properties_at] != 0:
        return None
    mid = (data[topic_end] << 8 | data[topic_end + 1]) if qos else 0
    return bytes(data[start + 2 : topic_end]), bytes(data[properties_at + 1 : end]), mid


def make_client(
    settings: MqttSettings, client_id: str, client_class: type[mqtt.Client] = mqtt.Client
) -> mqtt.Client:
    """A paho MQTT v5 client with the gateway's credentials, TLS and reconnect backoff (not connected)."""
    client = client_class(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls_ca is not None:
        # Verifies the broker's certificate and host name against the given CA.
        client.tls_set(
            ca_certs=str(settings.tls_ca),
            certfile=str(settings.tls_cert) if settings.tls_cert else None,
            keyfile=str(settings.tls_key) if settings.tls_key else None,
        )
    client.reconnect_delay_set(
        min_delay=max(1, round(settings.reconnect_min_delay)),
        max_delay=max(1, round(settings.reconnect_max_delay)),
    )
    return client


class MqttConsumer:
    """A persistent-session MQTT v5 subscriber with manual acknowledgement and automatic reconnect."""

    def __init__(
        self,
        settings: MqttSettings,
        deliver: Callable[[list[InboundMessage]], None],
        *,
        on_connection_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._settings = settings
        self._deliver = deliver
        self._on_connection_change = on_connection_change
        self._generation = 0
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self._disconnected = threading.Event()
        self.reconnects = 0
        self._client = cast(BurstClient, make_client(settings, settings.client_id, BurstClient))
        self._client.manual_ack_set(True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_burst = self._on_burst
        self._client.on_subscribe = self._on_subscribe

    @property
    def generation(self) -> int:
        """How many times we have connected; messages of older generations are not acknowledged."""
        return self._generation

    def start(self) -> None:
        """Connect in the background; paho's network thread reconnects with backoff on its own."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # The broker's own persistent_client_expiration may shorten it.
        properties.SessionExpiryInterval = self._settings.session_expiry_seconds
        # Bounds how many unacknowledged readings the broker sends us, and so our memory.
        properties.ReceiveMaximum = self._settings.receive_maximum
        self._client.connect_async(
            self._settings.host,
            self._settings.port,
            keepalive=self._settings.keepalive,
            clean_start=False,
            properties=properties,
        )
        self._raise_for(self._client.loop_start(), "start the network loop")

    def wait_connected(self, timeout: float) -> bool:
        """Whether the first connection succeeded within `timeout` seconds."""
        return self.connected.wait(timeout)

    def ack(self, messages: Sequence[InboundMessage]) -> int:
        """Acknowledge messages of the current connection; returns how many acks were sent.

        Messages received on an earlier connection are skipped: the broker redelivers them on the
        new one, and the store's idempotency absorbs the second copy.
        """
        generation = self._generation
        # The subscription is QoS 1, so no message needs the QoS 2 handshake.
        mids = [m.mid for m in messages if m.qos == 1 and m.generation == generation]
        rc = self._client.ack_many(mids)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.debug("acks of %d messages not sent (%s); the broker will redeliver", len(mids), rc)
            return 0
        return len(mids)

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (the session and its queue stay on the broker) and stop the loop.

        Waits (up to `timeout` seconds) for paho's thread to write what is queued, the last batch's
        PUBACKs and then the DISCONNECT: stopping the thread at once left them unsent now and then, and
        a restart's new connection then took the session over before the broker had read the old one's
        acknowledgements, so it redelivered what had been stored.
        """
        if self.connected.is_set():
            self._disconnected.clear()
            self._client.disconnect()
            if not self._disconnected.wait(timeout):
                log.warning(
                    "no clean disconnect within %.0f s; unacknowledged readings will come again", timeout
                )
        else:
            self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "broker %s:%s refused the connection: %s",
                self._settings.host,
                self._settings.port,
                reason_code,
            )
            return
        with self._lock:
            self._generation += 1
            if self._generation > 1:
                self.reconnects += 1
        log.info(
            "connected to %s:%s as %s (session present: %s)",
            self._settings.host,
            self._settings.port,
            self._settings.client_id,
            flags.session_present,
        )
        # Re-subscribing on a resumed session is harmless and covers a session the broker lost.
        rc, _ = client.subscribe(self._settings.topic, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("subscribe to %s failed: %s", self._settings.topic, mqtt.error_string(rc))
            return
        self.connected.set()
        if self._on_connection_change is not None:
            self._on_connection_change(True)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        for code in reason_codes:
            if code.is_failure:
                log.error("broker refused the subscription to %s: %s", self._settings.topic, code)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        self._disconnected.set()
        if reason_code.is_failure:
            log.warning("disconnected from the broker (%s); reconnecting with backoff", reason_code)
        if self._on_connection_change is not None:
            self._on_connection_change(False)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = message.payload
        self._deliver(
            [
                InboundMessage(
                    topic=message.topic,
                    payload=payload if isinstance(payload, bytes) else bytes(payload),
                    mid=message.mid,
                    qos=message.qos,
                    generation=self._generation,
                    received_at=datetime.now(UTC),
                )
            ]
        )

    def _on_burst(self, burst: list[Received]) -> None:
        generation = self._generation
        received_at = datetime.now(UTC)
        # A topic that is not UTF-8 (a broker lets none through) is kept, replaced, and quarantined as a
        # bad topic: paho's own path raised in the callback for it.
        self._deliver(
            [
                InboundMessage(topic.decode("utf-8", "replace"), payload, mid, qos, generation, received_at)
                for topic, payload, mid, qos in burst
            ]
        )

    def _raise_for(self, rc: MQTTErrorCode, action: str) -> None:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(
                f"could not {action} for broker {self._settings.host}:{self._settings.port}: "
                f"{mqtt.error_string(rc)}"
            )
