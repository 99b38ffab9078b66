"""Two gateways of one shared subscription, each with its own history cache, over one InfluxDB and one
database (SQLite and PostgreSQL): the rules' second look (`IngestPipeline.recheck`) decides what neither
gateway could see alone. Real InfluxDB, real database, the real rule engine and lifecycle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from alerts.engine import AlertEngine
from alerts.history import RecentReadings
from alerts.tables import Alert
from alerts.thresholds import Thresholds
from gateway import ingest
from gateway.errors import StorageUnavailable
from gateway.ingest import IngestPipeline
from gateway.mqtt import InboundMessage
from gateway.quarantine import Quarantine
from gateway.registry import EnrolmentRegistry
from gateway.timeseries.influx_v1 import InfluxV1Store
from gateway.wire import WireLimits
from rpmgw.admin import add_patient, enrol_device
from rpmgw.settings import AlertsSettings, InfluxSettings
from tests.fixtures.db import MigratedDb
from tests.helpers import bp_message

DEVICE, PATIENT = "bp-peer-1", "P-PEER-1"
OTHER_DEVICE, OTHER_PATIENT = "bp-peer-2", "P-PEER-2"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
RECHECK_AFTER = 30.0


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Gateway:
    pipeline: IngestPipeline
    stores: tuple[InfluxV1Store, InfluxV1Store]


@pytest.fixture
def two_gateways(
    migrated_db: MigratedDb, influx_store: InfluxV1Store, influx_settings: InfluxSettings
) -> Iterator[tuple[Gateway, Gateway, Ticks, MigratedDb]]:
    with migrated_db.sessions.begin() as session:
        add_patient(session, patient_id=PATIENT, display_name="Peer", phone="+79990005001")
        enrol_device(session, device_id=DEVICE, patient_id=PATIENT, valid_from=T0 - timedelta(days=30))
        add_patient(session, patient_id=OTHER_PATIENT, display_name="Other", phone="+79990005002")
        enrol_device(
            session, device_id=OTHER_DEVICE, patient_id=OTHER_PATIENT, valid_from=T0 - timedelta(days=30)
        )
    ticks = Ticks()
    gateways = []
    for _ in range(2):
        store, history_store = InfluxV1Store(influx_settings), InfluxV1Store(influx_settings)
        # As a member of a shared subscription: the history is trusted for 60 s.
        history = RecentReadings(history_store, days=8, max_patients=100, ttl=60.0, clock=ticks)
        pipeline = _pipeline(migrated_db, store, history, recheck_after=RECHECK_AFTER, monotonic=ticks)
        gateways.append(Gateway(pipeline, (store, history_store)))
    try:
        yield gateways[0], gateways[1], ticks, migrated_db
    finally:
        for gateway in gateways:
            gateway.pipeline.close()
            for store in gateway.stores:
                store.close()


def _pipeline(
    db: MigratedDb,
    store: InfluxV1Store,
    history: RecentReadings,
    *,
    recheck_after: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> IngestPipeline:
    """A gateway's pipeline with the real engine, half an hour after T0."""
    clock = lambda: T0 + timedelta(minutes=30)  # noqa: E731
    engine = AlertEngine(
        sessions=db.sessions, history=history, clinic=Thresholds(), settings=AlertsSettings(), clock=clock
    )
    return IngestPipeline(
        store=store,
        registry=EnrolmentRegistry(db.sessions, cache_size=10, ttl=0),
        quarantine=Quarantine(db.sessions),
        limits=WireLimits(),
        clock=clock,
        rules=engine,
        recheck_after=recheck_after,
        monotonic=monotonic,
    )


def _message(
    msg_id: str, minutes: int, systolic: int, diastolic: int, device: str = DEVICE
) -> InboundMessage:
    return bp_message(msg_id, device, T0 + timedelta(minutes=minutes), systolic, diastolic)


def _alerts(db: MigratedDb) -> list[tuple[str, bool]]:
    with db.sessions() as session:
        return [
            (a.rule, a.cleared_at is None)
            for a in session.scalars(select(Alert).where(Alert.patient_id == PATIENT).order_by(Alert.id))
        ]


def test_two_high_readings_taken_by_two_gateways_raise_high_bp_on_the_second_look(
    two_gateways: tuple[Gateway, Gateway, Ticks, MigratedDb],
) -> None:
    # A monitor empties its buffer: the broker hands its readings to the two gateways in turn.
    a, b, ticks, db = two_gateways
    b.pipeline.process([_message("normal-0", 0, 125, 80)])  # b now holds the patient's history
    a.pipeline.process([_message("high-1", 10, 170, 105)])  # a: one high reading of one
    b.pipeline.process([_message("high-2", 11, 168, 104)])  # b: its cached history lacks high-1
    # DOMAIN.md: >= 160/100 on 2 of the last 3 readings. Neither gateway saw two of them.
    assert _alerts(db) == []
    assert a.pipeline.recheck() == b.pipeline.recheck() == 0  # not due yet
    ticks.now += RECHECK_AFTER
    assert a.pipeline.recheck() == 1
    assert b.pipeline.recheck() == 1
    assert _alerts(db) == [("high_bp", True)]
    # Once decided again, nothing is due; a third look changes nothing.
    assert a.pipeline.recheck(force=True) == b.pipeline.recheck(force=True) == 0
    b.pipeline.process([_message("high-2", 11, 168, 104)])  # a redelivery
    b.pipeline.recheck(force=True)
    assert _alerts(db) == [("high_bp", True)]


