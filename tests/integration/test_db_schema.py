"""Migrations, engines and the schema check, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

import alerts.notify.tables
import alerts.tables  # noqa: F401
import web.tables  # noqa: F401
from rpmgw.db import (
    DatabaseConfigError,
    DatabaseNotMigrated,
    DatabaseUnavailable,
    check_current,
    current_revision,
    head_revision,
    make_engine,
    normalize_url,
    session_factory,
    upgrade,
)
from rpmgw.models import Base, Device, Patient
from tests.fixtures.db import MigratedDb

# Every table of the models, and nothing else, comes from the migrations.
TABLES = set(Base.metadata.tables) | {"alembic_version"}
CORE_TABLES = {"patients", "devices", "enrolments", "quarantined_messages"}


def test_upgrade_creates_the_schema_and_check_current_passes(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with pytest.raises(DatabaseNotMigrated, match=r"database is not migrated: run `rpmgw db upgrade`"):
            check_current(engine)
        assert current_revision(engine) is None

        upgrade(db_url)

        assert set(inspect(engine).get_table_names()) == TABLES
        assert CORE_TABLES <= TABLES
        assert current_revision(engine) == head_revision()
        check_current(engine)
        upgrade(db_url)  # a second upgrade is a no-op
        check_current(engine)
    finally:
        engine.dispose()


def test_migrations_match_the_models(migrated_db: MigratedDb) -> None:
    with migrated_db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_open_enrolment_index_is_partial_and_unique(migrated_db: MigratedDb) -> None:
    indexes = {ix["name"]: ix for ix in inspect(migrated_db.engine).get_indexes("enrolments")}
    open_index = indexes["uq_enrolments_open_device"]
    assert open_index["unique"]
    assert open_index["column_names"] == ["device_id"]
    where = open_index.get("dialect_options", {})
    assert any("valid_to IS NULL" in str(value) for value in where.values()), where


def test_check_current_refuses_a_schema_behind_or_ahead(migrated_db: MigratedDb) -> None:
    with migrated_db.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
    with pytest.raises(DatabaseNotMigrated, match="unknown to this rpmgw"):
        check_current(migrated_db.engine)
    with migrated_db.engine.begin() as connection:
        connection.execute(text("DELETE FROM alembic_version"))
    with pytest.raises(DatabaseNotMigrated, match="run `rpmgw db upgrade`"):
        check_current(migrated_db.engine)


def test_upgrade_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'nested' / 'dir' / 'x.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        check_current(engine)
    finally:
        engine.dispose()


def test_timestamps_come_back_aware_utc(migrated_db: MigratedDb) -> None:
    yekaterinburg = timezone(timedelta(hours=5))
    created = datetime(2026, 11, 28, 8, 15, 2, 123456, tzinfo=yekaterinburg)
    with migrated_db.sessions.begin() as session:
        session.add(Device(id="bp-1", kind="blood_pressure", created_at=created))
    with migrated_db.sessions() as session:
        stored = session.scalars(select(Device.created_at)).one()
    assert stored == created
    assert stored.tzinfo == UTC
    assert stored.hour == 3


def test_timestamps_compare_in_time_order_across_offsets(migrated_db: MigratedDb) -> None:
    base = datetime(2026, 1, 1, 12, tzinfo=UTC)
    with migrated_db.sessions.begin() as session:
        session.add(Device(id="early", created_at=base))
        # Later instant, but written with an offset that makes its local clock reading smaller.
        session.add(
            Device(
                id="later", created_at=(base + timedelta(hours=1)).astimezone(timezone(-timedelta(hours=8)))
            )
        )
    with migrated_db.sessions() as session:
        later = session.scalars(
            select(Device.id).where(Device.created_at > base + timedelta(minutes=30))
        ).all()
    assert later == ["later"]


def test_naive_timestamps_are_refused(migrated_db: MigratedDb) -> None:
    with migrated_db.sessions() as session:
        session.add(Device(id="bp-naive", created_at=datetime(2026, 1, 1, 12)))
        with pytest.raises(StatementError, match="naive datetime"):
            session.flush()


def test_sqlite_engine_creates_the_directory_and_enables_wal_and_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "rpmgw.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
        assert path.parent.is_dir()
    finally:
        engine.dispose()


def test_foreign_keys_are_enforced(migrated_db: MigratedDb) -> None:
    with migrated_db.sessions() as session, pytest.raises(IntegrityError, match=r"(?i)foreign key"):
        session.execute(
            text(
                "INSERT INTO enrolments (device_id, patient_id, valid_from, created_at) "
                "VALUES ('nope', 'nobody', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )


def test_sessions_keep_objects_readable_after_commit(migrated_db: MigratedDb) -> None:
    with migrated_db.sessions.begin() as session:
        patient = Patient(id="P-1", display_name="A", phone="+79991234567")
        session.add(patient)
    assert patient.language == "ru"
    assert patient.timezone == "Asia/Yekaterinburg"
    assert patient.created_at.tzinfo == UTC


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://postgres@127.0.0.1:5432/rpm", "postgresql+psycopg"),
        ("postgres://postgres@127.0.0.1:5432/rpm", "postgresql+psycopg"),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/rpm", "postgresql+psycopg"),
        ("sqlite:////var/lib/rpmgw/rpmgw.sqlite3", "sqlite"),
    ],
)
def test_urls_are_normalised(url: str, driver: str) -> None:
    assert normalize_url(url).drivername == driver


@pytest.mark.parametrize("url", ["mysql://root@localhost/rpm", "not a url", ""])
def test_unsupported_or_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(DatabaseConfigError):
        make_engine(url)


def test_an_unreachable_database_is_reported_clearly() -> None:
    engine = make_engine("postgresql://postgres:secret@127.0.0.1:1/rpm")
    try:
        with pytest.raises(DatabaseUnavailable, match=r"cannot reach the database at .*\*\*\*") as info:
            check_current(engine)
        assert "secret" not in str(info.value)
    finally:
        engine.dispose()


def test_session_factory_binds_the_engine(migrated_db: MigratedDb) -> None:
    sessions = session_factory(migrated_db.engine)
    with sessions() as session:
        assert session.get_bind() is migrated_db.engine
