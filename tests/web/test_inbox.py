"""The inbox: order, filters, counts, live polling; acknowledgement: required fields, who and when,
time to acknowledge, escalation stopped, "in care" until cleared."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from alerts.tables import Acknowledgement, Alert
from tests.web.conftest import Clinic, csrf_token
from web.tables import AuditEntry


def _inbox_ids(html: str, table: str = "inbox") -> list[int]:
    section = html.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    return [int(i) for i in re.findall(r'data-alert-id="(\d+)"', section)]


def test_unacknowledged_first_then_most_severe_then_oldest(clinic: Clinic) -> None:
    now = clinic.clock.now
    routine_old = clinic.add_alert("P-1", "uncontrolled_bp", "routine", opened_at=now - timedelta(hours=9))
    urgent_new = clinic.add_alert("P-2", "hypo_l1", "urgent", opened_at=now - timedelta(minutes=5))
    urgent_old = clinic.add_alert("P-1", "low_bp", "urgent", opened_at=now - timedelta(hours=2))
    critical = clinic.add_alert("P-2", "severe_bp", "critical", opened_at=now - timedelta(minutes=1))
    acked_critical = clinic.add_alert(
        "P-1",
        "hyper_severe",
        "critical",
        opened_at=now - timedelta(hours=3),
        acknowledged_at=now - timedelta(hours=1),
        acknowledged_by="ivanova",
    )
    page = clinic.client("ivanova").get("/alerts").get_data(as_text=True)
    assert _inbox_ids(page) == [critical, urgent_old, urgent_new, routine_old]
    assert _inbox_ids(page, "in-care") == [acked_critical]
    api = clinic.client("ivanova").get("/api/v1/alerts").get_json()
    assert [a["id"] for a in api["alerts"]] == [critical, urgent_old, urgent_new, routine_old, acked_critical]


def test_each_row_shows_the_value_when_and_how_long_it_waits(clinic: Clinic) -> None:
    alert_id = clinic.add_alert("P-1", opened_at=clinic.clock.now - timedelta(hours=3, minutes=5))
    page = clinic.client("ivanova").get("/alerts").get_data(as_text=True)
    row = page.split(f'data-alert-id="{alert_id}"', 1)[1].split("</tr>", 1)[0]
    assert "184/112 mmHg" in row
    assert "28 Nov 2026, 10:39" in row  # measured 05:39 UTC, shown in Yekaterinburg time
    assert "3 h 05 min" in row


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("severity=urgent", {"urgent"}),
        ("rule=hypo_l1", {"hypo_l1"}),
        ("patient=смирнов", {"hypo_l1"}),
        ("patient=P-1", {"severe_bp", "low_bp"}),
        ("state=in_care", {"low_bp"}),
        ("state=closed", {"no_data"}),
        ("state=all", {"severe_bp", "low_bp", "hypo_l1", "no_data"}),
    ],
)
def test_filters(clinic: Clinic, query: str, expected: set[str]) -> None:
    now = clinic.clock.now
    clinic.add_alert("P-1", "severe_bp", "critical")
    clinic.add_alert("P-1", "low_bp", "urgent", acknowledged_at=now, acknowledged_by="ivanova")
    clinic.add_alert("P-2", "hypo_l1", "urgent")
    clinic.add_alert("P-2", "no_data", "routine", cleared_at=now, acknowledged_at=now, closed_at=now)
    alerts = clinic.client("ivanova").get(f"/api/v1/alerts?{query}").get_json()["alerts"]
    rules = {a["rule"] for a in alerts}
    if "severity" in query:
        rules = {a["severity"] for a in alerts}
    assert rules == expected


def test_counts_per_severity_in_the_header_cover_only_my_patients(clinic: Clinic) -> None:
    clinic.add_alert("P-1", "severe_bp", "critical")
    clinic.add_alert("P-2", "hypo_l1", "urgent")
    clinic.add_alert("P-9", "hypo_l2", "critical")  # team B's
    page = clinic.client("ivanova").get("/patients").get_data(as_text=True)
    counts = dict(re.findall(r'pill sev-(\w+)[^"]*" data-severity="\w+" title="[^"]*">(\d+)<', page))
    assert counts == {"critical": "1", "urgent": "1", "routine": "0"}


def test_the_live_endpoint_brings_new_alerts_without_a_reload(clinic: Clinic) -> None:
    client = clinic.client("ivanova")
    first = client.get("/alerts/live", headers={"X-Rpmgw-Poll": "1"}).get_json()
    assert first["ids"] == [] and first["total"] == 0
    new = clinic.add_alert("P-2", "hypo_l2", "critical")
    second = client.get("/alerts/live", headers={"X-Rpmgw-Poll": "1"}).get_json()
    assert second["ids"] == [new]
    assert second["counts"]["critical"] == 1
    assert f'data-alert-id="{new}"' in second["html"]


def _ack(clinic: Clinic, alert_id: int, **form: str) -> object:
    client = clinic.client("petrova")
    token = csrf_token(client, f"/alerts/{alert_id}")
    return client.post(f"/alerts/{alert_id}/acknowledge", data={**form, "csrf_token": token})


@pytest.mark.parametrize(
    "form",
    [
        {"reason_code": "contacted_patient", "note": "   "},
        {"reason_code": "", "note": "called"},
        {"reason_code": "made_up", "note": "called"},
    ],
)
def test_acknowledgement_needs_a_reason_code_and_a_note(clinic: Clinic, form: dict[str, str]) -> None:
    alert_id = clinic.add_alert("P-1")
    response = _ack(clinic, alert_id, **form)
    assert getattr(response, "status_code", None) == 400
    with clinic.sessions() as session:
        assert session.get(Alert, alert_id).acknowledged_at is None  # type: ignore[union-attr]


def test_acknowledgement_records_who_when_time_to_ack_and_stops_escalation(clinic: Clinic) -> None:
    alert_id = clinic.add_alert(
        "P-1", opened_at=clinic.clock.now - timedelta(minutes=12), next_escalation_at=clinic.clock.now
    )
    response = _ack(clinic, alert_id, reason_code="emergency_services", note="ambulance called at 11:02")
    assert getattr(response, "status_code", None) == 302
    with clinic.sessions() as session:
        alert = session.get(Alert, alert_id)
        ack = session.scalars(select(Acknowledgement).where(Acknowledgement.alert_id == alert_id)).one()
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "acknowledge")).one()
    assert (
        alert is not None and alert.acknowledged_by == "petrova" and alert.acknowledged_at == clinic.clock.now
    )
    assert alert.next_escalation_at is None
    assert (ack.reason_code, ack.note, ack.time_to_ack_seconds) == (
        "emergency_services",
        "ambulance called at 11:02",
        720,
    )
    assert (audit.actor, audit.patient_id, audit.object_id) == ("petrova", "P-1", str(alert_id))
    page = clinic.client("ivanova").get(f"/alerts/{alert_id}").get_data(as_text=True)
    assert "Ольга Петрова (petrova)" in page and "ambulance called at 11:02" in page and "12 min" in page
    # Still active: it left the inbox but stays in care until it clears.
    inbox = clinic.client("ivanova").get("/alerts").get_data(as_text=True)
    assert alert_id not in _inbox_ids(inbox) and _inbox_ids(inbox, "in-care") == [alert_id]


def test_acknowledging_a_cleared_alert_closes_it(clinic: Clinic) -> None:
    alert_id = clinic.add_alert("P-1", cleared_at=clinic.clock.now - timedelta(minutes=1))
    _ack(clinic, alert_id, reason_code="no_action_needed", note="normal on repeat")
    inbox = clinic.client("ivanova").get("/alerts").get_data(as_text=True)
    assert alert_id not in _inbox_ids(inbox) + _inbox_ids(inbox, "in-care")
    with clinic.sessions() as session:
        assert session.get(Alert, alert_id).closed_at is not None  # type: ignore[union-attr]


def test_a_second_acknowledgement_is_refused_with_a_message(clinic: Clinic) -> None:
    alert_id = clinic.add_alert("P-1")
    _ack(clinic, alert_id, reason_code="contacted_patient", note="first")
    client = clinic.client("ivanova")
    response = client.post(
        f"/api/v1/alerts/{alert_id}/acknowledge",
        json={"reason_code": "contacted_patient", "note": "second"},
        headers={"X-CSRFToken": csrf_token(client, "/account")},
    )
    assert response.status_code == 409
    assert "petrova" in response.get_json()["error"]
