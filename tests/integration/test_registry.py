"""EnrolmentRegistry: resolution at measured_at, one query per batch, bounded cache with a TTL."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert

from gateway.registry import EnrolmentRegistry, RegistryUnavailable
from rpmgw import admin
from rpmgw.db import make_engine, session_factory
from rpmgw.models import Device, Enrolment, Patient
from tests.fixtures.db import MigratedDb

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


@dataclass
class FakeClock:
    """A monotonic clock the test moves by hand."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class SelectCounter:
    """Counts the SELECT statements sent to the database."""

    selects: int = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.selects += 1


@pytest.fixture
def selects(migrated_db: MigratedDb) -> Iterator[SelectCounter]:
    counter = SelectCounter()
    event.listen(migrated_db.engine, "before_cursor_execute", counter)
    yield counter
    event.remove(migrated_db.engine, "before_cursor_execute", counter)


def _patients(db: MigratedDb, *patient_ids: str) -> None:
    with db.sessions.begin() as session:
        for patient_id in patient_ids:
            admin.add_patient(session, patient_id=patient_id, display_name=patient_id, phone="+79991234567")


def _enrol(db: MigratedDb, device_id: str, patient_id: str, valid_from: datetime) -> None:
    with db.sessions.begin() as session:
        admin.enrol_device(session, device_id=device_id, patient_id=patient_id, valid_from=valid_from)


def _registry(
    db: MigratedDb, *, cache_size: int = 100, ttl: float = 30.0, clock: FakeClock | None = None
) -> EnrolmentRegistry:
    return EnrolmentRegistry(db.sessions, cache_size=cache_size, ttl=ttl, clock=clock or FakeClock())


def _bulk_enrol(engine: Engine, count: int) -> list[str]:
    """`count` devices, each enrolled to its own patient since T0 (inserted in bulk: fast)."""
    device_ids = [f"dev-{i:06d}" for i in range(count)]
    with engine.begin() as connection:
        connection.execute(
            insert(Patient),
            [{"id": f"P-{i:06d}", "display_name": "x", "phone": "+79991234567"} for i in range(count)],
        )
        connection.execute(insert(Device), [{"id": device_id} for device_id in device_ids])
        connection.execute(
            insert(Enrolment),
            [
                {"device_id": d, "patient_id": f"P-{i:06d}", "valid_from": T0}
                for i, d in enumerate(device_ids)
            ],
        )
    return device_ids


# Device bp-1: P-1 during [T0, T0+1d), P-2 during [T0+1d, T0+3d), returned, P-3 from T0+5d on.
RESOLUTION = [
    ("before the first enrolment", T0 - timedelta(microseconds=1), None),
    ("at the first start", T0, "P-1"),
    ("within the first", T0 + HOUR, "P-1"),
    ("a microsecond before the re-enrolment", T0 + DAY - timedelta(microseconds=1), "P-1"),
    ("at the re-enrolment", T0 + DAY, "P-2"),
    ("within the second", T0 + 2 * DAY, "P-2"),
    ("in the gap after the return", T0 + 4 * DAY, None),
    ("within the open one", T0 + 5 * DAY + HOUR, "P-3"),
    ("long after, still open", T0 + 400 * DAY, "P-3"),
    ("in another offset", (T0 + HOUR).astimezone(timezone(timedelta(hours=5))), "P-1"),
]


@pytest.fixture
def history(migrated_db: MigratedDb) -> MigratedDb:
    _patients(migrated_db, "P-1", "P-2", "P-3")
    _enrol(migrated_db, "bp-1", "P-1", T0)
    _enrol(migrated_db, "bp-1", "P-2", T0 + DAY)
    with migrated_db.sessions.begin() as session:
        admin.end_enrolment(session, device_id="bp-1", valid_to=T0 + 3 * DAY)
    _enrol(migrated_db, "bp-1", "P-3", T0 + 5 * DAY)
    return migrated_db


@pytest.mark.parametrize(("case", "measured_at", "expected"), RESOLUTION, ids=[c[0] for c in RESOLUTION])
def test_patient_for_uses_the_enrolment_valid_at_measured_at(
    history: MigratedDb, case: str, measured_at: datetime, expected: str | None
) -> None:
    assert _registry(history).patient_for("bp-1", measured_at) == expected


def test_a_batch_resolves_every_key_in_order(history: MigratedDb) -> None:
    keys = [("bp-1", at) for _, at, _ in RESOLUTION] + [("unknown-device", T0)]
    expected = [patient for _, _, patient in RESOLUTION] + [None]
    assert _registry(history).patients_for(keys) == expected


def test_an_unknown_device_resolves_to_none(migrated_db: MigratedDb) -> None:
    assert _registry(migrated_db).patient_for("never-seen", T0) is None


def test_a_batch_costs_one_query_and_a_cached_batch_none(
    migrated_db: MigratedDb, selects: SelectCounter
) -> None:
    device_ids = _bulk_enrol(migrated_db.engine, 300)
    registry = _registry(migrated_db, cache_size=1000)
    # 5,000 readings of 300 enrolled devices and 50 unknown ones, as one gateway batch.
    keys = [(device_ids[i % 300] if i % 7 else f"ghost-{i % 50}", T0 + i * HOUR) for i in range(5000)]
    selects.selects = 0

    patients = registry.patients_for(keys)

    assert selects.selects == 1
    assert patients[1] == "P-000001"
    assert patients[0] is None  # ghost-0
    assert sum(p is not None for p in patients) == sum(1 for i in range(5000) if i % 7)
    selects.selects = 0
    assert registry.patients_for(keys[:1000]) == patients[:1000]
    assert selects.selects == 0


