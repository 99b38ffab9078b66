"""Rule evaluation for a stored batch: history -> pure rules -> lifecycle, in one database transaction.

The gateway calls `AlertEngine.evaluate` after the batch is in InfluxDB and before it acknowledges the
MQTT messages, so a crash re-evaluates rather than forgets; re-evaluating a reading is a no-op in the
lifecycle (it keys on msg_id) and in the outbox (idempotency keys).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from alerts.history import RecentReadings
from alerts.lifecycle import ApplyResult, apply
from alerts.model import Decision, ReadingView
from alerts.rules import Series, evaluate_series
from alerts.tables import Alert
from alerts.threshold_store import ThresholdCache
from alerts.thresholds import Thresholds
from alerts.timerules import ActivityCache, record_activity
from gateway import metrics
from gateway.errors import GatewayError
from gateway.timeseries.base import StoredReading
from rpmgw.settings import AlertsSettings

log = logging.getLogger(__name__)


class AlertStoreUnavailable(GatewayError):
    """The relational database could not record the batch's alerts: retry the batch later."""


@dataclass(frozen=True, slots=True)
class EngineResult:
    """What one batch's evaluation decided and did."""

    decisions: list[Decision]
    applied: ApplyResult


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
        now = self._clock()
        history = self._history.for_batch(batch, now)
        by_patient: dict[str, list[tuple[StoredReading, ReadingView]]] = defaultdict(list)
        for stored, view in zip(batch, history.views, strict=True):
            by_patient[stored.patient_id].append((stored, view))
        try:
            with self._sessions.begin() as session:
                thresholds = self._thresholds.thresholds_for(session, by_patient.keys())
                decisions = self._decide(by_patient, history.series, thresholds, now)
                applied = apply(
                    session,
                    decisions,
                    threshold_versions={patient: label for patient, (_, label) in thresholds.items()},
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
                opened = _rules_and_severities(session, applied.opened)
        except DBAPIError as exc:
            raise AlertStoreUnavailable(f"could not record alerts: {str(exc.orig)[:300]}") from exc
        self._activity.remember(activity)  # committed: only now may later batches skip these rows
        metrics.record_alerts_opened(opened)
        return EngineResult(decisions, applied)

    def _decide(
        self,
        by_patient: dict[str, list[tuple[StoredReading, ReadingView]]],
        series: dict[str, dict[str, Series]],
        thresholds: dict[str, tuple[Thresholds, str]],
        now: datetime,
    ) -> list[Decision]:
        decisions: list[Decision] = []
        for patient, readings in by_patient.items():
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


def _rules_and_severities(session: Session, alert_ids: Sequence[int]) -> list[tuple[str, str]]:
    """(rule, severity) of newly opened alerts, for the metrics (one query, only when any opened)."""
    if not alert_ids:
        return []
    rows = session.execute(select(Alert.rule, Alert.severity).where(Alert.id.in_(alert_ids)))
    return [(rule, severity) for rule, severity in rows]