def test_each_reading_s_second_look_waits_its_own_delay_whatever_was_noted_before_it(
    two_gateways: tuple[Gateway, Gateway, Ticks, MigratedDb],
) -> None:
    # b noted normal-0 a while ago; high-2 comes just before normal-0's second look is due. high-2's own
    # look must wait the full delay: a stores high-1 meanwhile (CI: two gateways took a monitor's four
    # readings a second after a first one, decided them again at once, and never raised the alert).
    a, b, ticks, db = two_gateways
    b.pipeline.process([_message("normal-0", 0, 125, 80)])
    ticks.now += RECHECK_AFTER - 1
    b.pipeline.process([_message("high-2", 11, 168, 104)])
    ticks.now += 1
    assert b.pipeline.recheck() == 0  # normal-0's turn has come, but high-2 replaced it: not yet
    a.pipeline.process([_message("high-1", 10, 170, 105)])
    assert _alerts(db) == []
    ticks.now += RECHECK_AFTER
    assert b.pipeline.recheck() == 1
    assert _alerts(db) == [("high_bp", True)]


def test_readings_noted_later_wait_while_earlier_ones_are_decided_again(
    two_gateways: tuple[Gateway, Gateway, Ticks, MigratedDb],
) -> None:
    a, _, ticks, _ = two_gateways
    a.pipeline.process([_message("own-1", 0, 125, 80)])
    ticks.now += RECHECK_AFTER - 1
    a.pipeline.process([_message("other-1", 2, 124, 79, OTHER_DEVICE)])
    ticks.now += 1
    assert a.pipeline.recheck() == 1  # own-1 only
    assert a.pipeline.recheck() == 0
    ticks.now += RECHECK_AFTER
    assert a.pipeline.recheck() == 1  # other-1, in its turn


def test_a_failed_second_look_is_tried_again_after_the_delay(
    two_gateways: tuple[Gateway, Gateway, Ticks, MigratedDb], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _, ticks, _ = two_gateways
    a.pipeline.process([_message("own-1", 0, 125, 80)])
    ticks.now += RECHECK_AFTER
    rules = a.pipeline._rules
    assert rules is not None
    stage = rules.stage

    def unreachable(batch: object) -> object:
        raise StorageUnavailable("injected: InfluxDB unreachable")

    monkeypatch.setattr(rules, "stage", unreachable)
    with pytest.raises(StorageUnavailable):
        a.pipeline.recheck()
    monkeypatch.setattr(rules, "stage", stage)
    assert a.pipeline.recheck() == 0  # not hammered while the store is down
    ticks.now += RECHECK_AFTER
    assert a.pipeline.recheck() == 1


def test_the_second_look_clears_what_a_partial_history_left_open(
    two_gateways: tuple[Gateway, Gateway, Ticks, MigratedDb],
) -> None:
    # b decides high-3 seeing high-1 and high-3 only (normal-2 went to a): 2 of 3, an alert. With
    # normal-2 in view the last three are high, normal, high: still 2 of 3, as one gateway decides.
    # Then normal-4 (a, history fresh) clears it, and nothing a second look does reopens it.
    a, b, ticks, db = two_gateways
    b.pipeline.process([_message("high-1", 0, 170, 105)])
    a.pipeline.process([_message("normal-2", 1, 120, 80)])
    b.pipeline.process([_message("high-3", 2, 171, 106)])
    ticks.now += 61  # a's cache is stale by now: it reloads and sees all of them
    a.pipeline.process([_message("normal-4", 3, 118, 78), _message("normal-5", 4, 119, 79)])
    assert _alerts(db) == [("high_bp", False)]
    ticks.now += RECHECK_AFTER
    a.pipeline.recheck()
    b.pipeline.recheck()
    assert _alerts(db) == [("high_bp", False)]


def test_many_noted_readings_are_due_at_once_and_decided_a_chunk_at_a_time(
    two_gateways: tuple[Gateway, Gateway, Ticks, MigratedDb], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _, _, _ = two_gateways
    monkeypatch.setattr(ingest, "RECHECK_MAX_NOTED", 2)
    monkeypatch.setattr(ingest, "RECHECK_CHUNK", 1)
    a.pipeline.process([_message("own-1", 0, 125, 80), _message("own-2", 1, 126, 81)])
    assert a.pipeline.recheck() == 0  # one patient and type noted (the newer reading): not due yet
    a.pipeline.process([_message("other-1", 2, 124, 79, OTHER_DEVICE)])
    assert [a.pipeline.recheck(), a.pipeline.recheck(), a.pipeline.recheck()] == [1, 1, 0]


def test_a_plain_subscriber_keeps_nothing_to_recheck(
    migrated_db: MigratedDb, influx_store: InfluxV1Store
) -> None:
    with migrated_db.sessions.begin() as session:
        add_patient(session, patient_id=PATIENT, display_name="Peer", phone="+79990005001")
        enrol_device(session, device_id=DEVICE, patient_id=PATIENT, valid_from=T0 - timedelta(days=30))
    pipeline = _pipeline(migrated_db, influx_store, RecentReadings(influx_store, days=8, max_patients=100))
    try:
        pipeline.process([_message("high-1", 0, 170, 105)])
        assert pipeline.recheck(force=True) == 0
    finally:
        pipeline.close()
