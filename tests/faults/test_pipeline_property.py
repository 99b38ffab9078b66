"""Pipeline-level property: every message of a batch ends as exactly one stored reading or exactly one
quarantine entry, whatever the bytes, and no exception escapes `IngestPipeline.process`.

Real enrolment registry and quarantine on a migrated SQLite database; the time-series store is an
honest in-memory fake keyed like InfluxDB's points (type, msg_id), so a repeated msg_id overwrites.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.ingest import IngestPipeline
from gateway.mqtt import InboundMessage
from gateway.quarantine import Quarantine
from gateway.ratelimit import DeviceRateLimiter
from gateway.registry import EnrolmentRegistry
from gateway.wire import WireLimits
from rpmgw.admin import add_patient, enrol_device
from rpmgw.db import make_engine, session_factory, upgrade
from rpmgw.models import QuarantinedMessage
from tests.fakes.memory_store import MemoryStore
from tests.unit.test_wire_fuzz import NOW, blood_pressure, glucose, mutated_payloads, topics, valid_messages

ENROLLED = ("bp-enrolled-1", "gl-enrolled-2")
REASONS = {
    "bad_topic",
    "too_large",
    "not_utf8",
    "not_json",
    "schema",
    "device_mismatch",
    "future",
    "unenrolled",
    "rate_limited",
}
PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    """A migrated SQLite database with two enrolled devices."""
    url = f"sqlite:///{tmp_path_factory.mktemp('pipeline-property') / 'rpmgw.sqlite3'}"
    upgrade(url)
    factory = session_factory(make_engine(url))
    with factory.begin() as session:
        for i, device in enumerate(ENROLLED):
            add_patient(session, patient_id=f"P-PROP-{i}", display_name="Prop", phone=f"+7999000300{i}")
            enrol_device(
                session,
                device_id=device,
                patient_id=f"P-PROP-{i}",
                valid_from=datetime(1990, 1, 1, tzinfo=UTC),
            )
    yield factory


def _encoded(message: tuple[str, dict[str, object]]) -> tuple[str, bytes]:
    return message[0], json.dumps(message[1]).encode()


enrolled_messages = st.one_of(
    blood_pressure(ENROLLED[0]).map(lambda doc: (f"rpm/devices/{ENROLLED[0]}/readings", doc)),
    glucose(ENROLLED[1]).map(lambda doc: (f"rpm/devices/{ENROLLED[1]}/readings", doc)),
).map(_encoded)
any_message = st.one_of(
    enrolled_messages,
    valid_messages().map(_encoded),
    mutated_payloads(),
    st.tuples(topics, st.binary(max_size=600)),
)


def _quarantine_rows(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(QuarantinedMessage)) or 0)


@PROPERTY
@given(messages=st.lists(any_message, min_size=1, max_size=25), burst=st.integers(1, 30))
def test_every_message_ends_stored_or_quarantined_exactly_once(
    sessions: sessionmaker[Session], messages: list[tuple[str, bytes]], burst: int
) -> None:
    store = MemoryStore()
    pipeline = IngestPipeline(
        store=store,
        registry=EnrolmentRegistry(sessions, cache_size=100, ttl=0),
        quarantine=Quarantine(sessions),
        limits=WireLimits(),
        clock=lambda: NOW,
        rate_limiter=DeviceRateLimiter(rate_per_second=1, burst=burst, max_devices=10, clock=lambda: 0.0),
    )
    batch = [
        InboundMessage(topic=topic, payload=payload, mid=i + 1, qos=1, generation=1, received_at=NOW)
        for i, (topic, payload) in enumerate(messages)
    ]
    rows_before = _quarantine_rows(sessions)

    result = pipeline.process(batch)

    assert len(result.stored) + len(result.quarantined) == len(batch), "each message: exactly one outcome"
    assert _quarantine_rows(sessions) - rows_before == len(result.quarantined), "every entry is a row"
    assert store.writes == len(result.stored), "every stored reading was written, once"
    assert {r.reason for r in result.quarantined} <= REASONS
    assert all(r.detail for r in result.quarantined), "every quarantine entry says why"
    sent = Counter((m.topic, m.payload) for m in batch)
    assert not Counter((q.topic, q.payload) for q in result.quarantined) - sent, "quarantined what was sent"
    assert all(s.patient_id.startswith("P-PROP-") for s in result.stored)


def test_a_retried_batch_is_judged_once_by_the_rate_limit(sessions: sessionmaker[Session]) -> None:
    """The gateway retries the same batch after a failure: the limiter must not charge it twice."""
    store = MemoryStore()
    limiter = DeviceRateLimiter(rate_per_second=1, burst=3, max_devices=10, clock=lambda: 0.0)
    pipeline = IngestPipeline(
        store=store,
        registry=EnrolmentRegistry(sessions, cache_size=100, ttl=0),
        quarantine=Quarantine(sessions),
        limits=WireLimits(),
        clock=lambda: NOW,
        rate_limiter=limiter,
    )
    payloads = [_bp(i) for i in range(5)]
    batch = [
        InboundMessage(f"rpm/devices/{ENROLLED[0]}/readings", p, i + 1, 1, 1, NOW)
        for i, p in enumerate(payloads)
    ]
    first = pipeline.process(batch)
    again = pipeline.process(batch)
    assert (len(first.stored), len(first.quarantined)) == (3, 2)
    assert (len(again.stored), len(again.quarantined)) == (3, 2)
    assert limiter.limited == 2


def _bp(i: int) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "msg_id": f"00000000-0000-4000-8000-{i:012d}",
            "device_id": ENROLLED[0],
            "type": "blood_pressure",
            "measured_at": "2026-11-28T03:00:00Z",
            "systolic": 130,
            "diastolic": 85,
            "pulse": 70,
        }
    ).encode()


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("rate", "burst", "requests", "elapsed", "allowed"),
    [
        (1.0, 3, 5, 0.0, 3),  # the burst, then nothing
        (10.0, 3, 5, 1.0, 3),  # refilled, but never above the burst
        (2.0, 1, 3, 0.5, 1),  # half a second at 2/s: one more token for the next call only
    ],
)
def test_token_bucket(rate: float, burst: int, requests: int, elapsed: float, allowed: int) -> None:
    clock = _Clock()
    limiter = DeviceRateLimiter(rate_per_second=rate, burst=burst, max_devices=10, clock=clock)
    clock.now = elapsed
    assert sum(limiter.allow("dev-1") for _ in range(requests)) == allowed
    assert limiter.allow("dev-2"), "another device is not starved by the first"


def test_devices_tracked_are_bounded() -> None:
    limiter = DeviceRateLimiter(rate_per_second=1, burst=1, max_devices=100, clock=lambda: 0.0)
    for i in range(10_000):
        limiter.allow(f"dev-{i}")
    assert len(limiter) == 100
