"""The pipeline stores a batch on its writer thread while the rules decide, and commits the decisions
only once the store has taken the batch, except for a critical reading's: its patient's part is
committed while its write runs. Real InfluxDB, real database (SQLite and PostgreSQL), the real rule
engine; only the store's refusals, outages and stalls are injected, by a wrapper around the real store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from alerts import engine as engine_module
from alerts.engine import AlertEngine
from alerts.history import RecentReadings
from alerts.tables import Alert
from alerts.thresholds import Thresholds
from gateway import ingest as ingest_module
from gateway.errors import StorageRejected, StorageUnavailable
from gateway.ingest import BatchResult, IngestPipeline
from gateway.mqtt import InboundMessage
from gateway.quarantine import Quarantine
from gateway.registry import EnrolmentRegistry
from gateway.timeseries.base import StoredReading
from gateway.timeseries.influx_v1 import InfluxV1Store
from gateway.wire import WireLimits
from rpmgw.admin import add_patient, enrol_device
from rpmgw.settings import AlertsSettings, InfluxSettings
from tests.fixtures.db import MigratedDb
from tests.helpers import bp_message

DEVICE, PATIENT = "bp-overlap-1", "P-OVERLAP-1"
OTHER_DEVICE, OTHER_PATIENT = "bp-overlap-2", "P-OVERLAP-2"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


class FlakyStore:
    """The real store, refusing writes that hold a msg_id of `refused` and failing while `down`."""

    def __init__(self, store: InfluxV1Store) -> None:
        self.store = store
        self.refused: set[str] = set()
        self.down = False
        self.release = threading.Event()
        self.release.set()
        self.writing = threading.Event()
        self.history_read = threading.Event()
        self.history: WatchedHistoryStore | None = None  # the history's own store, set by the fixture
        self.before_write: Callable[[Sequence[StoredReading]], None] | None = None  # may raise

    def write(self, readings: Sequence[StoredReading]) -> None:
        if self.before_write is not None:
            self.before_write(readings)
        self.writing.set()
        try:
            self._write(readings)
        finally:
            self.writing.clear()

    def _write(self, readings: Sequence[StoredReading]) -> None:
        self.release.wait(30)
        # Gives a history read that would run alongside the write the time to do so (none should).
        self.history_read.wait(1)
        if self.down:
            raise StorageUnavailable("injected: InfluxDB unreachable")
        refused = [s.reading.msg_id for s in readings if s.reading.msg_id in self.refused]
        if refused:
            raise StorageRejected(f"injected: field type conflict for {refused}")
        self.store.write(readings)

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


class WatchedHistoryStore(InfluxV1Store):
    """The history's own store, noting each read made while the pipeline's write was in progress."""

    def __init__(self, settings: InfluxSettings, writes: FlakyStore) -> None:
        super().__init__(settings)
        self._writes = writes
        self.reads_during_writes = 0
        self.reads = 0
        self.down = False  # InfluxDB unreachable for reads too

    def recent(self, patient_ids: Sequence[str], since: datetime) -> dict[str, list[StoredReading]]:
        if self.down:
            raise StorageUnavailable("injected: InfluxDB unreachable (history)")
        self.reads += 1
        if self._writes.writing.is_set():
            self.reads_during_writes += 1
        self._writes.history_read.set()
        return super().recent(patient_ids, since)


@pytest.fixture
def deployment(
    migrated_db: MigratedDb, influx_store: InfluxV1Store, influx_settings: InfluxSettings
) -> Iterator[tuple[IngestPipeline, FlakyStore, MigratedDb]]:
    with migrated_db.sessions.begin() as session:
        add_patient(session, patient_id=PATIENT, display_name="Overlap", phone="+79990004001")
        enrol_device(session, device_id=DEVICE, patient_id=PATIENT, valid_from=T0 - timedelta(days=30))
        add_patient(session, patient_id=OTHER_PATIENT, display_name="Other", phone="+79990004002")
        enrol_device(
            session, device_id=OTHER_DEVICE, patient_id=OTHER_PATIENT, valid_from=T0 - timedelta(days=30)
        )
    flaky = FlakyStore(influx_store)
    history_store = flaky.history = WatchedHistoryStore(
        influx_settings, flaky
    )  # its own client, as in service
    clock = lambda: T0 + timedelta(minutes=30)  # noqa: E731
    engine = AlertEngine(
        sessions=migrated_db.sessions,
        history=RecentReadings(history_store, days=8, max_patients=100),
        clinic=Thresholds(),
        settings=AlertsSettings(),
        clock=clock,
    )
    pipeline = IngestPipeline(
        store=flaky,  # type: ignore[arg-type]  # a wrapper with the store's interface
        registry=EnrolmentRegistry(migrated_db.sessions, cache_size=10, ttl=0),
        quarantine=Quarantine(migrated_db.sessions),
        limits=WireLimits(),
        clock=clock,
        rules=engine,
    )
    try:
        yield pipeline, flaky, migrated_db
    finally:
        pipeline.close()
        history_store.close()


def _message(
    msg_id: str, minutes: int, systolic: int, diastolic: int, device: str = DEVICE
) -> InboundMessage:
    return bp_message(msg_id, device, T0 + timedelta(minutes=minutes), systolic, diastolic)


def _severe_alerts(db: MigratedDb) -> list[Alert]:
    with db.sessions() as session:
        return list(
            session.scalars(select(Alert).where(Alert.patient_id == PATIENT, Alert.rule == "severe_bp"))
        )


def _alerts_of_family(db: MigratedDb, family: str) -> list[Alert]:
    with db.sessions() as session:
        return list(session.scalars(select(Alert).where(Alert.patient_id == PATIENT, Alert.family == family)))


def _high_alerts(db: MigratedDb) -> list[Alert]:
    """The patient's stage-2 (high, not severe) blood-pressure alerts: decided with the rest of a batch."""
    with db.sessions() as session:
        return list(
            session.scalars(
                select(Alert).where(
                    Alert.patient_id == PATIENT, Alert.family == "bp_high", Alert.rule != "severe_bp"
                )
            )
        )


