"""The whole way in a real browser (headless Chromium): a reading published over real MQTT raises an
alert, the doctor logs in, sees it, opens the patient's chart, acknowledges it with a note, and it
leaves the inbox; a new alert appears without a reload; the interface switches to Russian.

Real Mosquitto, InfluxDB 1.x, `rpmgw gateway` and `rpmgw web` processes (waitress). Screenshots go
to test-artifacts/web/ (ignored by git); docs/screenshots/ holds a committed pair for the README.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select

from alerts import staff as staff_admin
from alerts.tables import Alert
from gateway.timeseries.base import StoredReading
from gateway.timeseries.influx_v1 import InfluxV1Store
from gateway.wire import BloodPressureReading
from rpmgw import admin as registry
from rpmgw.db import make_engine, session_factory, upgrade
from rpmgw.servers import free_port
from rpmgw.servers.influxdb import InfluxServer
from rpmgw.servers.mosquitto import MosquittoServer
from rpmgw.settings import InfluxSettings
from tests.helpers import RpmgwProcess, bp_payload, encode, publish_all, readings_topic, wait_until
from web import accounts

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
PASSWORD = "demo doctor password"


def _chrome(profile: Path) -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--lang=en-US",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(
            f"the browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        )
    driver = _chrome(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


def _history(device_id: str, patient_id: str, now: datetime) -> list[StoredReading]:
    """A week of twice-daily readings drifting upwards: something to see on the chart."""
    stored = []
    for i in range(14):
        at = now - timedelta(hours=12 * (14 - i) + 3)
        reading = BloodPressureReading.model_validate(
            {
                "v": 1,
                "msg_id": str(uuid.uuid4()),
                "device_id": device_id,
                "type": "blood_pressure",
                "measured_at": at.isoformat(),
                "systolic": 138 + 2 * i + (6 if i % 3 == 0 else 0),
                "diastolic": 86 + i,
                "pulse": 70 + i % 5,
            }
        )
        stored.append(StoredReading(patient_id, reading, ("movement",) if i == 9 else ()))
    return stored


def _wait(driver: WebDriver, seconds: float = 30) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, seconds)


def _shot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height), 900), 2600))
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    driver.set_window_size(1400, 1000)
    return path


def test_doctor_handles_an_alert_from_mqtt_to_acknowledgement(
    tmp_path: Path,
    browser: WebDriver,
    mosquitto_broker: MosquittoServer,
    influx_server: InfluxServer,
    influx_settings: InfluxSettings,
) -> None:
    db_url = f"sqlite:///{tmp_path / 'rpmgw.sqlite3'}"
    upgrade(db_url)
    engine = make_engine(db_url)
    sessions = session_factory(engine)
    now = datetime.now(UTC)
    with sessions.begin() as s:
        staff_admin.add_care_team(s, "Therapy 1")
        doctor = staff_admin.add_staff(
            s,
            username="demo.doctor",
            display_name="Anna Ivanova",
            phone="+79990000001",
            role="doctor",
            language="en",
        )
        accounts.set_password(s, doctor, PASSWORD, now=now)
        staff_admin.add_member(s, "Therapy 1", "demo.doctor", responsible=True)
        for pid, name in (("P-000123", "Maria Kuznetsova"), ("P-000124", "Ivan Smirnov")):
            registry.add_patient(s, patient_id=pid, display_name=name, phone="+79991234567", language="ru")
            staff_admin.assign_patient(s, pid, "Therapy 1")
        registry.enrol_device(
            s,
            device_id="bp-000123",
            patient_id="P-000123",
            valid_from=now - timedelta(days=30),
            kind="blood_pressure",
        )
        registry.enrol_device(
            s,
            device_id="gl-000124",
            patient_id="P-000124",
            valid_from=now - timedelta(days=30),
            kind="glucose",
        )
    store = InfluxV1Store(influx_settings)
    store.ensure_ready()
    store.write(_history("bp-000123", "P-000123", now))
    store.close()

    port = free_port()
    env = {
        "RPMGW_DATA_DIR": str(tmp_path),
        "RPMGW_DATABASE__URL": db_url,
        "RPMGW_MQTT__HOST": mosquitto_broker.host,
        "RPMGW_MQTT__PORT": str(mosquitto_broker.port),
        "RPMGW_MQTT__USERNAME": mosquitto_broker.gateway_credentials.username,
        "RPMGW_MQTT__PASSWORD": mosquitto_broker.gateway_credentials.password,
        "RPMGW_MQTT__CLIENT_ID": f"gw-{uuid.uuid4().hex[:8]}",
        "RPMGW_INFLUX__URL": influx_server.url,
        "RPMGW_INFLUX__DATABASE": influx_settings.database,
        "RPMGW_INFLUX__VERSION": "1",
        "RPMGW_GATEWAY__BATCH_MAX_WAIT": "0.05",
        "RPMGW_WEB__PORT": str(port),
        "RPMGW_WEB__SECRET_KEY": uuid.uuid4().hex * 2,
        "RPMGW_WEB__POLL_SECONDS": "2",
    }
    gateway = RpmgwProcess(["gateway"], env, tmp_path / "gateway.log")
    web = RpmgwProcess(["web"], env, tmp_path / "web.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/healthz"), 30, f"rpmgw web on {base}\n{web.log()[-2000:]}")
        wait_until(
            lambda: "gateway up" in gateway.log(), 30, f"the gateway to start\n{gateway.log()[-2000:]}"
        )

        # A severe reading arrives over MQTT: the gateway opens a critical alert.
        publish_all(
            mosquitto_broker.host,
            mosquitto_broker.port,
            [
                (
                    readings_topic("bp-000123"),
                    encode(bp_payload("bp-000123", minutes_ago=2, systolic=192, diastolic=121)),
                )
            ],
        )
        alert_id = _wait_for_alert(sessions, "P-000123")

        # The doctor logs in and sees it in the inbox.
        browser.get(f"{base}/")
        _wait(browser).until(ec.presence_of_element_located((By.ID, "username"))).send_keys("demo.doctor")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "login").click()
        row = _wait(browser).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, f'#inbox tr[data-alert-id="{alert_id}"]'))
        )
        assert "Maria Kuznetsova" in row.text and "192/121" in row.text
        assert "Severe blood pressure" in row.text
        assert browser.find_element(By.CSS_SELECTOR, '.sevcount[data-severity="critical"] b').text == "1"

        # A new alert appears without a reload (the page polls).
        publish_all(
            mosquitto_broker.host,
            mosquitto_broker.port,
            [(readings_topic("gl-000124"), encode(_glucose_payload("gl-000124", 2.6)))],
        )
        hypo_id = _wait_for_alert(sessions, "P-000124")
        _wait(browser).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, f'#inbox tr[data-alert-id="{hypo_id}"]'))
        )
        assert browser.find_element(By.CSS_SELECTOR, '.sevcount[data-severity="critical"] b').text == "2"
        inbox_shot = _shot(browser, "inbox-en.png")

        # Opens the alert, then the patient's chart.
        browser.find_element(By.CSS_SELECTOR, f'#inbox tr[data-alert-id="{alert_id}"] a.open-alert').click()
        _wait(browser).until(ec.presence_of_element_located((By.ID, "bp-chart")))
        browser.find_element(By.ID, "patient-link").click()
        _wait(browser).until(ec.presence_of_element_located((By.ID, "bp-chart")))
        assert "Maria Kuznetsova" in browser.find_element(By.ID, "patient-name").text
        _wait(browser).until(lambda d: d.execute_script("return Chart.getChart('bp-chart') !== undefined"))
        readings_table = browser.find_element(By.ID, "readings").get_attribute("textContent") or ""
        assert "192/121" in readings_table and "movement" in readings_table
        patient_shot = _shot(browser, "patient-en.png")
        assert browser.get_log("browser") == [] or _only_harmless(browser.get_log("browser"))

        # Acknowledges it with what was done; it leaves the inbox and stays "in care" (still active).
        browser.back()
        _wait(browser).until(ec.presence_of_element_located((By.ID, "ack-form")))
        browser.find_element(By.CSS_SELECTOR, 'input[name="reason_code"][value="contacted_patient"]').click()
        browser.find_element(By.ID, "note").send_keys(
            "Called: resting, took amlodipine; re-measure in 30 min"
        )
        browser.find_element(By.ID, "ack-submit").click()
        _wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".flash-ok")))
        assert not browser.find_elements(By.CSS_SELECTOR, f'#inbox tr[data-alert-id="{alert_id}"]')
        in_care = browser.find_element(By.CSS_SELECTOR, f'#in-care tr[data-alert-id="{alert_id}"]')
        assert "demo.doctor" in in_care.text
        with sessions() as s:
            alert = s.scalars(select(Alert).where(Alert.id == alert_id)).one()
            assert alert.acknowledged_by == "demo.doctor" and alert.next_escalation_at is None

        # The same in Russian.
        browser.find_element(By.CSS_SELECTOR, '.lang button[value="ru"]').click()
        _wait(browser).until(
            ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Оповещения моих пациентов")
        )
        _shot(browser, "inbox-ru.png")
        browser.find_element(By.CSS_SELECTOR, f'#inbox tr[data-alert-id="{hypo_id}"] a.patient').click()
        _wait(browser).until(ec.presence_of_element_located((By.ID, "glucose-chart")))
        assert "Регулярность" in browser.page_source
        _shot(browser, "patient-ru.png")
    finally:
        web.terminate()
        gateway.terminate()
        engine.dispose()
    for shot in (inbox_shot, patient_shot):
        assert shot.stat().st_size > 10_000


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _wait_for_alert(sessions: object, patient_id: str) -> int:
    from sqlalchemy.orm import Session, sessionmaker

    assert isinstance(sessions, sessionmaker)
    found: list[int] = []

    def opened() -> bool:
        with sessions() as s:
            assert isinstance(s, Session)
            found[:] = list(s.scalars(select(Alert.id).where(Alert.patient_id == patient_id)))
        return bool(found)

    wait_until(opened, 30, f"an alert for {patient_id}")
    return found[0]


def _glucose_payload(device_id: str, value: float) -> dict[str, object]:
    return {
        "v": 1,
        "msg_id": str(uuid.uuid4()),
        "device_id": device_id,
        "type": "glucose",
        "measured_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="seconds"),
        "value": value,
        "unit": "mmol/L",
        "meal": "fasting",
    }


def _only_harmless(entries: list[dict[str, object]]) -> bool:
    # A CSP violation or a script error would show up here; the favicon request is harmless.
    return all("favicon" in str(e.get("message", "")) for e in entries)