def test_the_cache_never_exceeds_its_size_and_keeps_the_recently_used(
    migrated_db: MigratedDb, selects: SelectCounter
) -> None:
    device_ids = _bulk_enrol(migrated_db.engine, 60)
    registry = _registry(migrated_db, cache_size=10)
    for start in range(0, 60, 5):
        registry.patients_for([(d, T0 + HOUR) for d in device_ids[start : start + 5]])
        registry.patient_for(device_ids[0], T0 + HOUR)  # keep dev-000000 recently used
        assert len(registry) <= 10
    assert len(registry) == 10
    selects.selects = 0
    registry.patient_for(device_ids[0], T0 + HOUR)  # recently used: still cached
    assert selects.selects == 0
    registry.patient_for(device_ids[1], T0 + HOUR)  # least recently used: evicted long ago
    assert selects.selects == 1
    # A batch larger than the cache still resolves completely, in one query.
    selects.selects = 0
    assert registry.patients_for([(d, T0 + HOUR) for d in device_ids]) == [f"P-{i:06d}" for i in range(60)]
    assert selects.selects == 1
    assert len(registry) == 10


def test_the_cache_entry_expires_after_the_ttl(history: MigratedDb, selects: SelectCounter) -> None:
    clock = FakeClock()
    registry = _registry(history, ttl=30.0, clock=clock)
    later = T0 + 10 * DAY
    assert registry.patient_for("bp-1", later) == "P-3"
    _patients(history, "P-4")
    _enrol(history, "bp-1", "P-4", T0 + 9 * DAY)  # another process re-enrols: we cannot know yet

    clock.advance(29.9)
    selects.selects = 0
    assert registry.patient_for("bp-1", later) == "P-3"
    assert selects.selects == 0

    clock.advance(0.2)
    assert registry.patient_for("bp-1", later) == "P-4"
    assert selects.selects == 1


def test_a_device_without_enrolment_is_cached_only_briefly(
    migrated_db: MigratedDb, selects: SelectCounter
) -> None:
    clock = FakeClock()
    registry = _registry(migrated_db, ttl=30.0, clock=clock)
    assert registry.patient_for("bp-new", T0 + HOUR) is None
    _patients(migrated_db, "P-1")
    _enrol(migrated_db, "bp-new", "P-1", T0)

    clock.advance(1.0)
    selects.selects = 0
    assert registry.patient_for("bp-new", T0 + HOUR) is None  # still the brief negative entry
    assert selects.selects == 0
    clock.advance(1.1)
    assert registry.patient_for("bp-new", T0 + HOUR) == "P-1"


def test_a_returned_device_is_cached_only_briefly(history: MigratedDb) -> None:
    clock = FakeClock()
    registry = _registry(history, ttl=30.0, clock=clock)
    with history.sessions.begin() as session:
        admin.end_enrolment(session, device_id="bp-1", valid_to=T0 + 6 * DAY)
    later = T0 + 7 * DAY
    assert registry.patient_for("bp-1", later) is None
    assert registry.patient_for("bp-1", T0 + HOUR) == "P-1"  # its history is still cached
    _enrol(history, "bp-1", "P-1", T0 + 6 * DAY + HOUR)

    clock.advance(2.1)
    assert registry.patient_for("bp-1", later) == "P-1"


def test_invalidate_forgets_one_device_or_all(history: MigratedDb, selects: SelectCounter) -> None:
    registry = _registry(history)
    registry.patients_for([("bp-1", T0), ("other", T0)])
    assert len(registry) == 2
    registry.invalidate("bp-1")
    assert len(registry) == 1
    selects.selects = 0
    registry.patient_for("bp-1", T0)
    assert selects.selects == 1
    registry.invalidate()
    assert len(registry) == 0


@pytest.mark.parametrize(("cache_size", "ttl"), [(0, 30.0), (100, 0.0)])
def test_no_cache_means_a_query_per_call(
    history: MigratedDb, selects: SelectCounter, cache_size: int, ttl: float
) -> None:
    registry = _registry(history, cache_size=cache_size, ttl=ttl)
    selects.selects = 0
    for _ in range(3):
        assert registry.patient_for("bp-1", T0) == "P-1"
    assert selects.selects == 3
    assert len(registry) == 0


def test_naive_measured_at_is_refused(history: MigratedDb) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        _registry(history).patient_for("bp-1", datetime(2026, 11, 1, 10))


def test_an_unreachable_database_raises_registry_unavailable() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:1/rpm")
    try:
        registry = EnrolmentRegistry(session_factory(engine), cache_size=10, ttl=30.0)
        with pytest.raises(RegistryUnavailable, match="cannot read enrolments"):
            registry.patient_for("bp-1", T0)
    finally:
        engine.dispose()


def test_cache_memory_per_device_is_small(migrated_db: MigratedDb) -> None:
    count = 5000
    device_ids = _bulk_enrol(migrated_db.engine, count)
    registry = _registry(migrated_db, cache_size=count)
    keys = [(d, T0 + HOUR) for d in device_ids]
    registry.patients_for(keys[:10])  # warm up imports and statement caches outside the measurement
    registry.invalidate()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        registry.patients_for(keys)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert len(registry) == count
    retained = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_device = retained / count
    # About 400 bytes today: 100,000 devices then take some 40 MB.
    assert per_device < 800, f"{per_device:.0f} bytes per cached device"
