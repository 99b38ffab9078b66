"""Rule evaluation for a stored batch: history -> pure rules -> lifecycle.

`stage` joins the batch to its patients' history (reading InfluxDB for patients not cached), `prepare`
reads the thresholds and decides, `commit` applies the decisions and records the batch's activity in
one database transaction. The gateway stages before it writes the batch to InfluxDB, prepares while the
write runs and commits once the batch is stored (the part with a critical reading: while it is being
stored), before it acknowledges the MQTT messages, so a crash re-evaluates rather than forgets;
re-evaluating a reading is a no-op in the lifecycle (it keys on msg_id) and in the outbox (idempotency
keys). `evaluate` is all three in one call.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from alerts.history import BatchHistory, RecentReadings
from alerts.lifecycle import ApplyResult, apply
from alerts.model import Decision, DecisionKind, ReadingView, Severity
from alerts.rules import Series, critical_by_value, evaluate_series
from alerts.threshold_store import ThresholdCache
from alerts.thresholds import Thresholds
from alerts.timerules import ActivityCache, record_activity
from gateway import metrics
from gateway.errors import GatewayError
from gateway.timeseries.base import StoredReading
from gateway.wire import Reading
from rpmgw.settings import AlertsSettings

log = logging.getLogger(__name__)


class AlertStoreUnavailable(GatewayError):
    """The relational database could not record the batch's alerts: retry the batch later."""


@dataclass(frozen=True, slots=True)
class StagedBatch:
    """A batch with its patients' history (`AlertEngine.stage`)."""

    batch: Sequence[StoredReading]
    now: datetime
    history: BatchHistory


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A batch's decisions, made but not applied (`AlertEngine.prepare`)."""

    batch: Sequence[StoredReading]
    now: datetime
    decisions: list[Decision]
    threshold_versions: dict[str, str]  # patient -> label of the thresholds the decisions used


@dataclass(frozen=True, slots=True)
class EngineResult:
    """What one batch's evaluation decided and did."""

    decisions: list[Decision]
    applied: ApplyResult


def _without_history(decision: Decision) -> bool:
    """Whether a decision stands when the history was incomplete (the store could not be read): a
    critical rule's breach or re-measure advice, which the reading's value decides alone.

    Not a window rule's (2 of 3 high, the weekly mean, repeated hypoglycaemia: a missing reading changes
    them either way) and no CLEAR (a newer reading the gateway cannot see would forbid it). A severe
    reading's confirmation by a repeat the cache does not hold is missed: the alert says pending.
    """
    return decision.kind is not DecisionKind.CLEAR and decision.severity is Severity.CRITICAL


