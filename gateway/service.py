"""The `rpmgw gateway` process: MQTT in, batches through the ingest pipeline, acks after storage.

Threads: paho's network thread puts messages on a bounded queue (bounded in practice by the MQTT v5
Receive Maximum we announce); the batch loop below takes them off, processes a batch, and acks it.
If storage is down the loop retries the same batch with backoff and acknowledges nothing meanwhile,
so the broker keeps the backlog and no reading is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from alerts.engine import AlertEngine, AlertStoreUnavailable
from alerts.history import RecentReadings
from alerts.thresholds import load_clinic_thresholds
from gateway import metrics
from gateway.brokerwatch import BrokerDropWatch
from gateway.errors import StorageError, StorageUnavailable
from gateway.handoff import Handoff
from gateway.health import Check, database_check, flag_check, influx_check
from gateway.ingest import IngestPipeline
from gateway.mqtt import InboundMessage, MqttConsumer
from gateway.quarantine import Quarantine, QuarantineUnavailable
from gateway.ratelimit import DeviceRateLimiter
from gateway.registry import EnrolmentRegistry, RegistryUnavailable
from gateway.timeseries import open_store
from gateway.timeseries.base import ReadingStore
from gateway.wire import WireLimits
from rpmgw.db import IDLE_PING_SECONDS, check_current, make_engine, session_factory
from rpmgw.settings import Settings

log = logging.getLogger(__name__)

# Errors after which the same batch is tried again later; anything else is a bug and stops the process.
RETRYABLE = (StorageError, QuarantineUnavailable, RegistryUnavailable, AlertStoreUnavailable)
# While a failed batch waits for its next attempt (up to `retry_max_delay`), the queue is looked at for
# critical readings this often (IngestPipeline.look_between_attempts).
RETRY_LOOK_EVERY = 0.25


@dataclass(slots=True)
class GatewayStats:
    """Running totals, for logs and (later) metrics."""

    received: int = 0
    stored: int = 0
    quarantined: int = 0
    batches: int = 0
    failed_attempts: int = 0
    degraded_reason: str | None = None


def utc_now() -> datetime:
    """The wall clock in UTC (the default clock of the pipeline)."""
    return datetime.now(UTC)


class Gateway:
    """Owns the consumer, the queue and the batch loop; `run()` returns after `stop()` and a flush."""

    def __init__(
        self,
        *,
        consumer_factory: Callable[[Callable[[list[InboundMessage]], None]], MqttConsumer],
        pipeline: IngestPipeline,
        batch_size: int,
        batch_max_wait: float,
        queue_size: int,
        retry_max_delay: float = 30.0,
        checks: Mapping[str, Check] | None = None,
        drop_watch: BrokerDropWatch | None = None,
        triage: Callable[[list[InboundMessage]], list[InboundMessage]] | None = None,
    ) -> None:
        # Called on paho's network thread with each burst before it is queued (IngestPipeline.triage).
        self._triage = triage
        self.drop_watch = drop_watch  # the broker's silent queue drops, logged as errors
        # Called after each turn of the batch loop, when no batch is in hand (`rpmgw gateway`: heap.Keeper).
        self.between_batches: Callable[[], object] | None = None
        self._queue: Handoff[InboundMessage] = Handoff(queue_size)
        self._stopping = threading.Event()
        self._consumer = consumer_factory(self._deliver)
        self.checks: dict[str, Check] = {
            "broker": flag_check(self._consumer.connected.is_set, "not connected to the MQTT broker"),
            **(checks or {}),
        }
        metrics.watch_gateway(
            self._queue.qsize, self._consumer.connected.is_set, lambda: self._consumer.reconnects
        )
        self._pipeline = pipeline
        self._batch_size = batch_size
        self._batch_max_wait = batch_max_wait
        self._retry_max_delay = retry_max_delay
        self.stats = GatewayStats()

    def queued(self, start: int) -> tuple[int, list[InboundMessage]]:
        """What waits in the queue from position `start` on, left there, and the position of the first of
        it (gateway.handoff.Handoff.peek; IngestPipeline.watch_queue)."""
        return self._queue.peek(start)

    @property
    def consumer(self) -> MqttConsumer:
        """The MQTT side (connection state, reconnect count)."""
        return self._consumer

    def stop(self) -> None:
        """Ask the loop to finish: the batch in hand is written and acknowledged, then `run` returns."""
        self._stopping.set()

    def run(self) -> None:
        """Connect and process batches until `stop()`."""
        self._consumer.start()
        if self.drop_watch is not None:
            self.drop_watch.start()
        last_report = time.monotonic()
        try:
            while not self._stopping.is_set():
                batch = self._collect()
                if batch:
                    self._handle(batch)
                del batch
                self._recheck(force=False)
                if self.between_batches is not None:
                    self.between_batches()
                if time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    self._report()
            # Flush what had arrived when we were asked to stop, no more: while publishers keep going,
            # later messages stay unacknowledged on the broker and come back on the next start.
            remaining = self._queue.qsize()
            while remaining > 0 and (batch := self._drain_nowait(min(remaining, self._batch_size))):
                remaining -= len(batch)
                if not self._handle(batch):
                    break
            while self._recheck(force=True):
                pass
            log.info("stopped: flushed the batch in hand and %d queued readings", self.stats.received)
        finally:
            self._consumer.stop()
            self._pipeline.close()
            if self.drop_watch is not None:
                self.drop_watch.stop()
            self._report()

    def _deliver(self, messages: list[InboundMessage]) -> None:
        """Called on paho's network thread: parse the messages (`triage`), queue them, waiting while the
        queue is full.

        Once stopping, messages that find the queue full are dropped: they are unacknowledged, so the
        broker redelivers them. (Waiting unconditionally deadlocked the shutdown: paho's thread blocked
        in a full queue, and stopping waits for that thread.)
        """
        if self._triage is not None:
            try:
                messages = self._triage(messages)
            except Exception:  # a bug: their batch parses them instead
                log.exception("could not parse %d messages on arrival", len(messages))
        while messages:
            messages = messages[self._queue.put_many(messages, timeout=0.25) :]
            if messages and self._stopping.is_set():
                return

    def _collect(self) -> list[InboundMessage]:
        """Wait briefly for a first message, then take more until the batch is full or old enough.

        The batch is old enough `batch_max_wait` after its first message *arrived*: when the loop is
        behind, that has passed and the batch takes what is queued without waiting (waiting anyway
        idled the loop for a third of its time under live load: profiled).
        """
        batch = self._queue.get_many(self._batch_size, timeout=0.25)
        if not batch:
            return []
        waited = (datetime.now(UTC) - batch[0].received_at).total_seconds()
        deadline = time.monotonic() + min(self._batch_max_wait, max(0.0, self._batch_max_wait - waited))
        while len(batch) < self._batch_size:
            more = self._queue.get_many(
                self._batch_size - len(batch), timeout=max(0.0, deadline - time.monotonic())
            )
            if not more:
                break
            batch.extend(more)
        return batch

    def _drain_nowait(self, limit: int) -> list[InboundMessage]:
        return self._queue.get_many(limit, timeout=0)

    def _handle(self, batch: list[InboundMessage]) -> bool:
        """Process with retries, then ack; False when stopping before the batch could be written."""
        delay = 0.5
        while True:
            started = time.perf_counter()
            try:
                result = self._pipeline.process(batch)
                break
            except RETRYABLE as exc:
                metrics.BATCH_RETRIES.labels(error=type(exc).__name__).inc()
                self.stats.failed_attempts += 1
                self.stats.degraded_reason = str(exc)
                log.warning(
                    "batch of %d not stored (%s); retrying in %.1f s, nothing acknowledged",
                    len(batch),
                    exc,
                    delay,
                )
                if self._wait_to_retry(delay):
                    log.warning(
                        "stopping with %d readings unacknowledged: the broker will redeliver them", len(batch)
                    )
                    return False
                delay = min(delay * 2, self._retry_max_delay)
        if self.stats.degraded_reason is not None:
            log.info(
                "storage is back; batch of %d stored after %d failed attempts",
                len(batch),
                self.stats.failed_attempts,
            )
            self.stats.degraded_reason = None
        self._consumer.ack(batch)
        metrics.record_batch(
            len(batch),
            len(result.stored),
            (q.reason for q in result.quarantined),
            time.perf_counter() - started,
        )
        self.stats.received += len(batch)
        self.stats.stored += len(result.stored)
        self.stats.quarantined += len(result.quarantined)
        self.stats.batches += 1
        return True

    def _wait_to_retry(self, delay: float) -> bool:
        """Wait `delay` seconds before a batch's next attempt, the pipeline looking in the queue for
        critical readings every `RETRY_LOOK_EVERY` meanwhile; True when asked to stop."""
        deadline = time.monotonic() + delay
        while True:
            self._pipeline.look_between_attempts()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._stopping.wait(min(left, RETRY_LOOK_EVERY)):
                return True

    def _recheck(self, *, force: bool) -> int:
        """The pipeline's second look at what it stored (shared subscriptions only), one chunk; how many
        readings it decided again (0 also when it failed: it is tried again later)."""
        try:
            rechecked = self._pipeline.recheck(force=force)
        except RETRYABLE as exc:
            log.warning("could not decide stored readings again (%s); trying again later", exc)
            return 0
        if rechecked:
            metrics.READINGS_RECHECKED.inc(rechecked)
            log.debug("decided %d readings again with their history reloaded", rechecked)
        return rechecked

    def _report(self) -> None:
        stats = self.stats
        log.info(
            "received %d, stored %d, quarantined %d in %d batches; queue %d",
            stats.received,
            stats.stored,
            stats.quarantined,
            stats.batches,
            self._queue.qsize(),
        )


def build_gateway(settings: Settings, *, stop: threading.Event | None = None) -> Gateway:
    """Wire the real clients from settings; waits for InfluxDB while `stop` is not set."""
    store = metrics.TimedStore(open_store_when_ready(settings, stop or threading.Event()))
    engine = make_engine(settings.database_url, idle_ping_seconds=IDLE_PING_SECONDS)
    check_current(engine)
    sessions = session_factory(engine)
    clinic = load_clinic_thresholds(settings.alerts.thresholds_file)
    # The window rules must see their whole window, whatever the clinic configured.
    history_days = max(settings.alerts.history_days, clinic.history_needed.days + 1)
    # The history reads through a store of its own: the pipeline's store is busy writing meanwhile, on
    # another thread (gateway.ingest), and the HTTP clients are not meant to be shared across threads.
    history_store = metrics.TimedStore(open_store(settings.influx))
    alert_engine = AlertEngine(
        sessions=sessions,
        history=RecentReadings(
            history_store,
            days=history_days,
            max_patients=settings.alerts.history_cache_patients,
            ttl=history_ttl(settings.mqtt.topic),
        ),
        clinic=clinic,
        settings=settings.alerts,
        clock=utc_now,
    )
    pipeline = IngestPipeline(
        store=store,
        registry=EnrolmentRegistry(
            sessions, cache_size=settings.gateway.registry_cache_size, ttl=settings.gateway.registry_cache_ttl
        ),
        quarantine=Quarantine(sessions),
        limits=WireLimits(
            max_future_skew=timedelta(seconds=settings.gateway.max_future_skew_seconds),
            pulse_pressure_min=settings.gateway.pulse_pressure_min,
            pulse_pressure_max=settings.gateway.pulse_pressure_max,
        ),
        clock=utc_now,
        rules=alert_engine,
        rate_limiter=_rate_limiter(settings),
        recheck_after=peer_recheck_after(settings),
    )
    gateway = Gateway(
        consumer_factory=lambda deliver: MqttConsumer(settings.mqtt, deliver),
        pipeline=pipeline,
        batch_size=settings.gateway.batch_size,
        batch_max_wait=settings.gateway.batch_max_wait,
        # Twice the Receive Maximum: after a reconnect the old connection's messages may still be queued.
        queue_size=2 * settings.mqtt.receive_maximum,
        retry_max_delay=settings.gateway.storage_retry_max_delay,
        checks={"influxdb": influx_check(settings.influx.url), "database": database_check(engine)},
        drop_watch=BrokerDropWatch(settings.mqtt),
        triage=pipeline.triage,
    )
    # A critical reading queued behind the batch in hand is decided meanwhile.
    pipeline.watch_queue(gateway.queued)
    return gateway


def history_ttl(topic: str) -> float:
    """How long a patient's cached history is trusted before it is reloaded from InfluxDB, in seconds.

    A gateway that receives every reading (a plain subscription, even with other gateways beside it)
    sees each reading of a patient pass through its cache, so the cache stays exact: it reloads once
    an hour, to see what something else than a gateway (an import) wrote. A member of a shared
    subscription ($share/..., or EMQX's $queue/...) receives only its share: it reloads after 60 s to
    see what the others stored. Reloading every minute on every gateway made live ingest reload each
    patient's week every minute (profiled).
    """
    return 60.0 if _shared(topic) else 3600.0


def peer_recheck_after(settings: Settings) -> float | None:
    """Seconds after which a member of a shared subscription decides its readings again (None: never).

    A gateway on a plain subscription sees every reading itself: nothing to recheck.
    """
    seconds = settings.gateway.peer_recheck_seconds
    return seconds if _shared(settings.mqtt.topic) and seconds > 0 else None


def _shared(topic: str) -> bool:
    """Whether the subscription is shared with other gateways (MQTT v5 $share/..., EMQX's $queue/...)."""
    return topic.startswith(("$share/", "$queue/"))


def _rate_limiter(settings: Settings) -> DeviceRateLimiter | None:
    gateway = settings.gateway
    if gateway.rate_limit_per_second == 0:
        return None
    return DeviceRateLimiter(
        rate_per_second=gateway.rate_limit_per_second,
        burst=gateway.rate_limit_burst,
        max_devices=gateway.rate_limit_devices,
        clock=time.monotonic,
    )


def open_store_when_ready(settings: Settings, stop: threading.Event) -> ReadingStore:
    """Open the time-series store, retrying with backoff while it is unreachable (start-up order)."""
    delay = 0.5
    while True:
        try:
            store = open_store(settings.influx)
            store.ensure_ready()
            return store
        except StorageUnavailable as exc:
            log.warning("time-series store not ready (%s); retrying in %.1f s", exc, delay)
            if stop.wait(delay):
                raise
            delay = min(delay * 2, settings.gateway.storage_retry_max_delay)
