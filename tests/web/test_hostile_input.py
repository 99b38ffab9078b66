"""Every form and API endpoint fed missing, oversized and malicious fields: refused with a readable
message, or stored harmlessly and shown escaped; never a server error, never another team's data."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from rpmgw.models import Patient
from tests.web.conftest import Clinic, csrf_token
from tests.web.test_routes import ROUTES, Route, _path

SCRIPT = '<script>alert("x")</script>'
SQL = ["'; DROP TABLE patients; --", "' OR '1'='1", "1; DELETE FROM audit_log"]
OVERSIZED = "x" * 100_000
FORMS = [route for route in ROUTES if route.method == "POST" and not route.json]
FORMS_WITH_FIELDS = [route for route in FORMS if route.form]
# An absent field means something on these forms: an unticked box (deactivate), no team, default name.
MISSING_MEANS_DEFAULT = ("/admin/staff/sidorov/active", "/admin/patients/P-2/team", "/account/tokens")
# Pages a clinician or the admin may see, where a stored value would be shown.
PAGES = [route for route in ROUTES if route.method == "GET" and "{" not in route.path]


@pytest.fixture
def seeded(clinic: Clinic) -> Clinic:
    clinic.alerts["own"] = clinic.add_alert("P-1")
    clinic.alerts["other"] = clinic.add_alert("P-9")
    return clinic


def _submit(clinic: Clinic, route: Route, data: dict[str, str]) -> tuple[FlaskClient, TestResponse]:
    client = clinic.client(route.allowed[0])
    token = csrf_token(client, "/account")
    response = client.post(_path(clinic, route), data={**data, "csrf_token": token}, follow_redirects=True)
    return client, response


def _refused_readably(response: TestResponse) -> bool:
    """A 4xx with a message a person can read."""
    text = response.get_data(as_text=True)
    return 400 <= response.status_code < 500 and len(re.sub(r"<[^>]+>", " ", text).split()) >= 3


def _variants(route: Route) -> Iterator[tuple[str, dict[str, str]]]:
    fields = dict(route.form)
    for name in fields:
        yield f"{name}=oversized", {**fields, name: OVERSIZED}
        yield f"{name}=script", {**fields, name: SCRIPT}
        for i, fragment in enumerate(SQL):
            yield f"{name}=sql{i}", {**fields, name: fragment}


CASES = [(route, label, data) for route in FORMS_WITH_FIELDS for label, data in _variants(route)]


@pytest.mark.parametrize(
    "route", [r for r in FORMS_WITH_FIELDS if r.path not in MISSING_MEANS_DEFAULT], ids=lambda r: r.id
)
def test_a_form_without_its_fields_is_refused_readably(seeded: Clinic, route: Route) -> None:
    _, response = _submit(seeded, route, {})
    assert response.status_code < 500
    assert _refused_readably(response), (
        f"{route.id}: {response.status_code} {response.get_data(as_text=True)[:800]}"
    )


@pytest.mark.parametrize(("route", "label", "data"), CASES, ids=[f"{r.id} {label}" for r, label, _ in CASES])
def test_hostile_fields_never_break_a_form_or_reach_a_page_unescaped(
    seeded: Clinic, route: Route, label: str, data: dict[str, str]
) -> None:
    with seeded.sessions() as session:
        patients_before = session.scalar(select(func.count()).select_from(Patient)) or 0

    _, response = _submit(seeded, route, data)

    assert response.status_code < 500, response.get_data(as_text=True)[:800]
    if label.endswith("oversized"):
        assert _refused_readably(response), f"{response.status_code} {response.get_data(as_text=True)[:800]}"
    for user in ("ivanova", "admin"):
        client = seeded.client(user)
        for page in PAGES:
            if user in page.allowed:
                text = client.get(_path(seeded, page)).get_data(as_text=True)
                assert SCRIPT not in text, f"{page.path} shows the script unescaped"
    with seeded.sessions() as session:
        # The SQL fragments are data: the tables are all there, at most one new patient.
        assert session.scalar(select(func.count()).select_from(Patient)) in (
            patients_before,
            patients_before + 1,
        )


def test_a_body_over_the_limit_gets_413(seeded: Clinic) -> None:
    client = seeded.client("admin")
    token = csrf_token(client, "/account")
    response = client.post("/admin/teams", data={"name": "y" * (2 * 1024 * 1024), "csrf_token": token})
    assert response.status_code == 413
    text = response.get_data(as_text=True)
    # Refused before the login is looked at: the page is in the browser's language (default Russian).
    assert "The form is too large" in text or "Форма слишком велика" in text, text[-600:]


@pytest.mark.parametrize(
    "body",
    [
        None,
        {},
        {"reason_code": SCRIPT, "note": "x"},
        {"reason_code": "contacted_patient", "note": OVERSIZED},
        {"reason_code": ["contacted_patient"], "note": {"$ne": 1}},
        {"reason_code": SQL[0], "note": SQL[1]},
    ],
    ids=["no body", "empty", "script code", "oversized note", "wrong types", "sql"],
)
def test_the_api_acknowledgement_refuses_bad_bodies_with_a_json_message(seeded: Clinic, body: object) -> None:
    client = seeded.client("ivanova")
    token = csrf_token(client, "/account")
    response = client.post(
        f"/api/v1/alerts/{seeded.alerts['own']}/acknowledge", json=body, headers={"X-CSRFToken": token}
    )
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    payload = response.get_json()
    assert isinstance(payload, dict) and isinstance(payload.get("error"), str) and payload["error"]
    assert SCRIPT not in response.get_data(as_text=True) or response.mimetype == "application/json"


@pytest.mark.parametrize(
    "query",
    [
        "from=<script>&to=2026-11-28T08:00:00Z",
        "from=' OR 1=1 --",
        "type=blood_pressure' OR '1'='1",
        "from=" + "9" * 5000,
        "patient_id=P-9",
    ],
)
def test_api_reading_queries_refuse_hostile_parameters(seeded: Clinic, query: str) -> None:
    response = seeded.client("ivanova").get(f"/api/v1/patients/P-1/readings?{query}")
    assert response.status_code < 500
    if response.status_code == 200:
        # Accepted only when the parameter is ignored: P-1's readings, never P-9's.
        assert "P-9" not in response.get_data(as_text=True)
    else:
        assert 400 <= response.status_code < 500 and response.get_json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/patients/P-9/readings",
        "/api/v1/patients/P-1%27%20OR%20%271%27%3D%271/readings",
        "/api/v1/patients/%3Cscript%3E/readings",
        "/patients/P-9",
        "/patients/P-1' OR '1'='1",
        "/patients/<script>",
        "/alerts/99999999",
    ],
)
def test_other_or_made_up_patient_ids_are_refused(seeded: Clinic, path: str) -> None:
    response = seeded.client("ivanova").get(path)
    assert response.status_code in (403, 404), response.status_code
    assert SCRIPT[:8] not in response.get_data(as_text=True)
    assert "<script>" not in response.get_data(as_text=True).replace('<script src="', "").replace(
        '<script type="application/json"', ""
    )


@pytest.mark.parametrize(
    "query", ["severity=<script>", "patient=' OR '1'='1", "state=" + "z" * 5000, "rule=%00"]
)
def test_inbox_filters_with_hostile_values_are_harmless(seeded: Clinic, query: str) -> None:
    response = seeded.client("ivanova").get(f"/alerts?{query}")
    assert response.status_code < 500
    assert "<script>" not in re.sub(r"<script (src|type)=", "", response.get_data(as_text=True))
