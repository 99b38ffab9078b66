"""PostgreSQL pooled connections: pinged before reuse (the gateway's only once idle), replaced when dead.

The connection goes through a TCP proxy that can cut it, as a PostgreSQL restart or a network cut would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, make_url, text
from sqlalchemy.exc import OperationalError

from rpmgw.db import make_engine
from tests.faults.tcpproxy import CuttableProxy

pytestmark = pytest.mark.postgres


@pytest.fixture
def proxied(postgres_url: str) -> Iterator[tuple[str, CuttableProxy]]:
    url = make_url(postgres_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False), proxy
    finally:
        proxy.close()


def _select_one(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT 1")).scalar_one())


def test_an_idle_pooled_connection_that_died_is_replaced_before_use(
    proxied: tuple[str, CuttableProxy],
) -> None:
    url, proxy = proxied
    engine = make_engine(url)  # the default (the web app's): pinged at every reuse
    try:
        assert _select_one(engine) == 1  # one connection, now back in the pool
        proxy.cut()  # the pooled connection dies, as in a restart
        proxy.restore()
        assert _select_one(engine) == 1  # the ping found it dead; the pool connected again
    finally:
        engine.dispose()


def test_a_connection_in_steady_use_is_not_pinged_so_a_cut_fails_one_use_and_the_next_reconnects(
    proxied: tuple[str, CuttableProxy],
) -> None:
    url, proxy = proxied
    engine = make_engine(url, idle_ping_seconds=3600)  # as the gateway's, in steady use
    try:
        assert _select_one(engine) == 1
        proxy.cut()
        proxy.restore()
        with pytest.raises(OperationalError):  # no ping: the dead connection is used, and fails
            _select_one(engine)
        assert _select_one(engine) == 1  # SQLAlchemy dropped the dead pool; the retry connects
    finally:
        engine.dispose()
