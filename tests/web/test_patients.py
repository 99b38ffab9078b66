"""The patient page, the population overview, per-patient thresholds, and the readings' arithmetic."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from alerts.tables import ThresholdVersion
from tests.web.conftest import NOW, Clinic, MemoryStore, csrf_token
from web import readings
from web.tables import AuditEntry

ZONE = ZoneInfo("Asia/Yekaterinburg")


def _chart(page: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', page, re.S)
    assert match, "no chart data on the page"
    data: dict[str, object] = json.loads(match.group(1))
    return data


def test_patient_page_shows_charts_with_the_patients_thresholds_and_is_audited(clinic: Clinic) -> None:
    clinic.store.add_bp("P-1", NOW - timedelta(hours=2), 150, 95)
    clinic.store.add_bp("P-1", NOW - timedelta(days=10), 130, 80)  # outside 7 days
    clinic.store.add_glucose("P-1", NOW - timedelta(hours=3), 5.5)
    with clinic.sessions.begin() as session:
        from alerts.threshold_store import set_patient_thresholds

        set_patient_thresholds(
            session, "P-1", {"low_sbp": 100}, by_username="ivanova", reason="dizzy", now=NOW
        )
    page = clinic.client("petrova").get("/patients/P-1").get_data(as_text=True)
    chart = _chart(page)
    assert chart["thresholds"]["low_sbp"] == 100 and chart["thresholds"]["severe_sbp"] == 180  # type: ignore[index]
    assert chart["threshold_label"] == "patient:P-1:v1"
    assert [p["s"] for p in chart["series"]["bp"]] == [150]  # type: ignore[index]
    assert chart["series"]["glucose"][0]["v"] == 5.5  # type: ignore[index]
    with clinic.sessions() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "view_patient")).one()
    assert (entry.actor, entry.patient_id) == ("petrova", "P-1")


@pytest.mark.parametrize(("unit_arg", "shown", "unit"), [("", "5.5", "mmol/L"), ("mgdl", "99", "mg/dL")])
def test_glucose_in_mmol_by_default_and_mg_dl_on_request(
    clinic: Clinic, unit_arg: str, shown: str, unit: str
) -> None:
    clinic.store.add_glucose("P-1", NOW - timedelta(hours=1), 5.5)
    page = clinic.client("ivanova").get(f"/patients/P-1?unit={unit_arg}").get_data(as_text=True)
    table = page.split('id="readings"', 1)[1].split("</table>", 1)[0]
    assert f"<b>{shown}</b></td><td>{unit}</td>" in table
    assert _chart(page)["unit"] == unit


def test_readings_table_shows_quality_flags_and_censored_values(clinic: Clinic) -> None:
    clinic.store.add_bp("P-1", NOW - timedelta(hours=1), 150, 95, quality=("cuff_loose",))
    clinic.store.add_glucose("P-1", NOW - timedelta(hours=2), None, censored="LO")
    page = clinic.client("ivanova").get("/patients/P-1").get_data(as_text=True)
    table = page.split('id="readings"', 1)[1].split("</table>", 1)[0]
    assert 'class="flagged"' in table and "cuff loose" in table
    assert "<b>LO</b>" in table


@pytest.mark.parametrize("days", [7, 30, 90])
def test_periods(clinic: Clinic, days: int) -> None:
    for ago in (3, 20, 60):
        clinic.store.add_bp("P-1", NOW - timedelta(days=ago), 140, 90)
    chart = _chart(clinic.client("ivanova").get(f"/patients/P-1?days={days}").get_data(as_text=True))
    assert len(chart["series"]["bp"]) == sum(1 for ago in (3, 20, 60) if ago < days)  # type: ignore[index]


def test_the_page_still_works_when_influxdb_is_down(clinic: Clinic) -> None:
    clinic.store.down = True
    response = clinic.client("ivanova").get("/patients/P-1")
    assert response.status_code == 200
    assert "InfluxDB" in response.get_data(as_text=True)


def _thresholds(clinic: Clinic, username: str, form: dict[str, str]) -> int:
    client = clinic.client(username)
    token = csrf_token(client, "/patients/P-1")
    return client.post("/patients/P-1/thresholds", data={**form, "csrf_token": token}).status_code


def test_a_doctor_changes_thresholds_with_a_reason_as_a_new_version(clinic: Clinic) -> None:
    assert (
        _thresholds(clinic, "ivanova", {"t_low_sbp": "100", "t_hypo_l1_mmol": "4,2", "reason": "elderly"})
        == 302
    )
    assert _thresholds(clinic, "ivanova", {"t_low_sbp": "", "reason": "back to clinic values"}) == 302
    with clinic.sessions() as session:
        versions = list(session.scalars(select(ThresholdVersion).order_by(ThresholdVersion.version)))
        audited = session.scalars(select(AuditEntry).where(AuditEntry.action == "change_thresholds")).all()
    assert [(v.version, json.loads(v.overrides), v.changed_by) for v in versions] == [
        (1, {"hypo_l1_mmol": 4.2, "low_sbp": 100}, "ivanova"),
        (2, {}, "ivanova"),
    ]
    assert [a.object_id for a in audited] == ["v1", "v2"]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"t_low_sbp": "170", "reason": "x"}, "low_sbp (170) must be below high_sbp (160)"),
        ({"t_low_sbp": "abc", "reason": "x"}, "low_sbp: &#39;abc&#39; is not a number"),
        ({"t_low_sbp": "100", "reason": " "}, "A threshold change needs a reason."),
    ],
)
def test_invalid_thresholds_are_refused_with_the_field_named(
    clinic: Clinic, form: dict[str, str], message: str
) -> None:
    client = clinic.client("ivanova")
    token = csrf_token(client, "/patients/P-1")
    response = client.post(
        "/patients/P-1/thresholds", data={**form, "csrf_token": token}, follow_redirects=True
    )
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    with clinic.sessions() as session:
        assert session.scalars(select(ThresholdVersion)).all() == []


def test_population_puts_the_silent_patient_next_to_the_critical_one(clinic: Clinic) -> None:
    for day in range(20):
        clinic.store.add_bp("P-1", NOW - timedelta(days=day, hours=1), 128, 82)
    clinic.store.add_bp("P-2", NOW - timedelta(days=6), 130, 80)  # stopped measuring 6 days ago
    clinic.note_activity()
    page = clinic.client("ivanova").get("/patients").get_data(as_text=True)
    order = re.findall(r'<tr data-patient-id="([^"]+)">', page)
    assert order == ["P-2", "P-1"]
    row = page.split('data-patient-id="P-2"', 1)[1].split("</tr>", 1)[0]
    assert "not measuring" in row and "6 days ago" in row
    clinic.add_alert("P-1", "severe_bp", "critical")
    page = clinic.client("ivanova").get("/patients").get_data(as_text=True)
    assert re.findall(r'<tr data-patient-id="([^"]+)">', page) == ["P-1", "P-2"]
    p1 = page.split('data-patient-id="P-1"', 1)[1].split("</tr>", 1)[0]
    assert ">20<" in p1 and "128/82" in p1  # adherence and 7-day mean


@pytest.mark.parametrize(
    ("sort", "direction", "expected"),
    [
        ("patient", "", ["P-2", "P-1"]),
        ("bp", "", ["P-1", "P-2"]),
        ("bp", "desc", ["P-2", "P-1"]),
        ("last", "", ["P-2", "P-1"]),
    ],
)
def test_population_is_sortable(clinic: Clinic, sort: str, direction: str, expected: list[str]) -> None:
    clinic.store.add_bp("P-1", NOW - timedelta(hours=1), 190, 120)
    clinic.store.add_bp("P-2", NOW - timedelta(days=2), 120, 80)
    clinic.note_activity()
    page = clinic.client("ivanova").get(f"/patients?sort={sort}&dir={direction}").get_data(as_text=True)
    assert re.findall(r'<tr data-patient-id="([^"]+)">', page) == expected


# --- the arithmetic (pure) -----------------------------------------------------------------------


def test_adherence_counts_local_calendar_days_of_the_last_30() -> None:
    store = MemoryStore()
    store.add_bp(
        "X", NOW.replace(hour=19, minute=30), 120, 80
    )  # 00:30 on the 29th local: tomorrow, not counted
    store.add_bp("X", NOW - timedelta(hours=1), 120, 80)  # today
    store.add_bp("X", NOW - timedelta(hours=2), 120, 80)  # today again
    store.add_bp("X", NOW - timedelta(days=29), 120, 80)  # the 30th day
    store.add_bp("X", NOW - timedelta(days=30), 120, 80)  # the 31st day
    assert readings.adherence_days(store.stored, now=NOW, zone=ZONE) == 2


def test_time_in_range_bands_and_targets() -> None:
    store = MemoryStore()
    for value in (2.5, 3.5, 5.0, 6.0, 7.0, 9.9, 10.0, 12.0, 15.0):
        store.add_glucose("X", NOW, value)
    store.add_glucose("X", NOW, None, censored="HI")
    tir = readings.time_in_range(store.stored)
    assert tir is not None
    assert (tir.count, tir.very_low, tir.low, tir.in_range, tir.high, tir.very_high) == (
        10,
        10,
        10,
        50,
        10,
        20,
    )
    assert not tir.meets_targets
    assert readings.time_in_range([]) is None


def test_means_leave_out_quality_flagged_readings() -> None:
    store = MemoryStore()
    store.add_bp("X", NOW - timedelta(days=1), 140, 90, pulse=60)
    store.add_bp("X", NOW - timedelta(days=2), 120, 80, pulse=80)
    store.add_bp("X", NOW - timedelta(days=3), 250, 150, quality=("movement",))
    store.add_bp("X", NOW - timedelta(days=9), 200, 100)
    mean = readings.bp_mean(store.stored, since=NOW - timedelta(days=7))
    assert mean is not None and (mean.systolic, mean.diastolic, mean.pulse, mean.count) == (130, 85, 70, 2)


@pytest.mark.parametrize(
    ("mmol", "unit", "shown"), [(5.55, "mmol/L", 5.5), (5.55, "mg/dL", 100), (3.0, "mg/dL", 54)]
)
def test_glucose_units(mmol: float, unit: readings.GlucoseUnit, shown: float) -> None:
    assert readings.glucose_in(mmol, unit) == shown
