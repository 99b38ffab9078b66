"""The paho-mqtt boundary: connect, subscribe, hand messages over, acknowledge them manually.

The gateway must acknowledge a QoS 1 reading only after it is durably stored, so paho's automatic
acknowledgement is switched off (`manual_ack_set(True)`) and the pipeline calls `ack()` per batch.
paho's integer return codes become `BrokerError` here; no caller sees an `rc`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import BrokerError
from rpmgw.settings import MqttSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message as received; `generation` counts connections, so acks never cross a reconnect."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    received_at: datetime


def make_client(settings: MqttSettings, client_id: str) -> mqtt.Client:
    """A paho MQTT v5 client with the gateway's credentials, TLS and reconnect backoff (not connected)."""
    client = mqtt.Client(
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
        deliver: Callable[[InboundMessage], None],
        *,
        on_connection_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._settings = settings
        self._deliver = deliver
        self._on_connection_change = on_connection_change
        self._generation = 0
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.reconnects = 0
        self._client = make_client(settings, settings.client_id)
        self._client.manual_ack_set(True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
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
        sent = 0
        generation = self._generation
        for message in messages:
            if message.qos == 0 or message.generation != generation:
                continue
            rc = self._client.ack(message.mid, message.qos)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                sent += 1
            else:
                log.debug("ack of mid %s not sent (%s); the broker will redeliver", message.mid, rc)
        return sent

    def stop(self) -> None:
        """Disconnect cleanly (the session and its queue stay on the broker) and stop the loop."""
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
        if reason_code.is_failure:
            log.warning("disconnected from the broker (%s); reconnecting with backoff", reason_code)
        if self._on_connection_change is not None:
            self._on_connection_change(False)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload = message.payload
        self._deliver(
            InboundMessage(
                topic=message.topic,
                payload=payload if isinstance(payload, bytes) else bytes(payload),
                mid=message.mid,
                qos=message.qos,
                generation=self._generation,
                received_at=datetime.now(UTC),
            )
        )

    def _raise_for(self, rc: MQTTErrorCode, action: str) -> None:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(
                f"could not {action} for broker {self._settings.host}:{self._settings.port}: "
                f"{mqtt.error_string(rc)}"
            )
