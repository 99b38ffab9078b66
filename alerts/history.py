"""Each patient's recent readings for the window rules, from InfluxDB behind a bounded cache.

The cache holds at most `max_patients` patients (least recently used out) and, per patient, at most
`max_per_patient` readings of the last `days` days (a flooding device cannot grow it: past the cap the
oldest are dropped down to nine tenths of it). A patient missing
from the cache, or cached longer than `ttl` seconds ago, is (re)loaded from the store; patients of one
batch are loaded in one round trip. With one gateway every reading passes through the cache, so it is
exact; with several gateways sharing the load, a reading stored by another gateway is seen within `ttl`
(the gateway picks it: see gateway.service.history_ttl), and the gateway's second look at its own readings
(gateway.ingest.IngestPipeline.recheck) reloads the history to decide them with the others' in view.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from alerts.model import ReadingView
from alerts.rules import Series
from gateway.timeseries.base import ReadingStore, StoredReading

# How much further back than needed a patient's history is loaded and kept.
RELOAD_MARGIN = timedelta(days=1)
# Old readings are dropped when the needed window has moved on by this much (not every batch).
PRUNE_STEP = timedelta(hours=1)


@dataclass(slots=True)
class _Entry:
    loaded_at: float
    since: datetime  # what the store was asked for: readings older than this are not known here
    pruned_to: datetime
    readings: dict[str, ReadingView] = field(default_factory=dict)  # by msg_id, every type and quality
    series: dict[str, Series] = field(default_factory=dict)  # by type: what the rules look at

    def put(self, view: ReadingView) -> None:
        old = self.readings.get(view.msg_id)
        if old is not None and old.type != view.type:
            self.series[old.type].discard(old.msg_id)
        self.readings[view.msg_id] = view
        series = self.series.get(view.type)
        if series is None:
            series = self.series[view.type] = Series(view.type)
        series.put(view)


@dataclass(frozen=True, slots=True)
class BatchHistory:
    """What `for_batch` hands the rules: each batch patient's series, and the batch's readings as views."""

    series: dict[str, dict[str, Series]]  # patient -> type -> series (batch readings included)
    views: list[ReadingView]  # one per batch reading, in batch order
    # False when the store could not be read (`for_batch(..., without_store=True)`): some patients'
    # series then hold only what the cache and the batch had.
    complete: bool = True


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

    def for_batch(
        self, batch: Sequence[StoredReading], now: datetime, *, without_store: bool = False
    ) -> BatchHistory:
        """Each batch patient's readings since `now - days` plus the batch's own, as series per type.

        The series may also hold older readings (up to a day and an hour more): the rules' windows,
        measured back from a batch reading, never reach them.

        `without_store`: the store cannot be read (it is down). Nothing is loaded: a patient cached
        (however long ago) gets the cached readings, one not cached gets only the batch's, in an entry
        that is not kept; the history is marked incomplete (`BatchHistory.complete`).
        """
        # A late (buffered) reading needs the window before its own measured_at.
        since = min([now, *(s.reading.measured_at for s in batch)]) - self._window
        # Loaded and kept a margin further back: in a backlog of mixed ages each batch reaches a little
        # further into the past, and without it nearly every batch reloaded every patient (profiled).
        keep_since = since - RELOAD_MARGIN
        patients = list(dict.fromkeys(s.patient_id for s in batch))
        if without_store:
            entries = {patient: self._entry_or_bare(patient, keep_since) for patient in patients}
        else:
            self._load(self._stale(patients, since), keep_since)
            entries = {patient: self._entry(patient) for patient in patients}
        views = []
        for stored in batch:
            view = ReadingView.from_stored(stored)
            entries[stored.patient_id].put(view)
            views.append(view)
        for entry in entries.values():
            self._prune(entry, keep_since)
        self._evict()
        series = {patient: entry.series for patient, entry in entries.items()}
        return BatchHistory(series, views, complete=not without_store)

    def forget(self, patients: Iterable[str]) -> None:
        """Drop these patients' entries: their next batch reloads them from the store."""
        for patient in patients:
            self._cache.pop(patient, None)

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
            entry = _Entry(now, since, since)
            for stored in loaded.get(patient, []):
                entry.put(ReadingView.from_stored(stored))
            self._cache[patient] = entry
            self._cache.move_to_end(patient)

    def _entry_or_bare(self, patient: str, since: datetime) -> _Entry:
        """The cached entry, or one holding nothing yet that the cache does not keep (`for_batch`
        without the store): the next batch that can read the store loads the patient in full."""
        entry = self._cache.get(patient)
        if entry is None:
            return _Entry(self._clock(), since, since)
        self._cache.move_to_end(patient)
        return entry

    def _entry(self, patient: str) -> _Entry:
        # Every batch patient was (re)loaded or found fresh by `_load` just before.
        self._cache.move_to_end(patient)
        return self._cache[patient]

    def _prune(self, entry: _Entry, since: datetime) -> None:
        entry.since = max(entry.since, since)
        if since - entry.pruned_to >= PRUNE_STEP:
            entry.pruned_to = since
            for msg_id in [msg_id for msg_id, r in entry.readings.items() if r.measured_at < since]:
                del entry.readings[msg_id]
            for series in entry.series.values():
                series.drop_before(since)
        if len(entry.readings) > self._max_per_patient:
            # Trimmed to nine tenths of the cap, the oldest out: a flooding patient is trimmed once per
            # tenth of the cap, not once per batch (re-sorting every batch stalled the gateway for longer
            # than the MQTT keep-alive at 5 readings/s per device).
            times = sorted(r.measured_at for r in entry.readings.values())
            cutoff = times[len(times) - self._max_per_patient * 9 // 10]
            for msg_id in [msg_id for msg_id, r in entry.readings.items() if r.measured_at < cutoff]:
                del entry.readings[msg_id]
            for series in entry.series.values():
                series.drop_before(cutoff)

    def _evict(self) -> None:
        while len(self._cache) > self._max_patients:
            self._cache.popitem(last=False)
