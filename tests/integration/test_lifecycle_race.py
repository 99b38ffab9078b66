"""Two gateway processes applying one patient's breach at the same moment end with one alert (PostgreSQL).

Each thread has its own engine (as separate processes would). The thread that inserts first does not
commit until the other is seen blocked on it in pg_stat_activity, so the two really race on the
partial unique index.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

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


@contextmanager
def _locked_elsewhere(postgres_url: str, alert_id: int) -> Iterator[None]:
    """Hold a FOR UPDATE lock on one alert in another connection (as the worker's time rules do through
    their whole run) while the body runs."""
    ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        engine = make_engine(postgres_url)
        try:
            with engine.begin() as connection:
                connection.execute(text("SELECT id FROM alerts WHERE id = :id FOR UPDATE"), {"id": alert_id})
                ready.set()
                release.wait(DEADLINE)
        finally:
            engine.dispose()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert ready.wait(DEADLINE), "the other connection never got its lock"
        yield
    finally:
        release.set()
        holder.join(DEADLINE)


def _apply_without_waiting(postgres_url: str, *decisions: Decision) -> ApplyResult:
    """Apply in a transaction that gives up on any row lock after 2 s, instead of waiting for it."""
    engine = make_engine(postgres_url)
    try:
        with session_factory(engine)() as session, session.begin():
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            return apply(session, decisions, threshold_versions={}, now=T0, settings=SETTINGS)
    finally:
        engine.dispose()


def test_a_batch_does_not_wait_for_locks_on_alerts_its_readings_cannot_change(postgres_url: str) -> None:
    # The time rules lock the open no-data alerts for their whole run; a batch of BP readings (which
    # never decide a no-data alert) went through every open alert of its patients, locked, and so
    # waited for that run. A plain CLEAR does nothing to a cleared alert either, so it must not wait on it.
    from alerts.tables import Alert
    from alerts.thresholds import Thresholds
    from alerts.timerules import run_time_rules
    from rpmgw import admin
    from tests.integration.alerts_support import normal

    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sessions = session_factory(engine)
    try:
        setup_clinic(sessions)
        with sessions.begin() as session:
            admin.enrol_device(
                session, device_id="bp-000001", patient_id=PATIENT, valid_from=T0, kind="blood_pressure"
            )
        with sessions.begin() as session:
            run_time_rules(
                session,
                now=T0 + timedelta(days=7),
                clinic=Thresholds(),
                settings=SETTINGS,
                thresholds_for=lambda _: (Thresholds(), "clinic"),
            )
        [no_data] = [a for a in alerts_of(sessions, PATIENT) if a.family == "no_data"]
        # A severe reading opens bp_high while the no-data alert beside it is locked.
        with _locked_elsewhere(postgres_url, no_data.id):
            result = _apply_without_waiting(postgres_url, severe("m1", T0))
        assert len(result.opened) == 1
        # bp_high is now open; cleared by a normal reading, then a second normal reading arrives while
        # somebody (a doctor acknowledging) holds the cleared alert: the CLEAR has nothing to do there.
        run_result = _apply_without_waiting(postgres_url, normal("m2", T0 + timedelta(minutes=1)))
        [bp_high] = [a for a in alerts_of(sessions, PATIENT) if a.family == "bp_high"]
        assert run_result.cleared == (bp_high.id,)
        with _locked_elsewhere(postgres_url, bp_high.id):
            result = _apply_without_waiting(postgres_url, normal("m3", T0 + timedelta(minutes=2)))
        assert result.cleared == () and result.attached == ()
        with sessions() as session:
            still = session.get(Alert, bp_high.id)
            assert still is not None and still.cleared_at is not None and still.closed_at is None
    finally:
        engine.dispose()
