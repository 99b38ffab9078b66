"""Quarantine: all-or-nothing batches, raw payloads kept byte for byte, listing and counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from gateway.quarantine import (
    Quarantine,
    QuarantineEntry,
    QuarantineRejected,
    QuarantineUnavailable,
)
from rpmgw.db import make_engine, session_factory
from rpmgw.models import QuarantinedMessage
from tests.fixtures.db import MigratedDb

T0 = datetime(2026, 11, 28, 3, 15, tzinfo=UTC)

PAYLOADS = [
    b"",
    b"\x00",
    b"\xff\xfe\xfd\x80\x00garbage\x00",
    bytes(range(256)),
    '{"v":1,"device_id":"bp-1","note":"давление"}'.encode(),
    b"x" * 5000,
]


def _entry(
    payload: bytes = b"{}",
    *,
    reason: str = "schema",
    device_id: str | None = "bp-1",
    received_at: datetime = T0,
    topic: str = "rpm/devices/bp-1/readings",
    detail: str = "missing field",
) -> QuarantineEntry:
    return QuarantineEntry(
        topic=topic,
        payload=payload,
        reason=reason,
        detail=detail,
        device_id=device_id,
        received_at=received_at,
    )


def test_payloads_are_kept_byte_for_byte(migrated_db: MigratedDb) -> None:
    quarantine = Quarantine(migrated_db.sessions)
    entries = [
        _entry(payload, reason="not_utf8", received_at=T0 + timedelta(seconds=i))
        for i, payload in enumerate(PAYLOADS)
    ]
    quarantine.add_many(entries)
    listed = quarantine.list()
    # Newest first.
    assert [record.payload for record in listed] == list(reversed(PAYLOADS))
    assert all(type(record.payload) is bytes for record in listed)


def test_every_field_is_stored_and_times_come_back_aware_utc(migrated_db: MigratedDb) -> None:
    quarantine = Quarantine(migrated_db.sessions)
    received = datetime(2026, 11, 28, 8, 15, 2, 500000, tzinfo=timezone(timedelta(hours=5)))
    quarantine.add_many(
        [
            _entry(
                b"\xc3\x28",
                reason="not_utf8",
                device_id=None,
                topic="rpm/devices/??/readings",
                detail="payload is not UTF-8: invalid continuation byte at byte 0",
                received_at=received,
            )
        ]
    )
    (record,) = quarantine.list()
    assert record.id > 0
    assert (record.topic, record.reason, record.device_id) == ("rpm/devices/??/readings", "not_utf8", None)
    assert record.detail == "payload is not UTF-8: invalid continuation byte at byte 0"
    assert record.payload == b"\xc3\x28"
    assert record.received_at == received
    assert record.received_at.tzinfo == UTC


def test_list_filters_by_reason_and_device_and_limits(migrated_db: MigratedDb) -> None:
    quarantine = Quarantine(migrated_db.sessions)
    entries = [
        _entry(reason=reason, device_id=device, received_at=T0 + timedelta(minutes=i))
        for i, (reason, device) in enumerate(
            [
                ("schema", "bp-1"),
                ("schema", "bp-2"),
                ("unenrolled", "bp-2"),
                ("future", "bp-1"),
                ("schema", "bp-1"),
                ("bad_topic", None),
            ]
        )
    ]
    quarantine.add_many(entries)

    assert [r.received_at for r in quarantine.list(reason="schema")] == [
        T0 + timedelta(minutes=4),
        T0 + timedelta(minutes=1),
        T0,
    ]
    assert [r.reason for r in quarantine.list(device_id="bp-2")] == ["unenrolled", "schema"]
    assert [r.received_at for r in quarantine.list(reason="schema", device_id="bp-1")] == [
        T0 + timedelta(minutes=4),
        T0,
    ]
    assert [r.reason for r in quarantine.list(limit=2)] == ["bad_topic", "schema"]
    assert quarantine.list(reason="too_large") == []
    with pytest.raises(ValueError, match="limit"):
        quarantine.list(limit=0)


def test_counts_by_reason(migrated_db: MigratedDb) -> None:
    quarantine = Quarantine(migrated_db.sessions)
    assert quarantine.counts_by_reason() == {}
    quarantine.add_many([_entry(reason="schema")] * 3 + [_entry(reason="unenrolled")])
    quarantine.add_many([_entry(reason="not_json", device_id=None)])
    assert quarantine.counts_by_reason() == {"schema": 3, "unenrolled": 1, "not_json": 1}


def test_add_many_of_nothing_does_nothing(migrated_db: MigratedDb) -> None:
    quarantine = Quarantine(migrated_db.sessions)
    quarantine.add_many([])
    assert quarantine.counts_by_reason() == {}


def test_a_batch_is_stored_whole_or_not_at_all(migrated_db: MigratedDb) -> None:
    quarantine = Quarantine(migrated_db.sessions)
    # The schema allows NULL nowhere but device_id: one bad row must fail the whole batch.
    bad = _entry(reason="schema")
    object.__setattr__(bad, "topic", None)
    with pytest.raises(QuarantineRejected, match="refused"):
        quarantine.add_many([_entry(reason="schema"), bad, _entry(reason="schema")])
    with migrated_db.sessions() as session:
        assert session.scalars(select(QuarantinedMessage)).all() == []


def test_an_unmigrated_database_is_unavailable_not_rejected(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        quarantine = Quarantine(session_factory(engine))
        # Retryable: once `rpmgw db upgrade` has run, the same entries are stored.
        with pytest.raises(QuarantineUnavailable, match="cannot store quarantined messages"):
            quarantine.add_many([_entry()])
    finally:
        engine.dispose()


def test_an_unreachable_database_raises_quarantine_unavailable() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:1/rpm")
    try:
        quarantine = Quarantine(session_factory(engine))
        with pytest.raises(QuarantineUnavailable, match="cannot store quarantined messages"):
            quarantine.add_many([_entry()])
        with pytest.raises(QuarantineUnavailable, match="cannot read quarantined messages"):
            quarantine.counts_by_reason()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reason": ""}, "short code"),
        ({"reason": "Not A Code"}, "short code"),
        ({"reason": "x" * 33}, "short code"),
        ({"device_id": "d" * 65}, "device_id"),
        ({"device_id": ""}, "device_id"),
        ({"received_at": datetime(2026, 11, 28, 3, 15)}, "no time zone"),
    ],
)
def test_malformed_entries_are_refused_when_made(changes: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "topic": "rpm/devices/bp-1/readings",
        "payload": b"{}",
        "reason": "schema",
        "detail": "x",
        "device_id": "bp-1",
        "received_at": T0,
    } | changes
    with pytest.raises(ValueError, match=message):
        QuarantineEntry(**fields)  # type: ignore[arg-type]
