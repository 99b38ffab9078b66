"""The bench's measurements; each returns a flat dict of figures for the table and the JSON report."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import func, select

from alerts.tables import Alert
from gateway.mqtt import BurstClient, Received
from gateway.timeseries.base import StoredReading
from gateway.timeseries.influx_v1 import InfluxV1Store
from gateway.wire import Rejection, parse
from rpmgw.bench.errors import BenchError
from rpmgw.bench.harness import (
    BenchEnv,
    RpmgwProcess,
    Workload,
    proc_cpu_seconds,
    proc_peak_rss_mib,
    wait_for,
)
from rpmgw.settings import InfluxSettings

Figures = dict[str, float | int | str | dict[str, int]]
SHARED_TOPIC = "$share/rpmgw-bench/rpm/devices/+/readings"


@dataclass(frozen=True, slots=True)
class DrainOptions:
    """What the backlog drain runs with."""

    processes: int = 1
    timeout: float = 900.0


def _database() -> str:
    return f"bench_{uuid.uuid4().hex[:10]}"


def _store(env: BenchEnv, database: str) -> InfluxV1Store:
    return InfluxV1Store(InfluxSettings(url=env.influx.url, database=database))


def backlog_drain(env: BenchEnv, workload: Workload, options: DrainOptions) -> Figures:
    """Queue `workload` in the gateways' persistent sessions while they are stopped, then time the drain."""
    database = _database()
    shared = options.processes > 1
    envs = [
        env.gateway_env(
            database=database,
            client_id=f"bench-gw-{uuid.uuid4().hex[:6]}-{n}",
            topic=SHARED_TOPIC if shared else None,
        )
        for n in range(options.processes)
    ]
    # First start: creates each persistent session and its subscription; then stop them.
    first = [env.start_rpmgw(["gateway"], e, f"gateway-{database}-{n}-init") for n, e in enumerate(envs)]
    for process in first:
        wait_for(process.ready, 60, "a gateway to connect")
    # Ready means connected; the subscription follows the CONNACK within milliseconds.
    time.sleep(0.5)
    for process in first:
        process.stop()
    quarantined_before = env.quarantined()
    env.reset_alerts()
    publish_rate = env.publish(workload.messages)

    started = time.monotonic()
    gateways = [env.start_rpmgw(["gateway"], e, f"gateway-{database}-{n}") for n, e in enumerate(envs)]
    for process in gateways:
        wait_for(process.ready, 60, "a gateway to start")
    ready = time.monotonic()
    cpu_before = [proc_cpu_seconds(p.pid) for p in gateways]

    def stored() -> float:
        return sum(p.metrics().get("rpmgw_readings_stored_total", 0.0) for p in gateways)

    def received() -> float:
        return sum(p.metrics().get("rpmgw_readings_received_total", 0.0) for p in gateways)

    # Scraped 4 times a second: the profile showed a 50-per-second scrape costing the gateway ~9 % CPU.
    wait_for(lambda: received() >= len(workload.messages), options.timeout, "the backlog to drain", 0.25)
    done = time.monotonic()
    cpu = sum(proc_cpu_seconds(p.pid) - before for p, before in zip(gateways, cpu_before, strict=True))
    peak_rss = max(proc_peak_rss_mib(p.pid) for p in gateways)
    stored_metric = stored()
    scraped = [p.metrics() for p in gateways]
    batches = sum(m.get("rpmgw_batch_size_count", 0.0) for m in scraped)
    for process in gateways:
        process.stop()
    elapsed = done - ready
    figures = {
        "processes": options.processes,
        "messages": len(workload.messages),
        "valid": workload.valid,
        "publish_rate": round(publish_rate),
        "startup_s": round(ready - started, 2),
        "drain_s": round(elapsed, 2),
        "readings_per_s": round(len(workload.messages) / elapsed),
        "cpu_percent": round(100 * cpu / elapsed / options.processes, 1),
        "peak_rss_mib": round(peak_rss, 1),
        "stored_metric": int(stored_metric),
        # Each batch costs a few database round trips whatever its size: how many there were says how
        # much of the drain went to them.
        "batches": int(batches),
        "mean_batch": round(len(workload.messages) / batches) if batches else 0,
        **integrity(env, database, expected=workload.valid, quarantined_before=quarantined_before),
    }
    env.reset_alerts()  # the next part starts with none
    return figures


def integrity(env: BenchEnv, database: str, *, expected: int, quarantined_before: int) -> Figures:
    """After a run into InfluxDB `database`: distinct readings stored, `expected` ones lost, doubled,
    quarantined since `quarantined_before`, alerts opened twice."""
    counts: Counter[str] = Counter()
    with _store(env, database) as store:
        counts.update(store.msg_id_counts("blood_pressure"))
    return {
        "stored_distinct": len(counts),
        "lost": max(0, expected - len(counts)),
        "doubled": sum(1 for n in counts.values() if n > 1),
        "quarantined": env.quarantined() - quarantined_before,
        "alerts_by_rule": (by_rule := env.alerts()),  # what the doubled count was asked of
        "alerts": sum(by_rule.values()),
        "alerts_doubled": _doubled_alerts(env),
    }