class AlertEngine:
    """Evaluates the rules for a batch of stored readings and applies the decisions."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        history: RecentReadings,
        clinic: Thresholds,
        settings: AlertsSettings,
        clock: Callable[[], datetime],
    ) -> None:
        self._sessions = sessions
        self._history = history
        self._clinic = clinic
        self._settings = settings
        self._clock = clock
        self._late_after = timedelta(minutes=settings.late_after_minutes)
        self._activity = ActivityCache()
        self._thresholds = ThresholdCache(clinic)

    def evaluate(self, batch: Sequence[StoredReading]) -> EngineResult:
        """Evaluate every reading of the batch (per patient, oldest first) and apply the decisions."""
        return self.commit(self.prepare(self.stage(batch)))

    def urgent(self, reading: Reading) -> bool:
        """Whether the reading's value alone breaches a critical rule under the clinic's thresholds, and
        it is not late (a late reading texts nobody: there is nothing to hurry for).

        The gateway stores and decides such readings (with the rest of their patient's batch) before
        the rest of the batch. A patient's own thresholds are not read here (that needs the database):
        a reading critical only under stricter ones of the patient's is decided with the rest of the
        batch, as every reading was before.
        """
        # The value first: most readings are not critical, and reading the clock costs more (a drain asks
        # for every reading).
        return (
            critical_by_value(self._clinic, reading)
            and self._clock() - reading.measured_at <= self._late_after
        )

    def stage(self, batch: Sequence[StoredReading], *, without_store: bool = False) -> StagedBatch:
        """The batch patients' history, with the batch's readings joined to it (the history cache).

        Reads the store for patients not cached: call it before the batch's write starts, never while
        it runs (InfluxDB 1.x lets a query see a point half-written: some fields and not others). If
        the store then refuses some readings, call `forget` and stage what was stored again.

        `without_store` (the store cannot be read): staged from what the cache holds and the batch;
        `prepare` then decides only what the readings' values decide alone (see there).
        """
        now = self._clock()
        return StagedBatch(batch, now, self._history.for_batch(batch, now, without_store=without_store))

    def prepare(self, staged: StagedBatch, between: Callable[[], object] | None = None) -> PreparedBatch:
        """The rules' decisions for a staged batch, nothing written (no store access either): the
        gateway runs this while the batch is being stored, and `commit`s it once the store has it (or,
        for the part with a critical reading, right away: gateway.ingest).

        `between` is called between patients: the gateway looks at its queue there for critical
        readings (deciding a batch of a thousand readings takes tens of milliseconds). It may stage,
        prepare and commit other patients' readings, not this batch's.
        """
        by_patient: dict[str, list[tuple[StoredReading, ReadingView]]] = defaultdict(list)
        for stored, view in zip(staged.batch, staged.history.views, strict=True):
            by_patient[stored.patient_id].append((stored, view))
        try:
            with self._sessions() as session:
                thresholds = self._thresholds.thresholds_for(session, by_patient.keys())
        except DBAPIError as exc:
            raise AlertStoreUnavailable(f"could not read thresholds: {str(exc.orig)[:300]}") from exc
        decisions = self._decide(by_patient, staged.history.series, thresholds, staged.now, between)
        if not staged.history.complete:
            decisions = [d for d in decisions if _without_history(d)]
        return PreparedBatch(
            staged.batch,
            staged.now,
            decisions,
            {patient: label for patient, (_, label) in thresholds.items()},
        )

    def commit(self, prepared: PreparedBatch) -> EngineResult:
        """Apply prepared decisions and record the batch's activity, in one transaction."""
        batch, now = prepared.batch, prepared.now
        try:
            with self._sessions.begin() as session:
                applied = apply(
                    session,
                    prepared.decisions,
                    threshold_versions=prepared.threshold_versions,
                    now=now,
                    settings=self._settings,
                )
                activity = record_activity(
                    session,
                    [
                        (s.patient_id, s.reading.type, s.reading.measured_at, s.reading.device_id)
                        for s in batch
                    ],
                    now,
                    cache=self._activity,
                )
        except DBAPIError as exc:
            raise AlertStoreUnavailable(f"could not record alerts: {str(exc.orig)[:300]}") from exc
        self._activity.remember(activity)  # committed: only now may later batches skip these rows
        metrics.record_alerts_opened(applied.opened_rules)
        return EngineResult(prepared.decisions, applied)

    def forget(self, batch: Sequence[StoredReading]) -> None:
        """Drop the batch's patients from the history cache (reloaded from the store when next seen)."""
        self._history.forget({s.patient_id for s in batch})

    def _decide(
        self,
        by_patient: dict[str, list[tuple[StoredReading, ReadingView]]],
        series: dict[str, dict[str, Series]],
        thresholds: dict[str, tuple[Thresholds, str]],
        now: datetime,
        between: Callable[[], object] | None = None,
    ) -> list[Decision]:
        decisions: list[Decision] = []
        for patient, readings in by_patient.items():
            if between is not None:
                between()
            patient_thresholds = thresholds.get(patient, (self._clinic, "clinic"))[0]
            seen: set[str] = set()
            views = []
            for stored, view in sorted(readings, key=lambda pair: pair[0].reading.measured_at):
                if stored.reading.msg_id in seen:  # a redelivery inside the same batch
                    continue
                seen.add(stored.reading.msg_id)
                views.append(view)
            decisions.extend(
                evaluate_series(
                    patient_thresholds, patient, series[patient], views, now, late_after=self._late_after
                )
            )
        return decisions