def test_a_reading_the_store_refuses_is_quarantined_and_forgotten_by_the_rules(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    pipeline, flaky, db = deployment
    # Measured two hours before the gateway's clock: late, so it is decided with the rest of its batch,
    # after the write. A late severe reading still opens an alert when stored (late, texting nobody).
    flaky.refused = {"refused-severe"}
    first = pipeline.process([_message("refused-severe", -90, 200, 125), _message("normal", -89, 120, 80)])
    assert [s.reading.msg_id for s in first.stored] == ["normal"]
    assert [(q.reason, q.device_id) for q in first.quarantined] == [("store_rejected", DEVICE)]
    assert _severe_alerts(db) == []  # no alert for a reading the store does not hold
    # 10 minutes after the refused one: a repeat of it would confirm. The rules must not remember it.
    pipeline.process([_message("stored-severe", -80, 200, 125)])
    [alert] = _severe_alerts(db)
    assert alert.confirmation == "pending"
    assert alert.late


def test_a_critical_reading_the_store_refuses_is_alerted_and_kept_in_quarantine(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    # The device measured 200/125 half an hour ago: the doctor hears of it whether or not InfluxDB takes
    # the point (a field type conflict, a series limit); the reading waits in quarantine.
    pipeline, flaky, db = deployment
    flaky.refused = {"refused-severe"}
    first = pipeline.process([_message("refused-severe", 0, 200, 125), _message("normal", 1, 120, 80)])
    assert [s.reading.msg_id for s in first.stored] == ["normal"]
    assert [(q.reason, q.device_id) for q in first.quarantined] == [("store_rejected", DEVICE)]
    [alert] = _severe_alerts(db)
    assert (alert.reading_count, alert.worst_value_text, alert.late) == (1, "200/125 mmHg", False)
    # The same batch again (a redelivery) alerts nobody twice.
    pipeline.process([_message("refused-severe", 0, 200, 125), _message("normal", 1, 120, 80)])
    [again] = _severe_alerts(db)
    assert (again.id, again.reading_count) == (alert.id, 1)


def test_nothing_is_committed_while_the_store_is_down_and_all_of_it_once_it_is_back(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    pipeline, flaky, db = deployment
    # High twice, not critical (DOMAIN.md: >= 160/100 on 2 of the last 3): decided with the batch.
    batch = [_message("high-1", 0, 170, 105), _message("high-2", 5, 168, 104)]
    flaky.down = True
    with pytest.raises(StorageUnavailable):
        pipeline.process(batch)
    assert _high_alerts(db) == []  # decided while the write ran, but not committed
    flaky.down = False
    again = pipeline.process(batch)  # the gateway retries the same batch
    assert [s.reading.msg_id for s in again.stored] == ["high-1", "high-2"]
    assert len(_high_alerts(db)) == 1


def test_a_critical_reading_is_alerted_while_the_store_is_down_and_stored_once_it_is_back(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    pipeline, flaky, db = deployment
    batch = [_message("severe-1", 0, 200, 125)]
    flaky.down = True
    with pytest.raises(StorageUnavailable):
        pipeline.process(batch)  # nothing acknowledged: the broker keeps the message
    [alert] = _severe_alerts(db)
    assert alert.confirmation == "pending"
    assert flaky.store.readings(PATIENT, T0 - timedelta(hours=1), T0 + timedelta(hours=1)) == []
    flaky.down = False
    again = pipeline.process(batch)  # the gateway retries the same batch
    assert [s.reading.msg_id for s in again.stored] == ["severe-1"]
    [same] = _severe_alerts(db)
    assert (same.id, same.reading_count) == (alert.id, 1)


def test_a_critical_reading_is_alerted_when_the_store_can_be_neither_written_nor_read(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    """InfluxDB down altogether and the patient's history not cached (a gateway started during the
    outage): the severe reading is alerted from its value now, not once InfluxDB is back."""
    pipeline, flaky, db = deployment
    assert flaky.history is not None
    flaky.down = flaky.history.down = True
    batch = [_message("severe-cold", 0, 200, 125)]
    counted = REGISTRY.get_sample_value("rpmgw_critical_decided_without_history_total") or 0.0
    with pytest.raises(StorageUnavailable):
        pipeline.process(batch)  # nothing acknowledged: the broker keeps the message
    assert REGISTRY.get_sample_value("rpmgw_critical_decided_without_history_total") == counted + 1
    [alert] = _severe_alerts(db)
    assert (alert.confirmation, alert.reading_count) == ("pending", 1)
    flaky.down = flaky.history.down = False
    reads = flaky.history.reads
    again = pipeline.process(batch)  # the gateway's retry, InfluxDB back
    assert [s.reading.msg_id for s in again.stored] == ["severe-cold"]
    assert flaky.history.reads > reads  # the history staged without the store was not kept
    [same] = _severe_alerts(db)
    assert (same.id, same.reading_count) == (alert.id, 1)


def test_without_the_history_only_the_critical_decisions_are_applied_the_rest_once_it_is_back(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    """A low reading after the severe one (urgent, decided by its value too) waits for the store: what
    the gateway decides without the history is only a critical rule's breach (DOMAIN.md severities)."""
    pipeline, flaky, db = deployment
    assert flaky.history is not None
    flaky.down = flaky.history.down = True
    batch = [_message("severe-then", 0, 200, 125), _message("low-after", 5, 85, 55)]
    with pytest.raises(StorageUnavailable):
        pipeline.process(batch)
    assert len(_severe_alerts(db)) == 1
    assert _alerts_of_family(db, "low_bp") == []
    flaky.down = flaky.history.down = False
    pipeline.process(batch)
    assert len(_severe_alerts(db)) == 1
    [low] = _alerts_of_family(db, "low_bp")
    assert (low.rule, low.reading_count, low.cleared_at) == ("low_bp", 1, None)


def test_a_critical_part_stored_while_its_history_cannot_be_read_is_decided_in_full_once_it_can(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    """InfluxDB takes writes but answers no query: the severe reading is alerted and the part stored, and
    the batch still fails until the history can be read, so that the low reading after it is decided."""
    pipeline, flaky, db = deployment
    assert flaky.history is not None
    flaky.history.down = True
    batch = [_message("severe-w", 0, 200, 125), _message("low-w", 5, 85, 55)]
    with pytest.raises(StorageUnavailable):
        pipeline.process(batch)
    assert len(_severe_alerts(db)) == 1 and _alerts_of_family(db, "low_bp") == []
    stored = flaky.store.readings(PATIENT, T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert sorted(_ids(stored)) == ["low-w", "severe-w"]
    flaky.history.down = False
    assert sorted(_ids(pipeline.process(batch).stored)) == ["low-w", "severe-w"]
    [low] = _alerts_of_family(db, "low_bp")
    assert (low.reading_count, low.cleared_at) == (1, None)
    assert len(_severe_alerts(db)) == 1


def test_a_critical_reading_queued_behind_a_batch_that_waits_for_influxdb_is_alerted_meanwhile(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    """InfluxDB down: the batch in hand fails and waits for its next attempt (the gateway retries it with
    backoff); a 205/125 of another patient queued behind it is alerted between the attempts, from its
    value. One of the failed batch's own patient waits for that batch."""
    pipeline, flaky, db = deployment
    assert flaky.history is not None
    queue: list[InboundMessage] = []
    pipeline.watch_queue(lambda start: (start, queue[start:]))
    flaky.down = flaky.history.down = True
    batch = [_message("own-normal", 0, 121, 79)]
    with pytest.raises(StorageUnavailable):
        pipeline.process(batch)
    queue += [_message("other-severe", 1, 205, 125, OTHER_DEVICE), _message("own-severe", 2, 206, 124)]
    pipeline.look_between_attempts()
    [other] = _alerts_of(db, OTHER_PATIENT)
    assert (other.rule, other.reading_count, other.confirmation) == ("severe_bp", 1, "pending")
    assert _severe_alerts(db) == []  # the failed batch's own patient waits for it
    flaky.down = flaky.history.down = False
    assert _ids(pipeline.process(batch).stored) == ["own-normal"]
    later = pipeline.process(queue)
    assert sorted(_ids(later.stored)) == ["other-severe", "own-severe"]
    [same] = _alerts_of(db, OTHER_PATIENT)
    assert (same.id, same.reading_count) == (other.id, 1)
    assert len(_severe_alerts(db)) == 1


def test_a_critical_alert_is_committed_while_its_write_stalls(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    # InfluxDB answering a write in half a second or more (compacting a backlog it has just taken) no
    # longer holds up the alert; the batch still waits for the write before it is acknowledged.
    pipeline, flaky, db = deployment
    flaky.release.clear()  # every write blocks until released
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(
            pipeline.process(
                [_message("other-0", 0, 120, 80, OTHER_DEVICE), _message("own-severe", 1, 205, 125)]
            )
        )
    )
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not _severe_alerts(db) and time.monotonic() < deadline:
            threading.Event().wait(0.02)
        assert len(_severe_alerts(db)) == 1  # committed while its write is still held
        assert flaky.writing.is_set() and worker.is_alive() and outcome == []
    finally:
        flaky.release.set()
        worker.join(30)
    [result] = outcome
    assert isinstance(result, BatchResult)
    assert sorted(_ids(result.stored)) == ["other-0", "own-severe"]


def test_the_history_is_read_before_the_write_starts_never_alongside_it(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    # InfluxDB 1.x lets a query see a point half-written (some fields, not others): a history read of the
    # batch's patients alongside the batch's write read such points, and the batch failed and waited.
    pipeline, flaky, _ = deployment
    pipeline.process([_message("first", 0, 120, 80)])  # the patient is not cached: the history is read
    history = flaky.history
    assert history is not None
    assert history.reads == 1
    assert history.reads_during_writes == 0


def test_a_failed_decision_waits_for_the_write_before_the_attempt_ends(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, flaky, _ = deployment
    flaky.release.clear()  # the write blocks until released
    rules = pipeline._rules
    assert rules is not None

    def failing(staged: object, between: object = None) -> object:
        threading.Timer(0.3, flaky.release.set).start()  # released after prepare has failed
        raise RuntimeError("injected: the rules failed")

    monkeypatch.setattr(rules, "prepare", failing)
    with pytest.raises(RuntimeError, match="injected"):
        pipeline.process([_message("normal-2", 3, 120, 80)])
    # process() returned only after the write: no write of a failed attempt is still running.
    assert flaky.release.is_set()
    assert flaky.store.readings(PATIENT, T0, T0 + timedelta(hours=1))[0].reading.msg_id == "normal-2"


def _ids(readings: Sequence[StoredReading]) -> list[str]:
    return [s.reading.msg_id for s in readings]


def _recorded_writes(flaky: FlakyStore) -> list[list[str]]:
    """The msg_ids of each write the store is asked for from now on."""
    writes: list[list[str]] = []
    flaky.before_write = lambda readings: writes.append(_ids(readings))
    return writes


def test_a_critical_reading_is_stored_and_alerted_before_the_rest_of_its_batch(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    pipeline, flaky, db = deployment
    writes: list[tuple[list[str], int]] = []  # each write's readings, and the severe alerts by then
    flaky.before_write = lambda readings: writes.append((_ids(readings), len(_severe_alerts(db))))
    batch = [
        _message("other-0", 0, 120, 80, OTHER_DEVICE),
        _message("own-1", 1, 125, 82),
        _message("other-2", 2, 121, 79, OTHER_DEVICE),
        _message("own-severe-3", 3, 205, 125),
    ]
    result = pipeline.process(batch)
    # The critical reading's patient first, with all of that patient's readings, in batch order; the
    # rest is written only once the alert is committed (the first part's commit runs beside its write).
    assert [ids for ids, _ in writes] == [["own-1", "own-severe-3"], ["other-0", "other-2"]]
    assert writes[1][1] == 1
    assert sorted(_ids(result.stored)) == ["other-0", "other-2", "own-1", "own-severe-3"]
    [alert] = _severe_alerts(db)
    assert alert.reading_count == 1


def test_a_batch_without_a_critical_reading_is_written_in_one_piece(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    pipeline, flaky, db = deployment
    writes = _recorded_writes(flaky)
    pipeline.process(
        [
            _message("other-0", 0, 150, 95, OTHER_DEVICE),
            _message("own-1", 1, 170, 110),  # high, not severe
            _message("other-2", 2, 121, 79, OTHER_DEVICE),
        ]
    )
    assert writes == [["other-0", "own-1", "other-2"]]
    assert _severe_alerts(db) == []


def test_a_late_critical_reading_waits_its_turn(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    # Measured more than an hour before the gateway's clock: late, so nobody is texted, nothing to hurry.
    pipeline, flaky, db = deployment
    writes = _recorded_writes(flaky)
    pipeline.process([_message("other-0", 0, 120, 80, OTHER_DEVICE), _message("own-late", -120, 205, 125)])
    assert writes == [["other-0", "own-late"]]
    [alert] = _severe_alerts(db)
    assert alert.late


def test_when_the_rest_fails_the_retry_stores_it_and_alerts_nobody_twice(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    pipeline, flaky, db = deployment
    batch = [_message("other-0", 0, 120, 80, OTHER_DEVICE), _message("own-severe-1", 1, 205, 125)]

    def influx_down_for_the_rest(readings: Sequence[StoredReading]) -> None:
        if "other-0" in _ids(readings):
            raise StorageUnavailable("injected: InfluxDB went away after the first part")

    flaky.before_write = influx_down_for_the_rest
    with pytest.raises(StorageUnavailable):
        pipeline.process(batch)
    assert len(_severe_alerts(db)) == 1  # the doctor is alerted although the batch is not done
    flaky.before_write = None
    again = pipeline.process(batch)  # the gateway retries the whole batch (nothing was acknowledged)
    assert sorted(_ids(again.stored)) == ["other-0", "own-severe-1"]
    [alert] = _severe_alerts(db)
    assert alert.reading_count == 1


def test_a_refusal_in_the_rest_restages_only_the_rest(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, flaky, _ = deployment
    rules = pipeline._rules
    assert rules is not None
    staged: list[list[str]] = []
    stage = rules.stage

    def recording_stage(batch: Sequence[StoredReading]) -> object:
        staged.append(_ids(batch))
        return stage(batch)

    monkeypatch.setattr(rules, "stage", recording_stage)
    flaky.refused = {"other-refused"}
    result = pipeline.process(
        [
            _message("other-0", 0, 120, 80, OTHER_DEVICE),
            _message("other-refused", 1, 121, 80, OTHER_DEVICE),
            _message("own-severe-2", 2, 205, 125),
        ]
    )
    assert sorted(_ids(result.stored)) == ["other-0", "own-severe-2"]
    assert [q.reason for q in result.quarantined] == ["store_rejected"]
    # Each stored reading is decided once: the first part's is not staged again with the rest's.
    assert staged == [["own-severe-2"], ["other-0", "other-refused"], ["other-0"]]


def _alerts_of(db: MigratedDb, patient: str) -> list[Alert]:
    with db.sessions() as session:
        return list(session.scalars(select(Alert).where(Alert.patient_id == patient)))


def test_a_critical_reading_queued_behind_a_stalled_write_is_alerted_meanwhile(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    # The batch in hand waits for InfluxDB; the gateway's queue holds a 205/125 of another patient behind
    # it, and one of the batch's own patient (its decisions are made and not committed: it waits).
    pipeline, flaky, db = deployment
    queue = [
        _message("other-normal", 0, 120, 80, OTHER_DEVICE),
        _message("other-severe", 1, 205, 125, OTHER_DEVICE),
        _message("own-severe", 2, 206, 124),
    ]
    looked_at: list[int] = []

    def queued(start: int) -> tuple[int, list[InboundMessage]]:
        looked_at.append(start)
        return start, queue[start:]

    pipeline.watch_queue(queued)
    flaky.release.clear()  # every write blocks until released
    outcome: list[BatchResult] = []
    worker = threading.Thread(
        target=lambda: outcome.append(pipeline.process([_message("own-0", 0, 121, 79)]))
    )
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not _alerts_of(db, OTHER_PATIENT) and time.monotonic() < deadline:
            threading.Event().wait(0.02)
        [other] = _alerts_of(db, OTHER_PATIENT)
        assert (other.rule, other.reading_count) == ("severe_bp", 1)
        assert flaky.writing.is_set() and worker.is_alive()  # the batch in hand is still being written
        assert _severe_alerts(db) == []  # the batch's own patient waits for the batch
        # Looked at from the start (and once more for the device's readings before the critical one),
        # then only at what arrived since: nothing twice.
        assert looked_at[:2] == [0, 0] and all(start == len(queue) for start in looked_at[2:])
    finally:
        flaky.release.set()
        worker.join(30)
    assert [_ids(r.stored) for r in outcome] == [["own-0"]]
    # Nothing left the queue: its own batch stores, decides (again: no second alert) and acknowledges it.
    assert flaky.store.readings(OTHER_PATIENT, T0 - timedelta(hours=1), T0 + timedelta(hours=1)) == []
    later = pipeline.process(queue)
    assert sorted(_ids(later.stored)) == ["other-normal", "other-severe", "own-severe"]
    [same] = _alerts_of(db, OTHER_PATIENT)
    assert (same.id, same.reading_count) == (other.id, 1)
    assert len(_severe_alerts(db)) == 1


def test_a_critical_reading_that_arrives_while_a_batch_is_decided_is_alerted_before_the_batch_is(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No stall: the batch in hand is decided as usual, which takes tens of milliseconds for hundreds of
    # patients. A 205/125 that arrives after the first patient's decisions is decided before the next's.
    pipeline, _, db = deployment
    third_device, third_patient = "bp-overlap-3", "P-OVERLAP-3"
    with db.sessions.begin() as session:
        add_patient(session, patient_id=third_patient, display_name="Third", phone="+79990004003")
        enrol_device(
            session, device_id=third_device, patient_id=third_patient, valid_from=T0 - timedelta(days=30)
        )
    queue: list[InboundMessage] = []
    pipeline.watch_queue(lambda start: (start, queue[start:]))
    ticks = iter(range(1_000_000))
    monkeypatch.setattr(pipeline, "_monotonic", lambda: float(next(ticks)))  # every look is due
    alerted_when_decided: dict[str, int] = {}
    evaluate_series = engine_module.evaluate_series

    def noting(thresholds: Any, patient: str, series: Any, views: Any, *args: Any, **kwargs: Any) -> Any:
        for view in views:
            alerted_when_decided[view.msg_id] = len(_alerts_of(db, OTHER_PATIENT))
        if patient == third_patient:  # it arrives now
            queue.append(_message("other-severe", 1, 205, 125, OTHER_DEVICE))
        return evaluate_series(thresholds, patient, series, views, *args, **kwargs)

    monkeypatch.setattr(engine_module, "evaluate_series", noting)
    pipeline.process([_message("third-0", 0, 120, 80, third_device), _message("own-0", 0, 121, 79)])
    assert alerted_when_decided == {"third-0": 0, "other-severe": 0, "own-0": 1}


def test_a_critical_reading_decided_from_the_queue_sees_its_device_s_readings_queued_before_it(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    # A monitor empties its memory: a severe reading 10 minutes before the critical one, too old to be
    # critical itself (late), confirms it. Decided alone, the critical one would stay "pending".
    pipeline, flaky, db = deployment
    queue = [
        _message("other-late-severe", -35, 204, 124, OTHER_DEVICE),
        _message("own-queued", -30, 120, 80),  # another patient's reading in between: not taken
        _message("other-severe", -25, 205, 125, OTHER_DEVICE),
    ]
    pipeline.watch_queue(lambda start: (start, queue[start:]))
    flaky.release.clear()
    worker = threading.Thread(target=pipeline.process, args=([_message("own-0", 0, 121, 79)],))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not _alerts_of(db, OTHER_PATIENT) and time.monotonic() < deadline:
            threading.Event().wait(0.02)
        alerts = _alerts_of(db, OTHER_PATIENT)
        assert [(a.rule, a.confirmation) for a in alerts if not a.late] == [("severe_bp", "confirmed")]
    finally:
        flaky.release.set()
        worker.join(30)


def test_messages_parsed_on_arrival_are_not_parsed_again_and_come_out_the_same(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline, _, db = deployment
    raw = [
        _message("triaged-0", 0, 121, 79),
        InboundMessage(f"rpm/devices/{DEVICE}/readings", b'{"v": 1, "msg_id": "broken', 9, 1, 1, T0),
        _message("triaged-severe", 1, 205, 125, OTHER_DEVICE),
    ]
    triaged = pipeline.triage(raw)
    assert [m.mid for m in triaged] == [m.mid for m in raw] and all(m.parsed is not None for m in triaged)

    def no_second_parse(*args: object, **kwargs: object) -> object:
        raise AssertionError("a message parsed on arrival was parsed again")

    monkeypatch.setattr(ingest_module, "parse", no_second_parse)
    result = pipeline.process(triaged)
    assert sorted(_ids(result.stored)) == ["triaged-0", "triaged-severe"]
    assert [(q.reason, q.payload) for q in result.quarantined] == [("not_json", raw[1].payload)]
    [alert] = _alerts_of(db, OTHER_PATIENT)
    assert alert.rule == "severe_bp"


def test_the_queue_is_looked_at_from_where_the_last_batch_left_it(
    deployment: tuple[IngestPipeline, FlakyStore, MigratedDb],
) -> None:
    # In a backlog the queue holds thousands: looking at all of it again for every batch cost the drain
    # a tenth of its time (profiled). Each message is looked at once.
    pipeline, _, _ = deployment
    queue = [_message("other-0", 0, 120, 80, OTHER_DEVICE), _message("other-1", 1, 121, 80, OTHER_DEVICE)]
    starts: list[int] = []

    def queued(start: int) -> tuple[int, list[InboundMessage]]:
        starts.append(start)
        return start, queue[start:]

    pipeline.watch_queue(queued)
    pipeline.process([_message("own-0", 0, 121, 79)])
    assert starts[0] == 0 and set(starts[1:]) <= {2}
    starts.clear()
    pipeline.process([_message("own-1", 1, 122, 79)])
    assert starts and set(starts) == {2}
