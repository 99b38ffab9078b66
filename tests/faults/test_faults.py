"""Faults against the real servers: each test injects one, measures what was lost or doubled, and records
a row of docs/RELIABILITY.md (see conftest.py) before asserting the promise."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import requests
from paho.mqtt.enums import CallbackAPIVersion

from rpmgw.db import upgrade
from rpmgw.servers import free_port
from rpmgw.servers.influxdb import InfluxServer
from rpmgw.servers.mosquitto import MosquittoServer
from tests.fakes.twilio_server import FakeResponse
from tests.faults.conftest import FaultDeployment, FaultResult, measure_loss, rss_kib
from tests.faults.tcpproxy import CuttableProxy
from tests.helpers import bp_payload, encode, publish_all, readings_topic, wait_until

pytestmark = pytest.mark.slow

Record = Callable[[FaultResult], None]
INFLUX_OUTAGE_SECONDS = 60
# Generous bound on what an outage may add to the gateway's resident memory (Receive Maximum 10,000).
MAX_RSS_GROWTH_KIB = 200 * 1024


def load(devices: list[str], per_device: int, *, systolic: int = 185) -> list[dict[str, object]]:
    """Interleaved readings of every device, most recent last, all within the last hour (not late)."""
    return [
        bp_payload(device, minutes_ago=(per_device - i) * 0.05, systolic=systolic, diastolic=110)
        for i in range(per_device)
        for device in devices
    ]


def publish_in_background(env: FaultDeployment, payloads: list[dict[str, object]]) -> threading.Thread:
    thread = threading.Thread(target=env.publish, args=(payloads, 300), daemon=True)
    thread.start()
    return thread


def wait_all_stored(env: FaultDeployment, expected: set[str], timeout: float, what: str) -> float:
    """Seconds until every expected msg_id is in InfluxDB."""
    started = time.monotonic()
    wait_until(lambda: set(env.stored_counts()) >= expected, timeout, what, interval=0.5)
    return time.monotonic() - started


@pytest.mark.postgres
def test_gateway_sigkill_under_load(
    fault_env: FaultDeployment, fault_report: Record, postgres_url: str
) -> None:
    # PostgreSQL, as in production: SQLite's single writer makes the measuring reads wait on the load.
    upgrade(postgres_url)
    env = fault_env
    env.db_url = postgres_url
    devices = env.enrol_patients(20, "kill")
    payloads = load(devices, 1000)
    published = {str(p["msg_id"]) for p in payloads}
    gateway = env.start("gateway", "gateway-1")
    worker = env.start("worker", "worker")
    try:
        env.wait_live(gateway)
        publisher = publish_in_background(env, payloads)
        wait_until(lambda: len(env.stored_counts()) >= 3000, 120, "the first 3,000 readings stored")
        in_flight = len(published) - len(env.stored_counts())
        gateway.kill()
        publisher.join(300)
        assert not publisher.is_alive(), "the publisher did not get every PUBACK"
        gateway = env.start("gateway", "gateway-2")
        recovery = wait_all_stored(env, published, 240, "every reading after the restart")
        wait_until(lambda: env.outbox_statuses().get("pending", 0) == 0, 60, "the outbox to settle")
        lost, doubled = measure_loss(published, env.stored_counts())
        alerts_doubled, sms_doubled = env.alerts_doubled(), env.sms_doubled()
        fault_report(
            FaultResult(
                "gateway_sigkill",
                f"{len(published):,} readings of 20 patients (PostgreSQL); {in_flight:,} not yet stored at the kill",
                lost,
                doubled,
                alerts_doubled,
                sms_doubled,
                recovery,
                f"{sum(env.alerts_by_patient('bp_high').values())} BP alerts, {len(env.twilio.messages)} texts",
            )
        )
        assert (lost, doubled, alerts_doubled, sms_doubled) == (0, 0, 0, 0)
        assert env.alerts_by_patient("bp_high") == Counter({f"P-kill-{i:03d}": 1 for i in range(20)})
    finally:
        worker.kill()
        gateway.kill()


def test_influxdb_down_while_readings_keep_coming(
    fault_env: FaultDeployment, fault_report: Record, tmp_path: Path
) -> None:
    own = InfluxServer.start(tmp_path / "own-influx")
    env = fault_env
    env.influx = own
    devices = env.enrol_patients(10, "influx")
    payloads = load(devices, 500, systolic=130)
    # And a 200/125 of a patient the gateway has never seen (no history cached), sent during the outage.
    [severe_device] = env.enrol_patients(1, "influx-severe")
    severe = bp_payload(severe_device, minutes_ago=0.1, systolic=200, diastolic=125)
    published = {str(p["msg_id"]) for p in [*payloads, severe]}
    health_port = free_port()
    gateway = env.start("gateway", "gateway", RPMGW_GATEWAY__HEALTH_PORT=str(health_port))
    readyz = f"http://127.0.0.1:{health_port}/readyz"
    restarted: InfluxServer | None = None
    try:
        env.wait_live(gateway)
        baseline_rss = rss_kib(gateway.process.pid)
        own.stop()
        outage_started = time.monotonic()
        publisher = publish_in_background(env, payloads)
        env.publish([severe])
        severe_sent = time.monotonic()
        peak_rss = baseline_rss
        severe_alerted: float | None = None
        while time.monotonic() - outage_started < INFLUX_OUTAGE_SECONDS:
            assert gateway.alive, f"the gateway died while InfluxDB was down:\n{gateway.log()[-3000:]}"
            peak_rss = max(peak_rss, rss_kib(gateway.process.pid))
            if severe_alerted is None and env.alerts_by_patient("bp_high")["P-influx-severe-000"]:
                severe_alerted = time.monotonic() - severe_sent
            time.sleep(0.5)  # sampling cadence of the memory measurement, not a wait for a condition
        publisher.join(120)
        # Alerted from its value while InfluxDB was down (neither written nor readable), not after.
        assert severe_alerted is not None, (
            f"no alert for the 200/125 during the outage:\n{gateway.log()[-3000:]}"
        )
        assert "not stored" in gateway.log(), "the gateway should report the failed writes"
        not_ready = requests.get(readyz, timeout=5)
        assert not_ready.status_code == 503, "the gateway must report itself not ready while InfluxDB is down"
        restarted = InfluxServer.start(own.base_dir, http_port=own.http_port, rpc_port=own.rpc_port)
        env.influx = restarted
        recovery = wait_all_stored(env, published, 180, "the backlog after InfluxDB returned")
        wait_until(lambda: requests.get(readyz, timeout=5).status_code == 200, 30, "/readyz ready again")
        peak_rss = max(peak_rss, rss_kib(gateway.process.pid))
        lost, doubled = measure_loss(published, env.stored_counts())
        growth = peak_rss - baseline_rss
        fault_report(
            FaultResult(
                "influx_down",
                f"{len(published):,} readings published during a {INFLUX_OUTAGE_SECONDS} s outage",
                lost,
                doubled,
                None,
                None,
                recovery,
                f"gateway RSS {baseline_rss // 1024} MiB before, peak {peak_rss // 1024} MiB; stayed up; "
                f"/readyz {not_ready.status_code} during the outage; a 200/125 sent during it alerted "
                f"within {severe_alerted:.1f} s (checked every 0.5 s)",
            )
        )
        assert (lost, doubled) == (0, 0)
        assert growth < MAX_RSS_GROWTH_KIB, f"memory grew by {growth} KiB during the outage"
        wait_until(lambda: "storage is back" in gateway.log(), 30, "the gateway to report storage back")
    finally:
        gateway.kill()
        own.stop()
        if restarted is not None:
            restarted.stop()


def _broker_fault(env: FaultDeployment, fault_report: Record, *, kill: bool) -> None:
    devices = env.enrol_patients(10, "brk" if not kill else "brkkill")
    payloads = load(devices, 500, systolic=130)
    published = {str(p["msg_id"]) for p in payloads}
    gateway = env.start("gateway", "gateway")
    try:
        env.wait_live(gateway)
        env.publish(payloads)  # all PUBACKed: the broker owns them now
        backlog = len(published) - len(env.stored_counts())
        if kill:
            env.broker.kill()
            env.broker.restart()
        else:
            env.broker.restart()
        started = time.monotonic()
        wait_until(lambda: gateway.log().count("connected to") >= 2, 60, "the gateway to reconnect")
        env.wait_live(gateway)
        # Wait for what survived: everything (SIGTERM) or what the broker had saved (SIGKILL).
        if kill:
            _settle(lambda: len(env.stored_counts()))  # what survived is stored; the rest never comes
            recovery = time.monotonic() - started
        else:
            wait_all_stored(env, published, 120, "every reading after the broker restart")
            recovery = time.monotonic() - started
        lost, doubled = measure_loss(published, env.stored_counts())
        assert gateway.alive, gateway.log()[-3000:]
        fault_report(
            FaultResult(
                "broker_sigkill" if kill else "broker_restart",
                f"{len(published):,} readings PUBACKed; {backlog:,} still queued in the broker",
                lost,
                doubled,
                None,
                None,
                recovery,
                "loss = queued and not yet autosaved" if kill else "persistence file saved on SIGTERM",
            )
        )
        assert doubled == 0
        if not kill:
            assert lost == 0
    finally:
        gateway.kill()


def _settle(measure: Callable[[], int], quiet_seconds: float = 3.0, timeout: float = 60) -> int:
    """Poll until `measure` stops changing for `quiet_seconds`; returns its value."""
    last, since = measure(), time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)  # polling cadence
        value = measure()
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= quiet_seconds:
            return value
    return last


def test_broker_restart_with_a_backlog(fault_env: FaultDeployment, fault_report: Record) -> None:
    _broker_fault(fault_env, fault_report, kill=False)


def test_broker_sigkill_measures_the_persistence_window(
    fault_env: FaultDeployment, fault_report: Record
) -> None:
    _broker_fault(fault_env, fault_report, kill=True)


@pytest.mark.postgres
def test_database_unreachable_defers_alerts_and_catches_up(
    fault_env: FaultDeployment, fault_report: Record, postgres_url: str
) -> None:
    from sqlalchemy import make_url

    upgrade(postgres_url)
    url = make_url(postgres_url)
    proxy = CuttableProxy(url.host or "127.0.0.1", url.port or 5432)
    env = fault_env
    env.db_url = postgres_url
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    devices = env.enrol_patients(10, "db")
    gateway = env.start("gateway", "gateway", RPMGW_DATABASE__URL=proxied)
    try:
        env.wait_live(gateway)
        warmup = load(devices, 5)
        env.publish(warmup)
        wait_all_stored(env, {str(p["msg_id"]) for p in warmup}, 60, "the warm-up readings")
        proxy.cut()
        during = load(devices, 200)
        published = {str(p["msg_id"]) for p in warmup + during}
        env.publish(during)
        wait_until(lambda: "not stored" in gateway.log(), 60, "the gateway to report the database failure")
        stored_while_down = len(set(env.stored_counts()) & {str(p["msg_id"]) for p in during})
        proxy.restore()
        started = time.monotonic()
        recovery = wait_all_stored(env, published, 120, "every reading after the database returned")

        def evaluated() -> set[str]:
            from sqlalchemy import select

            from alerts.tables import AlertEvent

            with env.sessions()() as session:
                return set(session.scalars(select(AlertEvent.msg_id).where(AlertEvent.msg_id.is_not(None))))

        during_ids = {str(p["msg_id"]) for p in during}
        wait_until(lambda: during_ids <= evaluated(), 120, "every reading of the outage evaluated")
        recovery = max(recovery, time.monotonic() - started)
        lost, doubled = measure_loss(published, env.stored_counts())
        fault_report(
            FaultResult(
                "db_down",
                f"{len(during):,} readings during the cut ({stored_while_down:,} already in InfluxDB meanwhile)",
                lost,
                doubled,
                env.alerts_doubled(),
                None,
                recovery,
                "every reading of the outage attached to its alert afterwards",
            )
        )
        assert (lost, doubled, env.alerts_doubled()) == (0, 0, 0)
        assert gateway.alive
    finally:
        gateway.kill()
        proxy.close()


def test_sms_provider_failures(fault_env: FaultDeployment, fault_report: Record) -> None:
    env = fault_env
    devices = env.enrol_patients(2, "sms")
    env.twilio.fail_next(
        FakeResponse.slow(3.0, create=False),
        FakeResponse.rate_limited(),
        FakeResponse.server_error(),
        FakeResponse.server_error(503),
    )
    gateway = env.start("gateway", "gateway")
    worker = env.start(
        "worker", "worker", RPMGW_TWILIO__TIMEOUT="1.5", RPMGW_SMS__IN_FLIGHT_TIMEOUT_SECONDS="2"
    )
    try:
        env.wait_live(gateway)
        payloads = [bp_payload(devices[0], systolic=200, diastolic=125, minutes_ago=0.1)]
        env.publish(payloads)
        started = time.monotonic()
        wait_until(lambda: len(env.twilio.messages) >= 2, 90, "the texts after timeout, 429 and 5xx")
        # Settled: no row of the first alert still pending, in flight or waiting for a retry, so the
        # next injected failure can only meet the second alert's texts.
        wait_until(
            lambda: not {"pending", "in_flight"} & set(env.outbox_statuses()),
            60,
            "the first alert's texts to settle",
        )
        recovery = time.monotonic() - started
        # A permanent failure: the second patient's number is refused by the provider.
        env.twilio.fail_next(FakeResponse.invalid_number())
        env.publish([bp_payload(devices[1], systolic=200, diastolic=125, minutes_ago=0.1)])
        wait_until(lambda: "P-sms-001" in env.alerts_by_patient("bp_high"), 60, "the second patient's alert")
        wait_until(lambda: env.outbox_statuses().get("failed", 0) >= 1, 90, "the refused text marked failed")
        fault_report(
            FaultResult(
                "sms_failures",
                "2 critical alerts; timeout, 429, 500, 503, then an invalid number",
                None,
                None,
                env.alerts_doubled(),
                env.sms_doubled(),
                recovery,
                f"outbox {dict(sorted(env.outbox_statuses().items()))}; both alerts in the inbox",
            )
        )
        assert env.sms_doubled() == 0 and env.alerts_doubled() == 0
        assert set(env.alerts_by_patient("bp_high")) == {"P-sms-000", "P-sms-001"}
    finally:
        worker.kill()
        gateway.kill()


def test_gateway_sigterm_under_load(fault_env: FaultDeployment, fault_report: Record) -> None:
    env = fault_env
    devices = env.enrol_patients(20, "term")
    payloads = load(devices, 1000, systolic=130)
    published = {str(p["msg_id"]) for p in payloads}
    gateway = env.start("gateway", "gateway-1")
    try:
        env.wait_live(gateway)
        publisher = publish_in_background(env, payloads)
        wait_until(lambda: len(env.stored_counts()) >= 3000, 120, "the first 3,000 readings stored")
        in_flight = len(published) - len(env.stored_counts())
        code = gateway.terminate()
        assert code == 0 and "stopped: flushed" in gateway.log(), gateway.log()[-3000:]
        publisher.join(300)
        gateway = env.start("gateway", "gateway-2")
        recovery = wait_all_stored(env, published, 240, "every reading after the restart")
        lost, doubled = measure_loss(published, env.stored_counts())
        fault_report(
            FaultResult(
                "gateway_sigterm",
                f"{len(published):,} readings; {in_flight:,} not yet stored at the SIGTERM",
                lost,
                doubled,
                env.alerts_doubled(),
                None,
                recovery,
                "exit code 0 after flushing the batch in hand",
            )
        )
        assert (lost, doubled) == (0, 0)
    finally:
        gateway.kill()


def test_flooding_device_is_rate_limited_without_starving_others(
    fault_env: FaultDeployment, fault_report: Record
) -> None:
    env = fault_env
    env.extra_env = {"RPMGW_GATEWAY__RATE_LIMIT_PER_SECOND": "5", "RPMGW_GATEWAY__RATE_LIMIT_BURST": "50"}
    devices = env.enrol_patients(11, "flood")
    flooder, others = devices[0], devices[1:]
    flood = [bp_payload(flooder, minutes_ago=0.5, systolic=130) for _ in range(5000)]
    calm = load(others, 20, systolic=130)
    gateway = env.start("gateway", "gateway")
    try:
        env.wait_live(gateway)
        publisher = publish_in_background(env, flood)
        env.publish(calm)
        publisher.join(120)
        calm_ids = {str(p["msg_id"]) for p in calm}
        started = time.monotonic()
        wait_all_stored(env, calm_ids, 60, "the other devices' readings")
        flood_ids = {str(p["msg_id"]) for p in flood}

        def flood_accounted() -> bool:
            stored = len(set(env.stored_counts()) & flood_ids)
            return stored + env.quarantined_by_reason().get("rate_limited", 0) >= len(flood)

        wait_until(flood_accounted, 60, "every flooded reading stored or quarantined")
        stored_flood = len(set(env.stored_counts()) & flood_ids)
        limited = env.quarantined_by_reason().get("rate_limited", 0)
        lost, doubled = measure_loss(calm_ids, env.stored_counts())
        fault_report(
            FaultResult(
                "device_flood",
                f"{len(flood):,} readings from one device at full speed; {len(calm)} from 10 others",
                lost,
                doubled,
                None,
                None,
                time.monotonic() - started,
                f"flooder: {stored_flood} stored, {limited} quarantined as rate_limited, 0 dropped",
            )
        )
        assert (lost, doubled) == (0, 0)
        assert stored_flood + limited == len(flood)
        assert limited > 0
    finally:
        gateway.kill()


def test_broker_drops_are_reported_loudly(
    fault_env: FaultDeployment, fault_report: Record, tmp_path: Path
) -> None:
    # A broker with a tiny queue limit (not the shipped one) and a slow subscriber that went away.
    broker = MosquittoServer.start(
        tmp_path / "tight-broker", extra_config="sys_interval 1\nmax_queued_messages 10\n"
    )
    env = fault_env
    env.broker = broker
    try:
        gateway = env.start("gateway", "gateway")
        try:
            env.wait_live(gateway)
            away = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id="away-subscriber",
                clean_session=False,
            )
            account = broker.gateway_credentials  # an account that may read readings
            away.username_pw_set(account.username, account.password)
            away.connect(broker.host, broker.port)
            away.loop_start()
            subscribed = away.subscribe("rpm/devices/+/readings", qos=1)
            assert subscribed[0] == mqtt.MQTT_ERR_SUCCESS
            wait_until(
                lambda: broker.log_path.read_text().count("away-subscriber") >= 1, 10, "the subscription"
            )
            away.disconnect()
            away.loop_stop()
            publish_all(
                broker.host,
                broker.port,
                [(readings_topic("probe-drops"), encode(bp_payload("probe-drops"))) for _ in range(60)],
            )
            started = time.monotonic()
            wait_until(lambda: "DROPPED" in gateway.log(), 30, "the gateway to log the broker's drops")
            fault_report(
                FaultResult(
                    "broker_drops",
                    "60 readings to an offline persistent subscriber with max_queued_messages 10",
                    None,
                    None,
                    None,
                    None,
                    time.monotonic() - started,
                    "ERROR logged by gateway.brokerwatch within the broker's sys_interval",
                )
            )
            assert "ERROR" in gateway.log()
        finally:
            gateway.kill()
    finally:
        broker.stop()


def test_replayed_future_and_week_old_readings(fault_env: FaultDeployment, fault_report: Record) -> None:
    env = fault_env
    devices = env.enrol_patients(3, "input")
    replayed = [bp_payload(devices[0], minutes_ago=30 - i * 0.1, systolic=130) for i in range(100)]
    future = bp_payload(devices[0], minutes_ago=-60, systolic=130)  # an hour ahead of the clock
    week_old = bp_payload(devices[1], minutes_ago=3 * 24 * 60, systolic=200, diastolic=125)
    now_severe = bp_payload(devices[2], minutes_ago=0.1, systolic=200, diastolic=125)  # the control
    gateway = env.start("gateway", "gateway")
    worker = env.start("worker", "worker")
    try:
        env.wait_live(gateway)
        started = time.monotonic()
        env.publish([*replayed, *replayed, future, week_old, now_severe])
        expected = {str(p["msg_id"]) for p in [*replayed, week_old, now_severe]}
        wait_all_stored(env, expected, 60, "the replayed, old and fresh readings")
        wait_until(
            lambda: env.quarantined_by_reason().get("future", 0) == 1, 30, "the future reading refused"
        )
        wait_until(lambda: len(env.twilio.messages) >= 2, 60, "the fresh severe reading's texts (control)")
        wait_until(lambda: env.outbox_statuses().get("pending", 0) == 0, 60, "the outbox to settle")
        lost, doubled = measure_loss(expected, env.stored_counts())
        with env.sessions()() as session:
            from sqlalchemy import select

            from alerts.tables import Alert

            query = select(Alert.patient_id, Alert.late).where(Alert.family == "bp_high")
            late = dict(session.execute(query).tuples().all())
        texts_to_late_patient = env.texts_about("P-input-001")
        fault_report(
            FaultResult(
                "bad_input",
                "100 msg_ids sent twice, 1 reading an hour ahead, 1 severe reading 3 days old",
                lost,
                doubled,
                env.alerts_doubled(),
                env.sms_doubled(),
                time.monotonic() - started,
                f"future: quarantined; 3-day-old: stored, alert late={late.get('P-input-001')}, "
                f"{len(texts_to_late_patient)} alert texts about it",
            )
        )
        assert (lost, doubled) == (0, 0)
        assert env.stored_counts().get(str(future["msg_id"])) is None
        assert (late.get("P-input-001"), late.get("P-input-002")) == (True, False)
        assert texts_to_late_patient == [], "nobody is texted about a 3-day-old value as if it were now"
    finally:
        worker.kill()
        gateway.kill()
