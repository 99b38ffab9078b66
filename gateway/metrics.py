"""Prometheus series of the gateway, the worker and the web process (served on /metrics).

Every process registers its series on prometheus-client's default registry, which also carries the
process collector (CPU seconds, resident memory, open files). Names start with `rpmgw_`; label values
come from small fixed sets (quarantine reasons, rule ids, severities), never from device or patient ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType

from prometheus_client import Counter, Gauge, Histogram

from gateway.timeseries.base import ReadingStore, ReadingType, StoredReading, StoreSummary

READINGS_RECEIVED = Counter("rpmgw_readings_received", "MQTT messages taken off the gateway's queue")
READINGS_STORED = Counter("rpmgw_readings_stored", "Readings written to the time-series store")
READINGS_REJECTED = Counter(
    "rpmgw_readings_rejected", "Messages put in quarantine instead of the store", ["reason"]
)
BATCH_SIZE = Histogram(
    "rpmgw_batch_size",
    "Messages per processed batch",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000),
)
BATCH_SECONDS = Histogram(
    "rpmgw_batch_seconds",
    "Time to process one batch (decode, resolve, store, rules, quarantine), before the ack",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STORE_SECONDS = Histogram(
    "rpmgw_store_seconds",
    "Latency of time-series store calls by operation (write: one batch)",
    ["operation"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_RETRIES = Counter("rpmgw_batch_retries", "Batches not stored on an attempt and retried", ["error"])
QUEUE_DEPTH = Gauge("rpmgw_queue_depth", "Messages received from the broker and not yet processed")
MQTT_CONNECTED = Gauge("rpmgw_mqtt_connected", "1 while the gateway is connected to the broker")
MQTT_RECONNECTS = Gauge("rpmgw_mqtt_reconnects", "Connections made after the first (since start)")
ALERTS_OPENED = Counter("rpmgw_alerts_opened", "Alert episodes opened", ["rule", "severity"])
READINGS_DECIDED_AHEAD = Counter(
    "rpmgw_readings_decided_ahead",
    "Critical readings decided while still queued, before the batch in hand was done",
)
CRITICAL_WITHOUT_HISTORY = Counter(
    "rpmgw_critical_decided_without_history",
    "Critical parts of batches decided without their patients' history, the store being unreadable "
    "(only what the readings' values decide alone is applied)",
)
READINGS_RECHECKED = Counter(
    "rpmgw_readings_rechecked",
    "Readings decided again with their patient's history reloaded (members of a shared subscription)",
)

TIME_TO_ACKNOWLEDGE = Histogram(
    "rpmgw_alert_time_to_acknowledge_seconds",
    "From an alert's opening to its acknowledgement by staff (observed by the worker)",
    ["severity"],
    buckets=(30, 60, 300, 600, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600),
)
SMS_SENT = Counter("rpmgw_sms_sent", "Texts accepted by the SMS provider")
SMS_FAILED = Counter(
    "rpmgw_sms_failed", "Texts not sent on an attempt, by reason (retry: will be tried again)", ["reason"]
)
SMS_HELD = Counter("rpmgw_sms_held", "Texts held back by policy, by reason", ["reason"])
WORKER_TICKS = Counter("rpmgw_worker_ticks", "Worker ticks, by outcome", ["outcome"])

WEB_REQUESTS = Counter("rpmgw_web_requests", "HTTP requests served", ["endpoint", "status"])
WEB_SECONDS = Histogram(
    "rpmgw_web_request_seconds",
    "HTTP response time by endpoint",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5, 10),
)


def record_batch(received: int, stored: int, rejected_reasons: Iterable[str], seconds: float) -> None:
    """Count one processed (and acknowledged) batch."""
    READINGS_RECEIVED.inc(received)
    READINGS_STORED.inc(stored)
    for reason in rejected_reasons:
        READINGS_REJECTED.labels(reason=reason).inc()
    BATCH_SIZE.observe(received)
    BATCH_SECONDS.observe(seconds)


def record_alerts_opened(opened: Iterable[tuple[str, str]]) -> None:
    """Count alerts opened, given (rule, severity) pairs."""
    for rule, severity in opened:
        ALERTS_OPENED.labels(rule=rule, severity=severity).inc()


def watch_gateway(
    queue_depth: Callable[[], int], connected: Callable[[], bool], reconnects: Callable[[], int]
) -> None:
    """Let the gauges read the gateway's live state when scraped."""
    QUEUE_DEPTH.set_function(lambda: float(queue_depth()))
    MQTT_CONNECTED.set_function(lambda: 1.0 if connected() else 0.0)
    MQTT_RECONNECTS.set_function(lambda: float(reconnects()))


class _Timer:
    def __init__(self, operation: str) -> None:
        self._operation = operation
        self._start = 0.0

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        STORE_SECONDS.labels(operation=self._operation).observe(time.perf_counter() - self._start)


class TimedStore:
    """A `ReadingStore` that records the latency of each call of the store it wraps."""

    def __init__(self, store: ReadingStore) -> None:
        self._store = store

    def ensure_ready(self) -> None:
        """See `ReadingStore.ensure_ready`."""
        self._store.ensure_ready()

    def write(self, readings: Sequence[StoredReading]) -> None:
        """See `ReadingStore.write`."""
        with _Timer("write"):
            self._store.write(readings)

    def readings(
        self, patient_id: str, start: datetime, end: datetime, type: ReadingType | None = None
    ) -> list[StoredReading]:
        """See `ReadingStore.readings`."""
        with _Timer("readings"):
            return self._store.readings(patient_id, start, end, type)

    def recent(self, patient_ids: Sequence[str], since: datetime) -> dict[str, list[StoredReading]]:
        """See `ReadingStore.recent`."""
        with _Timer("recent"):
            return self._store.recent(patient_ids, since)

    def summary(self) -> StoreSummary:
        """See `ReadingStore.summary`."""
        return self._store.summary()

    def close(self) -> None:
        """See `ReadingStore.close`."""
        self._store.close()
