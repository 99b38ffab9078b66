"""The population overview of a large care team: one order over the whole team cut in pages, counts of
the whole team, InfluxDB asked for the page's patients only, another team's patients never shown."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from sqlalchemy import select

from tests.web.conftest import NOW, Clinic
from web.tables import AuditEntry

TEAM_A_EXTRA = 230  # P-1000 ... P-1229, with P-1 and P-2: 232 patients, three pages of 100


def _ids(page: str) -> list[str]:
    return re.findall(r'<tr data-patient-id="([^"]+)">', page)


def _row(page: str, patient_id: str) -> str:
    return page.split(f'data-patient-id="{patient_id}"', 1)[1].split("</tr>", 1)[0]


def _next(page: str) -> str | None:
    match = re.search(r'<a rel="next" href="([^"]+)"', page)
    return html.unescape(match.group(1)) if match else None


def _all_pages(clinic: Clinic, username: str, path: str) -> list[str]:
    """The pages, following the "Next" links from `path`."""
    client = clinic.client(username)
    pages: list[str] = []
    url: str | None = path
    while url is not None:
        pages.append(client.get(url).get_data(as_text=True))
        url = _next(pages[-1])
        assert len(pages) < 10, "the Next links do not end"
    return pages


@pytest.fixture
def big(clinic: Clinic) -> Clinic:
    """Team A with 232 patients: most measured an hour ago, a few silent, a few with open alerts;
    team B with six patients, all with a critical alert."""
    now = clinic.clock.now
    extra = clinic.add_patients("A", TEAM_A_EXTRA)
    for patient_id in ["P-2", *extra]:
        if patient_id not in ("P-1200", "P-1201"):
            clinic.store.add_bp(patient_id, NOW - timedelta(hours=1), 128, 82)
    clinic.store.add_bp(
        "P-1201", NOW - timedelta(days=10), 128, 82
    )  # stopped measuring; P-1, P-1200 never did
    clinic.note_activity()
    clinic.add_alert("P-1229", "severe_bp", "critical")
    clinic.add_alert("P-1228", "severe_bp", "critical")
    clinic.add_alert("P-1228", "hypo_l1", "urgent")
    clinic.add_alert("P-1150", "hypo_l1", "urgent")
    clinic.add_alert("P-1100", "uncontrolled_bp", "routine")
    clinic.add_alert(
        "P-1000",
        "hyper_severe",
        "critical",
        acknowledged_at=now - timedelta(minutes=5),
        acknowledged_by="ivanova",
    )
    clinic.add_alert(
        "P-1050",
        "severe_bp",
        "critical",
        acknowledged_at=now - timedelta(minutes=10),
        acknowledged_by="ivanova",
        cleared_at=now - timedelta(minutes=5),
        closed_at=now - timedelta(minutes=5),
    )
    for patient_id in ["P-9", *clinic.add_patients("B", 5, prefix="P-9")]:
        clinic.add_alert(patient_id, "severe_bp", "critical")
    return clinic


def _team_a(clinic: Clinic) -> list[str]:
    return sorted(["P-1", "P-2", *(f"P-1{n:03d}" for n in range(TEAM_A_EXTRA))])


def test_attention_order_is_over_the_whole_team_and_cut_in_pages_of_100(big: Clinic) -> None:
    head = [
        "P-1228",  # critical, two waiting
        "P-1229",  # critical, one waiting
        "P-1150",  # urgent, one waiting
        "P-1",  # not measuring (never): urgent, oldest reading first
        "P-1200",
        "P-1201",  # not measuring for 10 days
        "P-1100",  # routine
    ]
    expected = head + [p for p in _team_a(big) if p not in head]
    pages = _all_pages(big, "ivanova", "/patients")
    assert [len(_ids(p)) for p in pages] == [100, 100, 32]
    assert [i for p in pages for i in _ids(p)] == expected
    assert "Patients 101–200 of 232, page 2 of 3" in pages[1]
    assert all('<small class="muted" id="population-total">232</small>' in p for p in pages)


def test_counts_are_of_all_open_alerts_of_the_patient(big: Clinic) -> None:
    page = big.client("ivanova").get("/patients").get_data(as_text=True)
    assert "<b>2</b>" in _row(page, "P-1228") and "critical" in _row(page, "P-1228")
    page = big.client("ivanova").get("/patients?sort=patient").get_data(as_text=True)
    in_care = _row(page, "P-1000")  # acknowledged, still open: counted, not waiting
    assert "<b>0</b>" in in_care and "+1 in care" in in_care and "badge sev-" not in in_care
    assert '<td class="num">—</td>' in _row(page, "P-1050")  # its only alert is closed


@pytest.mark.parametrize(
    ("query", "first", "last"),
    [
        ("sort=patient&dir=desc", ["P-1229", "P-1228"], ["P-1", "P-2"]),  # Пациент…, Мария, Иван
        ("sort=patient", ["P-2", "P-1", "P-1000"], ["P-1229"]),
        ("sort=last", ["P-1", "P-1200", "P-1201", "P-1000"], ["P-1229", "P-2"]),
    ],
)
def test_other_orders_run_over_the_whole_team_and_next_keeps_them(
    big: Clinic, query: str, first: list[str], last: list[str]
) -> None:
    pages = _all_pages(big, "ivanova", f"/patients?{query}")
    order = [i for p in pages for i in _ids(p)]
    assert sorted(order) == _team_a(big)
    assert order[: len(first)] == first and order[-len(last) :] == last
    for page in pages[:-1]:
        link = _next(page)
        assert (
            link is not None
            and dict(parse_qsl(query)).items() <= dict(parse_qsl(urlsplit(link).query)).items()
        )


def test_influxdb_is_asked_for_the_patients_of_the_page_only(big: Clinic) -> None:
    page = big.client("ivanova").get("/patients?page=2").get_data(as_text=True)
    assert big.store.recent_asked == [_ids(page)]
    row = _row(page, _ids(page)[0])
    assert "128/82" in row and ">1<" in row  # the 7-day mean and adherence, from InfluxDB


def test_an_order_by_readings_asks_influxdb_for_the_whole_team(big: Clinic) -> None:
    big.store.add_bp("P-1111", NOW - timedelta(hours=2), 200, 120)  # the highest 7-day mean, on page 2 by id
    page = big.client("ivanova").get("/patients?sort=bp").get_data(as_text=True)
    assert _ids(page)[0] == "P-1111" and "164/101" in _row(page, "P-1111")
    assert sorted(big.store.recent_asked[0]) == _team_a(big)


def test_a_page_past_the_last_shows_the_last_and_nonsense_shows_the_first(big: Clinic) -> None:
    client = big.client("ivanova")
    last = client.get("/patients?page=3").get_data(as_text=True)
    assert _ids(client.get("/patients?page=99").get_data(as_text=True)) == _ids(last)
    first = client.get("/patients").get_data(as_text=True)
    assert _ids(client.get("/patients?page=-1").get_data(as_text=True)) == _ids(first)
    assert 'rel="prev"' not in first and 'rel="next"' not in last


def test_another_teams_patients_never_appear_and_each_team_counts_its_own(big: Clinic) -> None:
    ivanova = [i for p in _all_pages(big, "ivanova", "/patients") for i in _ids(p)]
    assert not [i for i in ivanova if i.startswith("P-9")]
    sidorov = _all_pages(big, "sidorov", "/patients")
    assert len(sidorov) == 1 and 'rel="next"' not in sidorov[0]
    assert sorted(_ids(sidorov[0])) == ["P-9", "P-9000", "P-9001", "P-9002", "P-9003", "P-9004"]
    assert '<small class="muted" id="population-total">6</small>' in sidorov[0]


@pytest.mark.parametrize("path", ["/patients", "/patients?page=2", "/patients?sort=bp"])
def test_an_administrator_is_refused_the_overview_as_before(big: Clinic, path: str) -> None:
    response = big.client("admin").get(path)
    assert response.status_code == 403
    assert "data-patient-id" not in response.get_data(as_text=True)


def test_without_influxdb_the_database_still_orders_and_counts(big: Clinic) -> None:
    big.store.down = True
    page = big.client("ivanova").get("/patients").get_data(as_text=True)
    assert "InfluxDB does not answer" in page
    assert _ids(page)[:3] == ["P-1228", "P-1229", "P-1150"]
    assert '<small class="muted" id="population-total">232</small>' in page


def test_a_reading_the_database_has_not_noted_yet_shows_on_the_row(clinic: Clinic) -> None:
    clinic.store.add_bp("P-2", NOW - timedelta(days=10), 130, 80)
    clinic.note_activity()
    clinic.store.add_bp("P-2", NOW - timedelta(minutes=30), 130, 80)  # in InfluxDB, not yet in the database
    row = _row(clinic.client("ivanova").get("/patients").get_data(as_text=True), "P-2")
    assert "not measuring" not in row and "30 min ago" in row


def test_the_view_is_audited_with_the_page(big: Clinic) -> None:
    big.client("ivanova").get("/patients?page=3")
    with big.sessions() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "view_population")).one()
    assert (entry.actor, entry.detail) == ("ivanova", "32 patients shown (page 3 of 3, 232 in all)")