def _doubled_alerts(env: BenchEnv) -> int:
    """Open alerts of one patient and rule more than once (the lifecycle allows one open episode)."""
    sessions = env.db
    with sessions() as session:
        rows = session.execute(
            select(Alert.patient_id, Alert.rule, func.count())
            .where(Alert.closed_at.is_(None))
            .group_by(Alert.patient_id, Alert.rule)
            .having(func.count() > 1)
        ).all()
    return len(rows)


def bare_subscriber(
    env: BenchEnv, workload: Workload, receive_maximum: int = 10_000, *, client: str = "paho"
) -> Figures:
    """A limit: an MQTT v5 persistent session that only acknowledges, draining the same backlog.

    `client` "paho": stock paho, acknowledging each message itself (the issue's "bare paho subscriber").
    "gateway": the gateway's own client (gateway.mqtt.BurstClient) in manual-ack mode, its main thread
    acknowledging what arrived every few milliseconds in one write, as the gateway does per batch: what
    the gateway's receiving costs without the pipeline.
    """
    client_id = f"bench-bare-{client}-{uuid.uuid4().hex[:6]}"
    env.sessions.add(client_id)
    received = 0
    unacked: list[int] = []
    lock = threading.Lock()
    all_in = threading.Event()
    total = len(workload.messages)
    manual = client == "gateway"

    def on_message(_paho: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        on_burst([(b"", b"", message.mid, message.qos)])

    def on_burst(burst: list[Received]) -> None:
        nonlocal received
        with lock:
            received += len(burst)
            if manual:
                unacked.extend(mid for _, _, mid, _ in burst)
            if received >= total:
                all_in.set()

    def session(clean: bool) -> mqtt.Client:
        paho = env.mqtt_client(client_id, v5=True, role="gateway", burst=manual)
        paho.manual_ack_set(manual)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        properties.ReceiveMaximum = receive_maximum
        paho.on_message = on_message
        if isinstance(paho, BurstClient):
            paho.on_burst = on_burst  # as the gateway's consumer takes them
        rc = paho.connect(env.broker.host, env.broker.port, clean_start=clean, properties=properties)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BenchError("bare subscriber could not connect")
        return paho

    paho = session(True)
    paho.loop_start()
    subscribed = threading.Event()
    paho.on_subscribe = lambda *args: subscribed.set()
    paho.subscribe("rpm/devices/+/readings", qos=1)
    if not subscribed.wait(10):
        raise BenchError("bare subscriber: no SUBACK")
    paho.disconnect()
    paho.loop_stop()
    env.publish(workload.messages)
    started = time.monotonic()
    paho = session(False)
    paho.loop_start()
    deadline = started + 600
    while not all_in.wait(0.005 if manual else 1.0) and time.monotonic() < deadline:
        if manual:
            with lock:
                mids = unacked[:]
                unacked.clear()
            cast(BurstClient, paho).ack_many(mids)
    if not all_in.is_set():
        raise BenchError(f"bare subscriber received only {received} of {total}")
    elapsed = time.monotonic() - started
    paho.disconnect()
    paho.loop_stop()
    return {
        "client": client,
        "messages": total,
        "drain_s": round(elapsed, 2),
        "msgs_per_s": round(total / elapsed),
    }


def influx_write(env: BenchEnv, workload: Workload, batch_size: int = 5_000) -> Figures:
    """The limit: the same readings written straight to InfluxDB in the gateway's batch size, one client."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    readings = []
    for topic, payload in workload.messages:
        outcome = parse(topic, payload, now=now)
        if not isinstance(outcome, Rejection):
            readings.append(StoredReading(f"bench-limit-{outcome.device_id}", outcome))
    database = _database()
    with _store(env, database) as store:
        store.ensure_ready()
        started = time.monotonic()
        for start in range(0, len(readings), batch_size):
            store.write(readings[start : start + batch_size])
        elapsed = time.monotonic() - started
    return {
        "points": len(readings),
        "write_s": round(elapsed, 2),
        "points_per_s": round(len(readings) / elapsed),
    }


def start_gateway(env: BenchEnv, database: str, name: str) -> RpmgwProcess:
    """A gateway on the normal topic, waited for until ready."""
    process = env.start_rpmgw(
        ["gateway"],
        env.gateway_env(database=database, client_id=f"bench-{name}-{uuid.uuid4().hex[:6]}"),
        name,
    )
    wait_for(process.ready, 60, f"{name} to be ready")
    return process
