"""Each patient's recent readings for the window rules, from InfluxDB behind a bounded cache.

The cache holds at most `max_patients` patients (least recently used out) and, per patient, at most
`max_per_patient` readings of the last `days` days (a flooding device cannot grow it). A patient missing
from the cache, or cached longer than `ttl` seconds ago, is (re)loaded from the store; patients of one
batch are loaded in one round trip. With one gateway every reading passes through the cache, so it is
exact; with several gateways sharing the load, a reading stored by another gateway is seen within `ttl`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from alerts.model import ReadingView
from gateway.timeseries.base import ReadingStore, StoredReading

# How much further back than needed a patient's history is loaded and kept.
RELOAD_MARGIN = timedelta(days=1)


@dataclass(slots=True)
class _Entry:
    loaded_at: float
    since: datetime  # what the store was asked for: readings older than this are not known here
    readings: dict[str, ReadingView] = field(default_factory=dict)  # by msg_id


class RecentReadings:
    """Bounded per-patient history: `for_batch` returns every batch patient's readings, batch included."""

    def __init__(
        self,
        store: ReadingStore,
        *,
        days: int,
        max_patients: int,
        ttl: float = 60.0,
        max_per_patient: int = 2_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._window = timedelta(days=days)
        self._max_patients = max_patients
        self._ttl = ttl
        self._max_per_patient = max_per_patient
        self._clock = clock
        self._cache: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def for_batch(self, batch: Sequence[StoredReading], now: datetime) -> dict[str, list[ReadingView]]:
        """Each batch patient's readings since `now - days` plus the batch's own, oldest first."""
        # Grouped once: scanning the whole batch for every patient was quadratic (profiled: 1/4 of it).
        by_patient: dict[str, list[StoredReading]] = {}
        for stored in batch:
            by_patient.setdefault(stored.patient_id, []).append(stored)
        patients = list(by_patient)
        # A late (buffered) reading needs the window before its own measured_at.
        since = min([now, *(s.reading.measured_at for s in batch)]) - self._window
        # Loaded and kept a margin further back: in a backlog of mixed ages each batch reaches a little
        # further into the past, and without it nearly every batch reloaded every patient (profiled).
        keep_since = since - RELOAD_MARGIN
        self._load(self._stale(patients, since), keep_since)
        result: dict[str, list[ReadingView]] = {}
        for patient in patients:
            entry = self._entry(patient)
            for stored in by_patient[patient]:
                entry.readings[stored.reading.msg_id] = ReadingView.from_stored(stored)
            self._prune(entry, keep_since)
            result[patient] = sorted(
                (r for r in entry.readings.values() if r.measured_at >= since), key=lambda r: r.measured_at
            )
        self._evict()
        return result

    def _stale(self, patients: Iterable[str], since: datetime) -> list[str]:
        now = self._clock()
        stale = []
        for patient in patients:
            entry = self._cache.get(patient)
            if entry is None or now - entry.loaded_at > self._ttl or since < entry.since:
                stale.append(patient)
        return stale

    def _load(self, patients: list[str], since: datetime) -> None:
        if not patients:
            return
        loaded = self._store.recent(patients, since)
        now = self._clock()
        for patient in patients:
            entry = _Entry(now, since)
            for stored in loaded.get(patient, []):
                entry.readings[stored.reading.msg_id] = ReadingView.from_stored(stored)
            self._cache[patient] = entry
            self._cache.move_to_end(patient)

    def _entry(self, patient: str) -> _Entry:
        # Every batch patient was (re)loaded or found fresh by `_load` just before.
        self._cache.move_to_end(patient)
        return self._cache[patient]

    def _prune(self, entry: _Entry, since: datetime) -> None:
        entry.since = max(entry.since, since)
        old = [msg_id for msg_id, r in entry.readings.items() if r.measured_at < since]
        for msg_id in old:
            del entry.readings[msg_id]
        if len(entry.readings) > self._max_per_patient:
            newest = sorted(entry.readings.values(), key=lambda r: r.measured_at)[-self._max_per_patient :]
            entry.readings = {r.msg_id: r for r in newest}

    def _evict(self) -> None:
        while len(self._cache) > self._max_patients:
            self._cache.popitem(last=False)
