"""Two gateway processes applying one patient's breach at the same moment end with one alert (PostgreSQL).

Each thread has its own engine (as separate processes would). The thread that inserts first does not
commit until the other is seen blocked on it in pg_stat_activity, so the two really race on the
partial unique index.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text

from alerts.lifecycle import ApplyResult, apply
from alerts.model import Decision
from rpmgw.db import make_engine, session_factory, upgrade
from tests.integration.alerts_support import (
    PATIENT,
    SETTINGS,
    T0,
    alerts_of,
    events_of,
    setup_clinic,
    severe,
    texts,
)

pytestmark = pytest.mark.postgres
DEADLINE = 20.0


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def _someone_blocked(observer: Engine) -> bool:
    with observer.connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


@pytest.mark.parametrize(
    ("first", "second"), [("m1", "m1"), ("m1", "m2")], ids=["same-reading", "two-readings"]
)
def test_concurrent_breaches_of_one_patient_end_with_one_alert(
    postgres_url: str, first: str, second: str
) -> None:
    upgrade(postgres_url)
    observer = make_engine(postgres_url)
    setup_clinic(session_factory(observer))
    decisions = {first: severe(first, T0), second: severe(second, T0)}
    barrier = threading.Barrier(2, timeout=DEADLINE)
    results: dict[str, ApplyResult] = {}
    errors: list[BaseException] = []

    def gateway(name: str, decision: Decision) -> None:
        engine = make_engine(postgres_url)
        try:
            with session_factory(engine)() as session, session.begin():
                barrier.wait()
                results[name] = apply(session, [decision], threshold_versions={}, now=T0, settings=SETTINGS)
                if len(results) == 1:  # we got there first: hold our insert until the other waits on it
                    _wait_until(lambda: _someone_blocked(observer), "the other gateway waits on our alert")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [
        threading.Thread(target=gateway, args=("a", decisions[first])),
        threading.Thread(target=gateway, args=("b", decisions[second])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE * 2)
    try:
        assert not errors, errors
        assert sorted(len(r.opened) for r in results.values()) == [0, 1]
        sessions = session_factory(observer)
        [alert] = alerts_of(sessions, PATIENT)
        expected_count = 1 if first == second else 2
        assert alert.reading_count == expected_count
        reading_events = [e for e in events_of(sessions, alert.id) if e[0] in ("raised", "reading_attached")]
        assert len(reading_events) == expected_count
        # One advice text and one page, whoever won.
        assert [t[1] for t in texts(sessions)] == ["severe_bp_advice", "staff_alert"]
    finally:
        observer.dispose()
