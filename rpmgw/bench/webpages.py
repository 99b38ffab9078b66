"""Web response times: the alert inbox with many alerts and a patient page with a year of readings.

A real `rpmgw web` process (waitress) on the bench's database and InfluxDB; a doctor logs in through
the form and each page is fetched `requests_per_page` times.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import requests
from sqlalchemy import insert

from alerts import staff as staff_admin
from alerts.model import RULES, RuleId
from alerts.tables import Alert
from gateway.timeseries.base import StoredReading
from gateway.timeseries.influx_v1 import InfluxV1Store
from gateway.wire import Rejection, parse
from rpmgw.bench.errors import BenchError
from rpmgw.bench.harness import BenchEnv, bp_payload, device_id, patient_id, wait_for
from rpmgw.bench.latency import percentiles
from rpmgw.db import make_engine, session_factory
from rpmgw.servers import free_port
from rpmgw.settings import InfluxSettings
from web import accounts

USERNAME = "bench.doctor"
PASSWORD = "bench-password-0123456789"
TEAM = "bench-team"


def web_response_times(env: BenchEnv, *, alerts: int, requests_per_page: int) -> dict[str, object]:
    """p50/p95 of the inbox and of a patient page with 365 days x 4 readings."""
    database = f"bench_web_{uuid.uuid4().hex[:8]}"
    _seed_staff_and_alerts(env, alerts)
    readings = _seed_year(env, database, patient_index=0)
    port = free_port()
    web_env = env.gateway_env(database=database, client_id="unused")
    web_env |= {"RPMGW_WEB__HOST": "127.0.0.1", "RPMGW_WEB__PORT": str(port)}
    web = env.start_rpmgw(["web"], web_env, "web")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        web.check_alive()
        try:
            return requests.get(f"{base}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, 60, "the web process")
    client = _login(base)
    pages = {"inbox": "/alerts", "patient_page": f"/patients/{patient_id(0)}"}
    results: dict[str, object] = {}
    try:
        for name, path in pages.items():
            timings = []
            for _ in range(requests_per_page):
                started = time.perf_counter()
                response = client.get(base + path, timeout=60)
                timings.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise BenchError(f"{path} answered {response.status_code}")
            figures: dict[str, object] = dict(percentiles(timings))
            figures["note"] = (
                f"{alerts:,} alerts" if name == "inbox" else f"{readings:,} readings (365 days x 4)"
            )
            results[name] = figures
    finally:
        web.stop()
    return results


def _seed_staff_and_alerts(env: BenchEnv, count: int) -> None:
    sessions = session_factory(make_engine(env.db_url))
    now = datetime.now(UTC)
    with sessions.begin() as session:
        member = staff_admin.add_staff(
            session, username=USERNAME, display_name="Bench Doctor", phone="+79990000999", role="doctor"
        )
        accounts.set_password(session, member, PASSWORD, now=now - timedelta(days=1))
        staff_admin.add_care_team(session, TEAM)
        staff_admin.add_member(session, TEAM, USERNAME, responsible=True)
        for index in range(env.devices):
            staff_admin.assign_patient(session, patient_id(index), TEAM)
    rules = [RuleId.SEVERE_BP, RuleId.HIGH_BP, RuleId.LOW_BP]
    rows = []
    for n in range(count):
        rule = rules[n % len(rules)]
        opened = now - timedelta(minutes=5 * n + 1)
        # One in ten is still open, at most one per patient (the lifecycle's unique open episode).
        is_open = n % 10 == 0 and n // 10 < env.devices
        rows.append(
            {
                "patient_id": patient_id(n // 10 if is_open else n % env.devices),
                "family": RULES[rule].family.value,
                "rule": rule.value,
                "severity": RULES[rule].severity.value,
                "opened_at": opened,
                "first_measured_at": opened,
                "last_measured_at": opened,
                "reading_count": 1,
                "worst_value_text": "184/112 mmHg",
                "worst_key": 184.0,
                "last_value_text": "184/112 mmHg",
                "escalation_level": 0,
                "cleared_at": None if is_open else opened + timedelta(hours=1),
                "closed_at": None if is_open else opened + timedelta(hours=2),
            }
        )
    with sessions.begin() as session:
        for start in range(0, len(rows), 2_000):
            session.execute(insert(Alert), rows[start : start + 2_000])


def _seed_year(env: BenchEnv, database: str, patient_index: int) -> int:
    now = datetime.now(UTC)
    device = device_id(patient_index)
    readings: list[StoredReading] = []
    for n in range(365 * 4):
        outcome = parse(
            f"rpm/devices/{device}/readings", bp_payload(device, now - timedelta(hours=6 * n + 1)), now=now
        )
        if not isinstance(outcome, Rejection):
            readings.append(StoredReading(patient_id(patient_index), outcome))
    with InfluxV1Store(InfluxSettings(url=env.influx.url, database=database)) as store:
        store.ensure_ready()
        store.write(readings)
    return len(readings)


def _login(base: str) -> requests.Session:
    client = requests.Session()
    form = client.get(f"{base}/login", timeout=10).text
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form)
    if found is None:
        raise BenchError("no CSRF token on the login page")
    answer = client.post(
        f"{base}/login",
        data={"username": USERNAME, "password": PASSWORD, "csrf_token": found.group(1)},
        timeout=30,
    )
    if "/login" in answer.url:
        raise BenchError("the bench doctor could not log in")
    return client
