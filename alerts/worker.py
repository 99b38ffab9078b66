"""The `rpmgw worker` process: time-driven rules and SMS delivery, each on its own fixed tick.

All state is in the database, so any number of workers may run and any may be killed: time rules are
idempotent, and outbox rows are claimed before they are sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from alerts.notify.delivery import Delivery, DeliveryReport
from alerts.tables import Alert
from alerts.threshold_store import thresholds_for
from alerts.thresholds import Thresholds
from alerts.timerules import run_time_rules
from gateway import metrics
from rpmgw.settings import AlertsSettings

log = logging.getLogger(__name__)

MAX_DELIVERY_ROUNDS_PER_TICK = 50


@dataclass(slots=True)
class WorkerStats:
    """Running totals, for logs and (later) metrics."""

    ticks: int = 0
    failed_ticks: int = 0
    sent: int = 0


class Worker:
    """Runs the time rules and the delivery of texts, each on its own loop and interval, until stopped."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        delivery: Delivery,
        clinic: Thresholds,
        settings: AlertsSettings,
        clock: Callable[[], datetime],
    ) -> None:
        self._sessions = sessions
        self._delivery = delivery
        self._clinic = clinic
        self._settings = settings
        self._clock = clock
        self._stop = threading.Event()
        self.stats = WorkerStats()
        # Acknowledgements up to here are in the time-to-acknowledge histogram (start: now).
        self._acks_seen_until: datetime | None = None

    def stop(self) -> None:
        """Finish the current rounds, then return from `run`."""
        self._stop.set()

    def run(self) -> None:
        """Run the time rules, critical texts and routine texts until stopped, each on its own loop.

        Apart, so that a critical text the gateway queued waits for the next round of its own lane only:
        not for a run of the time rules (which look at every patient: one loop doing both put that run
        into every critical text's latency), and not behind routine texts (the bench's 1,040 new-patient
        reminders, each a round trip to the provider, held critical texts up for 2.5 s; at 08:00, when
        quiet hours end, a region's reminders would hold them for minutes). The loops are idempotent
        against each other and against other workers (outbox rows are claimed). A failing round
        (database down) is logged and tried again next time.
        """
        every = self._settings.delivery_interval_seconds
        failures: list[BaseException] = []

        def guarded(round_: Callable[[], None], interval: float) -> None:
            # A loop that dies stops the whole worker (and so its process, for the supervisor to
            # restart): a worker quietly running without its time rules or its routine texts is worse.
            try:
                self._loop(round_, interval)
            except BaseException as exc:
                failures.append(exc)
                self._stop.set()

        others = [
            threading.Thread(
                target=guarded,
                args=(self._rules_round, self._settings.worker_interval_seconds),
                name="time-rules",
                daemon=True,
            ),
            threading.Thread(
                target=guarded,
                args=(partial(self._delivery_round, False), every),
                name="routine-texts",
                daemon=True,
            ),
        ]
        for thread in others:
            thread.start()
        try:
            self._loop(partial(self._delivery_round, True), every)
        finally:
            self._stop.set()
            for thread in others:
                thread.join(60)
        if failures:
            raise RuntimeError(f"a worker loop failed: {failures[0]!r}") from failures[0]

    def _loop(self, round_: Callable[[], None], interval: float) -> None:
        while not self._stop.is_set():
            try:
                round_()
                metrics.WORKER_TICKS.labels(outcome="ok").inc()
            except DBAPIError as exc:
                metrics.WORKER_TICKS.labels(outcome="failed").inc()
                self.stats.failed_ticks += 1
                log.warning("worker round failed (%s); trying again in %.1f s", exc.orig, interval)
            self._stop.wait(interval)

    def _rules_round(self) -> None:
        now = self._clock()
        with self._sessions.begin() as session:
            report = run_time_rules(
                session,
                now=now,
                clinic=self._clinic,
                settings=self._settings,
                thresholds_for=lambda patient_id: thresholds_for(session, [patient_id], self._clinic)[
                    patient_id
                ],
            )
        if report.total:
            log.info("time rules: %s", report)
        self._observe_acknowledgements(now)
        self.stats.ticks += 1

    def _delivery_round(self, critical: bool) -> None:
        # Bounded: a round never spins on rows that keep coming back (they have their own backoff).
        for _ in range(MAX_DELIVERY_ROUNDS_PER_TICK):
            delivered = self._delivery.run_once(critical=critical)
            _count_texts(delivered)
            self.stats.sent += delivered.sent
            if delivered.total:
                log.info("texts: %s", delivered)
            if delivered.total == 0 or self._stop.is_set():
                break

    def _observe_acknowledgements(self, now: datetime) -> None:
        """Put alerts acknowledged since the last tick into the time-to-acknowledge histogram."""
        since, self._acks_seen_until = self._acks_seen_until, now
        if since is None:
            return
        with self._sessions() as session:
            rows = session.execute(
                select(Alert.severity, Alert.opened_at, Alert.acknowledged_at).where(
                    Alert.acknowledged_at > since, Alert.acknowledged_at <= now
                )
            )
            for severity, opened_at, acknowledged_at in rows:
                seconds = max(0.0, (acknowledged_at - opened_at).total_seconds())
                metrics.TIME_TO_ACKNOWLEDGE.labels(severity=severity).observe(seconds)


def _count_texts(report: DeliveryReport) -> None:
    metrics.SMS_SENT.inc(report.sent)
    metrics.SMS_FAILED.labels(reason="permanent").inc(report.failed)
    metrics.SMS_FAILED.labels(reason="retry").inc(report.retried)
    metrics.SMS_HELD.labels(reason="deferred").inc(report.deferred)
    metrics.SMS_HELD.labels(reason="suppressed").inc(report.suppressed)
