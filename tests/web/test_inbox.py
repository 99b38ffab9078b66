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


def _page_of_many(clinic: Clinic) -> tuple[list[int], list[int]]:
    """120 waiting alerts (60 critical, 60 urgent) and 3 in care in team A, and team B's own alerts.

    Returns the waiting ids in inbox order (critical first, each severity oldest first) and the ids
    in care, in the same order.
    """
    now = clinic.clock.now
    patients = clinic.add_patients("A", 60)
    waiting: list[tuple[int, float, int]] = []
    for n, patient_id in enumerate(patients):
        for rule, severity, rank in (("severe_bp", "critical", 3), ("low_bp", "urgent", 2)):
            # Newest first in the database, so that insertion order is not the inbox order.
            opened = now - timedelta(minutes=n + 1)
            alert_id = clinic.add_alert(patient_id, rule, severity, opened_at=opened)
            waiting.append((-rank, opened.timestamp(), alert_id))
    in_care = [
        clinic.add_alert(
            patient_id,
            "hypo_l1",
            "urgent",
            opened_at=now - timedelta(hours=n + 1),
            acknowledged_at=now,
            acknowledged_by="ivanova",
        )
        for n, patient_id in enumerate(patients[:3])
    ]
    clinic.add_alert("P-9", "hypo_l2", "critical")  # team B's
    return [alert_id for *_, alert_id in sorted(waiting)], list(reversed(in_care))


def test_a_long_inbox_comes_in_pages_in_inbox_order_with_counts_of_all(clinic: Clinic) -> None:
    waiting, in_care = _page_of_many(clinic)
    client = clinic.client("ivanova")
    first = client.get("/alerts").get_data(as_text=True)
    assert _inbox_ids(first) == waiting[:100] and _inbox_ids(first, "in-care") == []
    assert "(120)" in first.split('id="inbox"', 1)[1].split("</caption>", 1)[0]
    assert "(3)" in first.split('id="in-care"', 1)[1].split("</caption>", 1)[0]
    assert "These alerts follow the waiting ones, on the next pages." in first
    assert "Alerts 1–100 of 123, page 1 of 2" in first
    assert 'rel="next" href="/alerts?page=2"' in first and 'rel="prev"' not in first
    counts = dict(re.findall(r'data-severity="(\w+)"><b>(\d+)</b>', first))
    assert counts == {"critical": "60", "urgent": "60", "routine": "0"}
    second = client.get("/alerts?page=2").get_data(as_text=True)
    assert _inbox_ids(second) == waiting[100:] and _inbox_ids(second, "in-care") == in_care
    assert "Alerts 101–123 of 123, page 2 of 2" in second
    assert 'rel="prev" href="/alerts?page=1"' in second and 'rel="next"' not in second
    assert dict(re.findall(r'data-severity="(\w+)"><b>(\d+)</b>', second)) == counts
    # Past the last page: the last page; nonsense: the first.
    assert _inbox_ids(client.get("/alerts?page=7").get_data(as_text=True)) == waiting[100:]
    assert _inbox_ids(client.get("/alerts?page=-1").get_data(as_text=True)) == waiting[:100]


def test_pages_keep_the_filters_and_the_live_list_keeps_its_page(clinic: Clinic) -> None:
    waiting, in_care = _page_of_many(clinic)
    client = clinic.client("ivanova")
    assert "Alerts 1–" not in client.get("/alerts?severity=critical").get_data(as_text=True)  # one page
    page = client.get("/alerts?state=all").get_data(as_text=True)
    assert 'rel="next" href="/alerts?page=2&amp;state=all"' in page
    assert 'data-url="/alerts/live?page=1&amp;state=all"' in page
    live = client.get("/alerts/live?page=2", headers={"X-Rpmgw-Poll": "1"}).get_json()
    assert live["page"] == 2 and live["ids"] == waiting[100:]
    assert live["counts"] == {"critical": 60, "urgent": 60, "routine": 0} and live["total"] == 120
    assert _inbox_ids(live["html"], "in-care") == in_care and 'rel="prev"' in live["html"]


def test_pages_show_no_other_teams_alerts(clinic: Clinic) -> None:
    _page_of_many(clinic)
    other = clinic.client("sidorov")
    for path in ("/alerts", "/alerts?page=2", "/alerts?state=all&page=2"):
        page = other.get(path).get_data(as_text=True)
        assert len(_inbox_ids(page)) == 1 and "rel=" not in page.split('id="inbox-live"', 1)[1]
    api = other.get("/api/v1/alerts?per_page=1&page=2").get_json()
    assert (api["total"], api["pages"], api["page"], len(api["alerts"])) == (1, 1, 1, 1)
    assert api["alerts"][0]["patient_id"] == "P-9"
    assert clinic.client("admin").get("/alerts?page=2").status_code == 403


def test_the_api_gives_the_alerts_in_pages(clinic: Clinic) -> None:
    waiting, in_care = _page_of_many(clinic)
    client = clinic.client("petrova")
    everything = client.get("/api/v1/alerts").get_json()
    assert [a["id"] for a in everything["alerts"]] == waiting + in_care
    assert (everything["total"], everything["page"], everything["pages"], everything["next_page"]) == (
        123,
        1,
        1,
        None,
    )
    seen: list[int] = []
    page: int | None = 1
    while page is not None:
        body = client.get(f"/api/v1/alerts?per_page=50&page={page}").get_json()
        assert body["per_page"] == 50 and body["pages"] == 3 and len(body["alerts"]) <= 50
        seen += [a["id"] for a in body["alerts"]]
        page = body["next_page"]
    assert seen == waiting + in_care
    assert client.get("/api/v1/alerts?per_page=100000").get_json()["per_page"] == 500
    critical = client.get("/api/v1/alerts?severity=critical&per_page=7&page=2").get_json()
    assert [a["id"] for a in critical["alerts"]] == waiting[7:14] and critical["total"] == 60


def test_closed_alerts_do_not_count_as_waiting(clinic: Clinic) -> None:
    now = clinic.clock.now
    clinic.add_alert("P-1", "severe_bp", "critical")
    # Closed without an acknowledgement (data from before the lifecycle's rule, or written by hand).
    clinic.add_alert("P-2", "severe_bp", "critical", cleared_at=now, closed_at=now)
    live = clinic.client("ivanova").get("/alerts/live", headers={"X-Rpmgw-Poll": "1"}).get_json()
    assert live["counts"]["critical"] == 1 and len(live["ids"]) == 1
