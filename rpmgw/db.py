"""Engines, sessions and migrations of the relational database (SQLite by default, or PostgreSQL).

    engine = make_engine(settings.database_url)
    check_current(engine)                  # refuses to run on a schema older than the code
    sessions = session_factory(engine)
    with sessions.begin() as session: ...

`upgrade(url)` runs the Alembic migrations shipped inside the package to head.

On SQLite every transaction takes the database's write lock when it begins (BEGIN IMMEDIATE), so that
read-then-write operations of several processes serialise instead of failing: keep sessions short.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from rpmgw.errors import RpmgwError

# Alembic announces its plugins at INFO when first imported: no news for an operator.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402

PACKAGE_DIR: Final = Path(__file__).resolve().parent
ALEMBIC_INI: Final = PACKAGE_DIR / "alembic.ini"
# The gateway's pooled PostgreSQL connections unused this long are pinged before reuse (_ping_when_idle).
IDLE_PING_SECONDS: Final = 5.0
MIGRATIONS_DIR: Final = PACKAGE_DIR / "migrations"
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
NOT_MIGRATED: Final = "database is not migrated: run `rpmgw db upgrade`"


class DatabaseError(RpmgwError):
    """Base of the relational database's errors."""


class DatabaseConfigError(DatabaseError):
    """The database URL is malformed or names an unsupported database."""


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached or refused the connection: retry later."""


class DatabaseNotMigrated(DatabaseError):
    """The schema is older (or newer) than this version of rpmgw expects."""


def safe_url(url: str | URL) -> str:
    """The URL as text with any password masked, for messages and logs."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<malformed database URL>"
    return parsed.render_as_string(hide_password=True)


def normalize_url(url: str) -> URL:
    """Parse a database URL; plain ``postgresql://`` (and ``postgres://``) use psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseConfigError(f"invalid database URL {url!r}: {exc}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseConfigError(
            f"unsupported database {safe_url(parsed)}: use sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    return parsed


def make_engine(url: str, *, sqlite_foreign_keys: bool = True, idle_ping_seconds: float = 0.0) -> Engine:
    """An engine for `url`; SQLite gets its directory created, WAL, foreign keys and a busy timeout;
    PostgreSQL's pooled connections are pinged before reuse once idle `idle_ping_seconds` (`_ping_when_idle`).

    The default, 0, pings at every reuse: a web request never meets a connection that a PostgreSQL
    restart left dead. The gateway passes `IDLE_PING_SECONDS`: it retries a failed batch anyway, and
    a ping before each of its transactions was a tenth of a small batch's time.
    `sqlite_foreign_keys=False` is for migrations only (SQLite rebuilds tables to alter them).
    """
    parsed = normalize_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "postgresql":
        options["connect_args"] = {"connect_timeout": 10}
    else:
        _create_sqlite_dir(parsed)
    try:
        engine = create_engine(parsed, **options)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise DatabaseConfigError(f"cannot use database {safe_url(parsed)}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, foreign_keys=sqlite_foreign_keys)
    else:
        _ping_when_idle(engine, idle_ping_seconds)
    return engine


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection before use when it has sat in the pool `idle_seconds` or longer.

    A long-running process must survive a PostgreSQL restart or a network cut without handing out a
    dead pooled connection. SQLAlchemy's `pool_pre_ping` pings at every checkout: a round trip before
    every transaction, two per gateway batch (profiled: a tenth of a small batch's time). With a
    threshold, a connection in steady use has just shown it is alive; one that sat in the pool is
    pinged, and if the ping fails the pool replaces it (DisconnectionError). A connection that dies
    between two quick uses fails its transaction instead, which the gateway retries (SQLAlchemy then
    also drops the pool's other connections, which died with it).
    """
    dbapi_error = engine.dialect.loaded_dbapi.Error

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < idle_seconds:
            return  # new, or in steady use
        try:
            engine.dialect.do_ping(dbapi_connection)
        except dbapi_error as exc:
            raise DisconnectionError(f"pooled connection is gone: {str(exc)[:200]}") from exc


def _create_sqlite_dir(url: URL) -> None:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine, *, foreign_keys: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
        # pysqlite's own transaction handling starts transactions late; we emit BEGIN ourselves below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front (waiting up to busy_timeout): a deferred transaction
        # that read first fails at once with "database is locked" when another process wrote meanwhile.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to `engine`; objects stay readable after commit (no expire on commit)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str | None = None) -> Config:
    """The Alembic configuration of the migrations shipped in the package (independent of the cwd)."""
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # Passed as an attribute, not an ini option: a '%' in a password would break ini interpolation.
        config.attributes["database_url"] = url
    return config


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    # Alembic logs at INFO on every look at the schema; only the migrations themselves are news.
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def head_revision() -> str:
    """The newest migration revision shipped with this version of rpmgw."""
    with _quiet("alembic"):
        heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise DatabaseError(f"the migrations have {len(heads)} heads ({', '.join(heads)}); expected one")
    return heads[0]


def upgrade(url: str, revision: str = "head") -> None:
    """Run the migrations on the database at `url` up to `revision` (head by default)."""
    engine = make_engine(url, sqlite_foreign_keys=False)
    config = alembic_config(url)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except OperationalError as exc:
        raise DatabaseUnavailable(f"cannot migrate the database at {safe_url(url)}: {_reason(exc)}") from exc
    finally:
        engine.dispose()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    try:
        with _quiet("alembic"), engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
    except OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot reach the database at {safe_url(engine.url)}: {_reason(exc)}"
        ) from exc
    return heads[0] if heads else None


def check_current(engine: Engine) -> None:
    """Raise `DatabaseNotMigrated` unless the database is at the head revision of this rpmgw."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise DatabaseNotMigrated(f"{NOT_MIGRATED} (database at {safe_url(engine.url)} has no schema)")
    with _quiet("alembic"):
        known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    if current not in known:
        raise DatabaseNotMigrated(
            f"database at {safe_url(engine.url)} is at revision {current}, unknown to this rpmgw "
            f"(newest known: {head}): upgrade rpmgw"
        )
    raise DatabaseNotMigrated(f"{NOT_MIGRATED} (database is at revision {current}, this rpmgw needs {head})")


def _reason(exc: OperationalError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)


@contextmanager
def migrated_sessions(url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a database that must be migrated already (else `DatabaseNotMigrated`); the engine
    is disposed on leaving (for short-lived commands)."""
    engine = make_engine(url)
    try:
        check_current(engine)
        yield session_factory(engine)
    finally:
        engine.dispose()
