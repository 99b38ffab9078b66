"""The SMS outbox on SQLite and PostgreSQL: idempotent enqueue (also concurrently), listing, opt-outs,
provider status callbacks, and the migration matching the models."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Table, func, inspect, select, update
from sqlalchemy.exc import IntegrityError

from alerts.notify.errors import TemplateError
from alerts.notify.outbox import (
    enqueue,
    is_opted_out,
    list_outbox,
    opt_in,
    opt_out,
    record_provider_status,
)
from alerts.notify.tables import OutboxMessage, OutboxStatus, SmsOptOut
from rpmgw.db import make_engine, session_factory
from rpmgw.models import Base, Patient
from tests.fixtures.db import MigratedDb

NOW = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
PHONE = "+79991234567"


def _patient(db: MigratedDb, patient_id: str = "P-1", phone: str = PHONE) -> None:
    with db.sessions.begin() as session:
        session.add(Patient(id=patient_id, display_name="Иванова Мария", phone=phone, language="ru"))


def _enqueue(session: Any, key: str = "alert:1:patient:advice", **overrides: Any) -> bool:
    values: dict[str, Any] = {
        "key": key,
        "recipient_kind": "patient",
        "phone": PHONE,
        "template": "severe_bp_advice",
        "language": "ru",
        "params": {"systolic": 184, "diastolic": 112},
        "critical": True,
        "purpose": "advice",
        "patient_id": "P-1",
        "now": NOW,
    } | overrides
    return enqueue(session, **values)


def _rows(db: MigratedDb) -> list[OutboxMessage]:
    with db.sessions() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def test_enqueue_renders_the_body_and_adds_a_pending_row(migrated_db: MigratedDb) -> None:
    _patient(migrated_db)
    with migrated_db.sessions.begin() as session:
        assert _enqueue(session) is True
    [row] = _rows(migrated_db)
    assert row.idempotency_key == "alert:1:patient:advice"
    assert row.body.startswith("Давление 184/112 очень высокое.")
    assert (row.status, row.attempts, row.critical, row.purpose) == ("pending", 0, True, "advice")
    assert row.next_attempt_at == NOW and row.created_at == NOW
    assert (row.recipient_kind, row.patient_id, row.phone, row.template, row.language) == (
        "patient",
        "P-1",
        PHONE,
        "severe_bp_advice",
        "ru",
    )
    assert row.provider_id is None and row.sent_at is None


def test_enqueue_twice_keeps_one_row_and_the_transaction_usable(migrated_db: MigratedDb) -> None:
    _patient(migrated_db)
    with migrated_db.sessions.begin() as session:
        assert _enqueue(session) is True
    with migrated_db.sessions.begin() as session:
        # A different body under the same key changes nothing: the first text stands.
        assert _enqueue(session, params={"systolic": 200, "diastolic": 130}) is False
        # The duplicate did not abort the transaction (PostgreSQL would, without ON CONFLICT).
        assert _enqueue(session, key="alert:1:patient:seen", template="seen_by_doctor", params={}) is True
    rows = _rows(migrated_db)
    assert [r.idempotency_key for r in rows] == ["alert:1:patient:advice", "alert:1:patient:seen"]
    assert "184/112" in rows[0].body


def test_enqueue_in_a_rolled_back_transaction_leaves_nothing(migrated_db: MigratedDb) -> None:
    _patient(migrated_db)
    with migrated_db.sessions() as session:
        assert _enqueue(session) is True
        session.rollback()
    assert _rows(migrated_db) == []


def test_concurrent_enqueues_of_the_same_key_from_two_engines_make_one_row(migrated_db: MigratedDb) -> None:
    _patient(migrated_db)
    keys = [f"alert:{n}:patient:advice" for n in range(20)]
    engines = [make_engine(migrated_db.url) for _ in range(2)]
    results: list[list[bool]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2, timeout=30)

    def worker(index: int) -> None:
        sessions = session_factory(engines[index])
        try:
            for key in keys:
                barrier.wait()
                with sessions.begin() as session:
                    results[index].append(_enqueue(session, key=key))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for engine in engines:
            engine.dispose()
    assert errors == []
    assert [a + b for a, b in zip(results[0], results[1], strict=True)] == [1] * len(keys)
    with migrated_db.sessions() as session:
        counts = session.execute(
            select(OutboxMessage.idempotency_key, func.count()).group_by(OutboxMessage.idempotency_key)
        ).all()
    assert sorted(counts) == sorted((key, 1) for key in keys)


def test_a_bad_enqueue_raises_and_adds_nothing(migrated_db: MigratedDb) -> None:
    _patient(migrated_db)
    with migrated_db.sessions() as session:
        with pytest.raises(TemplateError, match="unknown SMS template"):
            _enqueue(session, template="nope")
        with pytest.raises(TemplateError, match=r"needs parameter\(s\) diastolic"):
            _enqueue(session, params={"systolic": 190})
        with pytest.raises(ValueError, match="a patient text needs patient_id"):
            _enqueue(session, patient_id=None)
        with pytest.raises(ValueError, match="'doctor' is not a valid RecipientKind"):
            _enqueue(session, recipient_kind="doctor")
    assert _rows(migrated_db) == []


def test_outbox_rows_refer_to_existing_patients_staff_and_alerts(migrated_db: MigratedDb) -> None:
    for reference in ({"patient_id": "P-nobody"}, {"staff_id": 999}, {"alert_id": 999}):
        with migrated_db.sessions() as session, pytest.raises(IntegrityError, match=r"(?i)foreign key"):
            _enqueue(session, **({"patient_id": "P-1", "recipient_kind": "staff"} | reference))
            session.flush()


def test_list_outbox_newest_first_with_filters(migrated_db: MigratedDb) -> None:
    _patient(migrated_db)
    _patient(migrated_db, "P-2", "+79990000002")
    with migrated_db.sessions.begin() as session:
        for minute, (key, patient) in enumerate([("a", "P-1"), ("b", "P-2"), ("c", "P-1")]):
            _enqueue(session, key=key, patient_id=patient, now=NOW + timedelta(minutes=minute))
        session.execute(
            update(OutboxMessage).where(OutboxMessage.idempotency_key == "b").values(status="failed")
        )
    with migrated_db.sessions() as session:
        assert [e.key for e in list_outbox(session)] == ["c", "b", "a"]
        assert [e.key for e in list_outbox(session, status="pending")] == ["c", "a"]
        assert [e.key for e in list_outbox(session, status=["failed", "sent"])] == ["b"]
        assert [e.key for e in list_outbox(session, patient_id="P-1", limit=1)] == ["c"]
        entry = list_outbox(session, patient_id="P-2")[0]
        with pytest.raises(ValueError, match="'nope' is not a valid OutboxStatus"):
            list_outbox(session, status="nope")
    as_json = entry.to_json()
    assert as_json["created_at"] == "2026-12-01T07:01:00+00:00"
    assert as_json["status"] == "failed" and as_json["body"].startswith("Давление")


def test_opt_out_and_back_in(migrated_db: MigratedDb) -> None:
    with migrated_db.sessions.begin() as session:
        assert opt_out(session, PHONE, source="reply", now=NOW) is True
        assert opt_out(session, PHONE, source="reply", now=NOW) is False
        assert is_opted_out(session, PHONE)
    with migrated_db.sessions() as session:
        stored = session.get(SmsOptOut, PHONE)
        assert stored is not None and (stored.source, stored.opted_out_at) == ("reply", NOW)
    with migrated_db.sessions.begin() as session:
        assert opt_in(session, PHONE) is True
        assert opt_in(session, PHONE) is False
        assert not is_opted_out(session, PHONE)


def _sent_row(db: MigratedDb, provider_id: str = "SM1", status: str = "sent") -> int:
    _patient(db)
    with db.sessions.begin() as session:
        _enqueue(session)
        row = session.scalars(select(OutboxMessage)).one()
        row.status = status
        row.provider_id = provider_id if status != "in_flight" else None
        row.provider_status = "queued"
        return row.id


@pytest.mark.parametrize(
    ("callbacks", "status", "provider_status", "error_code"),
    [
        ([("sent", None)], "sent", "sent", None),
        ([("sent", None), ("delivered", None)], "delivered", "delivered", None),
        ([("delivered", None), ("sent", None)], "delivered", "delivered", None),  # out of order
        ([("read", None)], "delivered", "read", None),
        ([("sent", None), ("undelivered", "30003")], "failed", "undelivered", "30003"),
        ([("failed", "30007"), ("sending", None)], "failed", "failed", "30007"),
    ],
)
def test_provider_status_callbacks(
    migrated_db: MigratedDb,
    callbacks: list[tuple[str, str | None]],
    status: str,
    provider_status: str,
    error_code: str | None,
) -> None:
    _sent_row(migrated_db)
    for callback_status, code in callbacks:
        with migrated_db.sessions.begin() as session:
            assert record_provider_status(
                session, provider_id="SM1", provider_status=callback_status, error_code=code
            )
    [row] = _rows(migrated_db)
    assert (row.status, row.provider_status, row.error_code) == (status, provider_status, error_code)
    if status == "failed":
        assert row.last_error is not None and provider_status in row.last_error


def test_a_callback_for_an_unknown_message_matches_nothing(migrated_db: MigratedDb) -> None:
    outbox_id = _sent_row(migrated_db)
    with migrated_db.sessions.begin() as session:
        assert not record_provider_status(session, provider_id="SM-other", provider_status="delivered")
        # The outbox id of a row that already has another provider id does not match either.
        assert not record_provider_status(
            session, provider_id="SM-other", provider_status="delivered", outbox_id=outbox_id
        )
    assert _rows(migrated_db)[0].status == "sent"


def test_a_callback_for_a_row_still_in_flight_only_notes_the_provider(migrated_db: MigratedDb) -> None:
    outbox_id = _sent_row(migrated_db, status="in_flight")
    with migrated_db.sessions.begin() as session:
        assert record_provider_status(
            session, provider_id="SM9", provider_status="delivered", outbox_id=outbox_id
        )
    [row] = _rows(migrated_db)
    assert (row.status, row.provider_id, row.provider_status) == (OutboxStatus.IN_FLIGHT, "SM9", "delivered")


def test_the_migration_matches_the_outbox_models(migrated_db: MigratedDb) -> None:
    tables = {"outbox", "sms_opt_outs"}
    assert tables <= set(inspect(migrated_db.engine).get_table_names())
    with migrated_db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)

    def table_of(diff: Any) -> str | None:
        # ("add_table", Table), ("remove_index", Index), ("add_column", schema, "t", Column),
        # [("modify_type", schema, "t", "c", ...)]: find the table's name wherever it is.
        item = diff[0] if isinstance(diff, list) else diff
        for part in item[1:]:
            table = part if isinstance(part, Table) else getattr(part, "table", None)
            if isinstance(table, Table):
                return table.name
        return item[2] if len(item) > 2 and isinstance(item[2], str) else None

    assert [d for d in diffs if table_of(d) in tables] == []
