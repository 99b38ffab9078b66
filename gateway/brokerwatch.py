"""Watch the broker's count of dropped messages and say so loudly when it grows.

Mosquitto drops QoS 1 messages silently when a client's queue limits are hit (the publisher still got
its PUBACK). The only trace is `$SYS/broker/publish/messages/dropped`, published every `sys_interval`
seconds: this watcher subscribes to it on a separate connection and logs an ERROR on every increase.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.mqtt import make_client
from rpmgw.settings import MqttSettings

log = logging.getLogger(__name__)

DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"


class BrokerDropWatch:
    """A small clean-session subscriber of the broker's dropped-messages counter."""

    def __init__(self, settings: MqttSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._last: int | None = None
        self.dropped = 0  # increases seen since this watcher started
        self.broker_total: int | None = None  # the broker's own counter (since the broker started)
        # Same credentials, TLS and backoff as the gateway's own connection.
        self._client = make_client(settings, f"{settings.client_id}-dropwatch")
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background (paho reconnects on its own)."""
        self._client.connect_async(
            self._settings.host, self._settings.port, keepalive=self._settings.keepalive
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def observe(self, total: int) -> int:
        """Record the broker's counter; returns the increase (0 on the first sight or after a broker restart)."""
        with self._lock:
            previous, self._last, self.broker_total = self._last, total, total
            if previous is None:
                if total > 0:
                    log.error(
                        "the broker has already dropped %d messages since it started "
                        "(queue limits hit: those readings are lost; check max_queued_messages/bytes)",
                        total,
                    )
                return 0
            if total <= previous:
                return 0  # unchanged, or the broker restarted and counts from zero again
            increase = total - previous
            self.dropped += increase
        log.error(
            "the broker DROPPED %d messages (total %d since it started): a subscriber's queue limit was "
            "hit and those readings are lost",
            increase,
            total,
        )
        return increase

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the dropped-messages watcher: %s", reason_code)
            return
        client.subscribe(DROPPED_TOPIC, qos=0)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        text = bytes(message.payload).decode("ascii", errors="replace").strip()
        try:
            total = int(text)
        except ValueError:
            log.warning("unexpected %s payload %r", DROPPED_TOPIC, text[:40])
            return
        self.observe(total)
