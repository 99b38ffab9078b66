"""Alert latency: a critical reading published under background load, timed to its alert row and its SMS.

A real gateway and a real worker run against the bench's broker, InfluxDB and database; the worker
sends through `SmsSink` (Twilio-compatible, local). Each probe is a fresh patient, so each critical
reading opens a new alert and queues a new text.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import Engine, bindparam, distinct, func, select
from sqlalchemy.orm import Session, sessionmaker

from alerts.model import RuleId
from alerts.tables import Alert, PatientActivity
from rpmgw.bench.errors import BenchError
from rpmgw.bench.harness import (
    READINGS_TOPIC,
    BenchEnv,
    RpmgwProcess,
    bp_payload,
    device_id,
    patient_id,
    proc_cpu_seconds,
    wait_for,
)
from rpmgw.bench.rawpub import RawPublisher
from rpmgw.bench.scenarios import SHARED_TOPIC
from rpmgw.bench.smssink import SmsSink
from rpmgw.db import make_engine, session_factory
from rpmgw.servers import free_port

Figures = dict[str, object]
# Batching bounds latency from below: the bench runs the gateway with this batch wait (default 0.2 s),
# a site that wants its alerts fast would do the same. At 5,000 readings/s the batches still hold about
# a hundred readings (they fill while the one before is processed); the gateways' CPU is reported.
BATCH_MAX_WAIT = "0.005"
# Texts are looked for every 50 ms; the time rules keep their default pace (every 5 s, over every patient:
# run every 50 ms too, they took 70 % of a core from the gateway).
DELIVERY_INTERVAL = "0.05"
PROBE_TIMEOUT = 15.0


def percentiles(values_ms: list[float]) -> dict[str, float | int]:
    """n, p50, p95, p99 (nearest rank) of millisecond values."""
    ordered = sorted(values_ms)
    if not ordered:
        return {"n": 0, "p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))], 1)

    return {"n": len(ordered), "p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99)}


class BackgroundLoad:
    """Publishes normal readings from the bench's devices at `rate` per second until stopped.

    `published` counts messages sent to the broker, `acknowledged` their PUBACKs (through
    `rpmgw.bench.rawpub`, not paho: paho's own cost per message took most of a core of the machine the
    gateway is measured on). At most `window` are unacknowledged at a time: a broker that cannot keep up
    slows the publisher down (it shows in the achieved rate) instead of queueing without bound. A failed
    connection fails the bench when the load is stopped. `set_rate` changes the rate while it runs; a
    publisher that falls behind its rate publishes flat out until it has caught up.
    """

    def __init__(self, env: BenchEnv, rate: float, *, window: int = 500, first_index: int = 0) -> None:
        self._env = env
        self._rate = float(rate)
        self._window = window
        self._index = first_index
        self._rebase = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-load", daemon=True)
        self._publisher: RawPublisher | None = None
        self._error: BaseException | None = None

    def start(self) -> BackgroundLoad:
        """Start publishing."""
        self._thread.start()
        return self

    def set_rate(self, rate: float) -> None:
        """Publish at `rate` per second from now on (no catching up on the previous rate)."""
        self._rate = float(rate)
        self._rebase.set()

    def stop(self, timeout: float = 30) -> None:
        """Stop publishing, wait (up to `timeout` s) for the PUBACKs of what was published, then return."""
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)
        if self._error is not None:
            raise BenchError(f"the background load failed: {self._error!r}") from self._error

    @property
    def published(self) -> int:
        """Messages sent to the broker."""
        return 0 if self._publisher is None else self._publisher.published

    @property
    def acknowledged(self) -> int:
        """PUBACKs received for them."""
        return 0 if self._publisher is None else self._publisher.acknowledged

    def _run(self) -> None:
        try:
            self._publish_until_stopped()
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def _publish_until_stopped(self) -> None:
        env = self._env
        publisher = self._publisher = RawPublisher(
            env.broker.host,
            env.broker.port,
            f"bench-load-{uuid.uuid4().hex[:6]}",
            env.broker_credentials("publisher"),
        )
        tick = 0.01
        since, base = time.monotonic(), 0
        try:
            while not self._stop.is_set():
                if self._rebase.is_set():
                    self._rebase.clear()
                    since, base = time.monotonic(), publisher.published
                due = base + int(self._rate * (time.monotonic() - since))
                room = self._window - (publisher.published - publisher.acknowledged)
                now = datetime.now(UTC)
                messages = []
                for _ in range(max(0, min(due - publisher.published, room))):
                    device = device_id(self._index % env.devices)
                    messages.append(
                        (
                            READINGS_TOPIC.format(device=device),
                            bp_payload(device, now - timedelta(seconds=30)),
                        )
                    )
                    self._index += 1
                publisher.publish_many(messages)
                self._stop.wait(tick)
            deadline = time.monotonic() + 30
            while publisher.acknowledged < publisher.published and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            publisher.close()


def alert_latency(env: BenchEnv, *, probes: int, background_rate: int, gateways: int = 1) -> Figures:
    """p50/p95/p99 from publishing a critical reading to its alert row and to its SMS request.

    With `gateways` > 1 the gateway processes share the load through a shared subscription, as a site
    runs them when one cannot keep up.
    """
    first_probe = env.devices + 1_000_000  # probe patients live beyond the load's devices
    # Enrolled just now: no day without readings is behind them, so no reminder is due.
    env.enrol_range(first_probe, first_probe + probes, days_ago=0)
    sink = SmsSink().start()
    database = f"bench_{uuid.uuid4().hex[:10]}"
    run_id = uuid.uuid4().hex[:6]
    gateway_envs = [
        env.gateway_env(
            database=database,
            client_id=f"bench-lat-{run_id}-{n}",
            topic=SHARED_TOPIC if gateways > 1 else None,
        )
        | {"RPMGW_GATEWAY__BATCH_MAX_WAIT": BATCH_MAX_WAIT}
        for n in range(gateways)
    ]
    gateway_env = gateway_envs[0]
    worker_port = free_port()
    worker_env = {
        **gateway_env,
        **sink.env(),
        "RPMGW_ALERTS__DELIVERY_INTERVAL_SECONDS": DELIVERY_INTERVAL,
        "RPMGW_ALERTS__WORKER_HEALTH_PORT": str(worker_port),
    }
    engine = make_engine(env.db_url)
    sessions = session_factory(engine)
    has_alert, close_probe = _alert_probe(engine)
    load = BackgroundLoad(env, background_rate)
    to_alert: list[float] = []
    to_sms: list[float] = []
    missed = 0
    client = env.mqtt_client(f"bench-probe-{uuid.uuid4().hex[:6]}")
    started_gateways = [
        env.start_rpmgw(["gateway"], gateway_envs[n], f"latency-gateway-{n}") for n in range(gateways)
    ]
    worker: RpmgwProcess | None = None
    try:
        for gateway in started_gateways:
            wait_for(gateway.ready, 60, "the latency gateway")
        load.start()
        # The steady state being measured: the load's patients are measuring, so the worker's first run
        # owes them no reminder. (Enrolled 400 days ago with nothing recorded, each was owed a reminder and
        # a no-data alert: a burst of 1,000 texts, sent while the probes ran, that is not the load asked
        # for; a critical text no longer waits behind such a burst, but it took the machine's CPU.)
        wait_for(partial(_all_active, sessions, env.devices), 60, "a first reading from every load patient")
        worker = env.start_rpmgw(["worker"], worker_env, "latency-worker")
        wait_for(worker.ready, 60, "the worker")
        client.connect(env.broker.host, env.broker.port)
        client.loop_start()
        time.sleep(2)  # let the load reach its rate first
        timed_from, cpu_before = time.monotonic(), [proc_cpu_seconds(g.pid) for g in started_gateways]
        for n in range(probes):
            index = first_probe + n
            device, patient, phone = device_id(index), patient_id(index), f"+7999{index % 10_000_000:07d}"
            payload = bp_payload(device, datetime.now(UTC), systolic=205, diastolic=125)
            started = time.monotonic()
            client.publish(READINGS_TOPIC.format(device=device), payload, qos=1)
            alert_at = _poll(partial(has_alert, patient), PROBE_TIMEOUT)
            if alert_at is None:
                missed += 1  # the gateway fell behind the load: counted, not timed
                continue
            to_alert.append((alert_at - started) * 1000)
            # Texts sent before (e.g. the no-data reminder of a new patient) do not count.
            sms_at = _poll(partial(sink.first_arrival, phone, started), PROBE_TIMEOUT)
            if sms_at is not None:
                to_sms.append((sms_at - started) * 1000)
            for gateway in started_gateways:
                gateway.check_alive()
            time.sleep(0.1)
        published = load.published
        # Probes decided while queued behind the batch in hand (gateway.ingest.IngestPipeline.watch_queue).
        decided_ahead = int(sum(g.metrics()["rpmgw_readings_decided_ahead_total"] for g in started_gateways))
        elapsed = time.monotonic() - timed_from
        cpu_percent = [
            round(100 * (proc_cpu_seconds(g.pid) - before) / elapsed, 1)
            for g, before in zip(started_gateways, cpu_before, strict=True)
        ]
    finally:
        load.stop()
        client.disconnect()
        client.loop_stop()
        for gateway in started_gateways:
            gateway.stop()
        if worker is not None:
            worker.stop()
        sink.stop()
        close_probe()
        engine.dispose()
    return {
        "background_rate": background_rate,
        "gateways": gateways,
        "background_published": published,
        "batch_max_wait_s": float(BATCH_MAX_WAIT),
        "delivery_interval_s": float(DELIVERY_INTERVAL),
        "gateway_cpu_percent": cpu_percent,  # per gateway process, while the probes ran
        "decided_ahead": decided_ahead,
        "alert_row": percentiles(to_alert),
        "sms_request": percentiles(to_sms),
        # In probe order (one every ~0.1 s plus its latency): shows whether slow ones come together.
        "alert_row_ms": [round(ms, 1) for ms in to_alert],
        "sms_request_ms": [round(ms, 1) for ms in to_sms],
        "alert_missing": missed,
        "sms_missing": probes - len(to_sms),
        "probe_timeout_s": PROBE_TIMEOUT,
    }


def _all_active(sessions: sessionmaker[Session], patients: int) -> bool:
    """Whether the gateway has recorded activity for (at least) `patients` patients."""
    with sessions() as session:
        return (session.scalar(select(func.count(distinct(PatientActivity.patient_id)))) or 0) >= patients


def _alert_probe(engine: Engine) -> tuple[Callable[[str], float | None], Callable[[], None]]:
    """(has_alert, close): `has_alert(patient)` is now (monotonic) when the patient has a severe-BP alert
    row (not e.g. a no-data one), else None.

    On one plain DB-API connection, without the ORM or a SQLAlchemy transaction: asked every 2 ms, an
    ORM session per poll took a fifth of the bench process, and on SQLite a SQLAlchemy transaction
    takes the write lock (BEGIN IMMEDIATE, rpmgw.db), which the gateway then waited for.
    """
    query = select(Alert.id).where(Alert.rule == RuleId.SEVERE_BP.value, Alert.patient_id == bindparam("p"))
    compiled = query.limit(1).compile(dialect=engine.dialect)
    connection = engine.raw_connection()

    def has_alert(patient: str) -> float | None:
        params = compiled.construct_params({"p": patient})
        positional = [params[name] for name in compiled.positiontup or ()]
        cursor = connection.cursor()
        try:
            cursor.execute(compiled.string, positional if compiled.positional else params)
            found = cursor.fetchone()
        finally:
            cursor.close()
            connection.rollback()  # no transaction stays open between polls
        return time.monotonic() if found is not None else None

    return has_alert, connection.close


def _poll(probe: Callable[[], float | None], timeout: float) -> float | None:
    """Call `probe` every 2 ms until it returns a time; None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.002)
    return None
