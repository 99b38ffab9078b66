"""Operators' view: /healthz, /readyz and /metrics of real processes, and JSON log lines without phones."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.health import HealthServer, database_check, flag_check, influx_check
from rpmgw.admin import add_patient, enrol_device
from rpmgw.db import make_engine, session_factory, upgrade
from rpmgw.servers import free_port
from rpmgw.servers.influxdb import InfluxServer
from rpmgw.servers.mosquitto import MosquittoServer
from rpmgw.settings import load_settings
from tests.helpers import RpmgwProcess, bp_payload, encode, publish_all, readings_topic, wait_until

pytestmark = pytest.mark.slow

PHONE = "+79991234567"
PATIENT = "P-OBS-1"
DEVICE = "obs-dev-1"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, keyed by (name, sorted labels)."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def total(text: str, name: str) -> float:
    """The sum of a series over all its label values."""
    return sum(value for (sample, _), value in samples(text).items() if sample == name)


def broker_env(broker: MosquittoServer) -> dict[str, str]:
    """The gateway's connection variables (with the broker's gateway account when it has accounts)."""
    env = {"RPMGW_MQTT__HOST": broker.host, "RPMGW_MQTT__PORT": str(broker.port)}
    credentials = getattr(broker, "gateway_credentials", None)
    if credentials is not None:
        env |= {"RPMGW_MQTT__USERNAME": credentials.username, "RPMGW_MQTT__PASSWORD": credentials.password}
    return env


def get(port: int, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)


# --- readiness checks against real dependencies, up and down -------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'obs.sqlite3'}"
    upgrade(url)
    return url


CLOSED = "127.0.0.1:{port}"  # a port nothing listens on


@pytest.mark.parametrize(
    ("influx_up", "database_up", "status", "failing"),
    [
        (True, True, 200, set()),
        (False, True, 503, {"influxdb"}),
        (True, False, 503, {"database"}),
        (False, False, 503, {"influxdb", "database"}),
    ],
)
def test_readyz_names_what_is_down(
    influx_server: InfluxServer,
    sqlite_url: str,
    influx_up: bool,
    database_up: bool,
    status: int,
    failing: set[str],
) -> None:
    influx_url = influx_server.url if influx_up else f"http://127.0.0.1:{free_port()}"
    db_url = (
        sqlite_url
        if database_up
        else f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2"
    )
    server = HealthServer(
        "127.0.0.1",
        0,
        checks={
            "influxdb": influx_check(influx_url),
            "database": database_check(make_engine(db_url)),
            "broker": flag_check(lambda: True, "not connected"),
        },
    ).start()
    try:
        assert get(server.port, "/healthz").status_code == 200
        ready = get(server.port, "/readyz")
        assert ready.status_code == status
        checks = ready.json()["checks"]
        assert {name for name, result in checks.items() if result != "ok"} == failing
        assert get(server.port, "/nothing").status_code == 404
    finally:
        server.stop()


def test_readyz_answers_while_another_process_holds_the_sqlite_write_lock(sqlite_url: str) -> None:
    # The gateway's own batch transaction holds it for as long as a batch takes; a readiness probe
    # that queued behind it (10 s busy timeout) timed out under load.
    import sqlite3

    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    server = HealthServer(
        "127.0.0.1", 0, checks={"database": database_check(make_engine(sqlite_url))}
    ).start()
    try:
        ready = get(server.port, "/readyz")  # 5 s client timeout: well under the 10 s busy timeout
        assert ready.status_code == 200, ready.text
    finally:
        server.stop()
        holder.execute("ROLLBACK")
        holder.close()


# --- a real gateway process -----------------------------------------------------------------------------


@pytest.fixture
def gateway_env(
    mosquitto_broker: MosquittoServer, influx_server: InfluxServer, sqlite_url: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    sessions = session_factory(make_engine(sqlite_url))
    from datetime import UTC, datetime, timedelta

    with sessions.begin() as session:
        add_patient(session, patient_id=PATIENT, display_name="Ivan Petrov", phone=PHONE)
    with sessions.begin() as session:
        enrol_device(
            session,
            device_id=DEVICE,
            patient_id=PATIENT,
            valid_from=datetime.now(UTC) - timedelta(days=30),
            kind="blood_pressure",
        )
    yield {
        **broker_env(mosquitto_broker),
        "RPMGW_MQTT__CLIENT_ID": f"gw-{uuid.uuid4().hex[:8]}",
        "RPMGW_INFLUX__URL": influx_server.url,
        "RPMGW_INFLUX__DATABASE": f"obs_{uuid.uuid4().hex[:10]}",
        "RPMGW_DATABASE__URL": sqlite_url,
        "RPMGW_DATA_DIR": str(tmp_path),
        "RPMGW_GATEWAY__BATCH_MAX_WAIT": "0.05",
        "RPMGW_GATEWAY__HEALTH_HOST": "127.0.0.1",
        "RPMGW_GATEWAY__HEALTH_PORT": str(free_port()),
        "RPMGW_LOG_FORMAT": "json",
        "RPMGW_LOG_LEVEL": "DEBUG",
    }


def test_gateway_metrics_move_when_readings_flow_and_logs_are_json(
    gateway_env: dict[str, str], mosquitto_broker: MosquittoServer, tmp_path: Path
) -> None:
    port = int(gateway_env["RPMGW_GATEWAY__HEALTH_PORT"])
    gateway = RpmgwProcess(["gateway"], gateway_env, tmp_path / "gateway.log")
    try:

        def answers(path: str, status: int) -> bool:
            assert gateway.alive, gateway.log()[-3000:]
            try:
                return get(port, path).status_code == status
            except requests.ConnectionError:
                return False

        wait_until(lambda: answers("/healthz", 200), 60, "the gateway's /healthz")
        wait_until(lambda: answers("/readyz", 200), 60, "the gateway to be ready")
        before = get(port, "/metrics").text
        for name in (
            "rpmgw_readings_received_total",
            "rpmgw_readings_stored_total",
            "rpmgw_batch_size_count",
            "rpmgw_queue_depth",
            "rpmgw_mqtt_reconnects",
            "rpmgw_mqtt_connected",
        ):
            assert any(key[0] == name for key in samples(before)), f"{name} missing from /metrics"

        messages = [(readings_topic(DEVICE), encode(bp_payload(DEVICE, systolic=125, diastolic=80)))] * 1
        messages += [(readings_topic(DEVICE), encode(bp_payload(DEVICE, systolic=200, diastolic=125)))]
        messages += [(readings_topic(DEVICE), b"{not json")]
        messages += [(readings_topic("stranger-1"), encode(bp_payload("stranger-1")))]
        publish_all(mosquitto_broker.host, mosquitto_broker.port, messages)

        def counted() -> bool:
            return total(get(port, "/metrics").text, "rpmgw_readings_received_total") >= 4

        wait_until(counted, 60, "the gateway to count 4 received readings")
        after = samples(get(port, "/metrics").text)
        assert after[("rpmgw_readings_stored_total", ())] == 2
        rejected = {
            labels: v for (name, labels), v in after.items() if name == "rpmgw_readings_rejected_total"
        }
        assert rejected[(("reason", "unenrolled"),)] == 1
        assert sum(rejected.values()) == 2
        assert after[("rpmgw_store_seconds_count", (("operation", "write"),))] >= 1
        assert after[("rpmgw_batch_size_sum", ())] == 4
        assert after[("rpmgw_mqtt_connected", ())] == 1
        opened = [v for (name, _), v in after.items() if name == "rpmgw_alerts_opened_total"]
        assert sum(opened) >= 1, "the critical reading opened no alert in the metrics"
    finally:
        assert gateway.terminate() == 0

    lines = [line for line in gateway.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= entry.keys()
    text = gateway.log()
    assert PHONE not in text and re.sub(r"\D", "", PHONE) not in text
    assert "Ivan Petrov" not in text


def test_worker_serves_health_and_metrics(sqlite_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        "RPMGW_DATABASE__URL": sqlite_url,
        "RPMGW_DATA_DIR": str(tmp_path),
        "RPMGW_ALERTS__WORKER_INTERVAL_SECONDS": "0.2",
        "RPMGW_ALERTS__DELIVERY_INTERVAL_SECONDS": "0.2",
        "RPMGW_ALERTS__WORKER_HEALTH_PORT": str(port),
        "RPMGW_GATEWAY__HEALTH_HOST": "127.0.0.1",
    }
    worker = RpmgwProcess(["worker"], env, tmp_path / "worker.log")
    try:

        def ticked() -> bool:
            assert worker.alive, worker.log()[-3000:]
            try:
                text = get(port, "/metrics").text
            except requests.ConnectionError:
                return False
            return samples(text).get(("rpmgw_worker_ticks_total", (("outcome", "ok"),)), 0) >= 2

        wait_until(ticked, 60, "two worker ticks in /metrics")
        assert get(port, "/readyz").json() == {"status": "ready", "checks": {"database": "ok"}}
        assert "rpmgw_sms_sent_total" in get(port, "/metrics").text
    finally:
        assert worker.terminate() == 0


def test_web_serves_readyz_and_metrics_without_login(
    sqlite_url: str, influx_server: InfluxServer, tmp_path: Path
) -> None:
    from web import create_app

    settings = load_settings(
        database={"url": sqlite_url}, influx={"url": influx_server.url}, data_dir=tmp_path
    )
    client = create_app(settings).test_client()
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json
    client.get("/login")
    text = client.get("/metrics").get_data(as_text=True)
    served = samples(text)
    assert any(
        name == "rpmgw_web_requests_total" and ("endpoint", "auth.login") in labels for name, labels in served
    )
    assert any(name == "rpmgw_web_request_seconds_count" for name, _ in served)


def test_web_readyz_is_503_when_influxdb_is_down(sqlite_url: str, tmp_path: Path) -> None:
    from web import create_app

    settings = load_settings(
        database={"url": sqlite_url}, influx={"url": f"http://127.0.0.1:{free_port()}"}, data_dir=tmp_path
    )
    ready = create_app(settings).test_client().get("/readyz")
    assert ready.status_code == 503
    assert ready.json is not None and ready.json["checks"]["influxdb"] != "ok"
