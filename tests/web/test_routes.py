"""Every page and API endpoint: allowed for its roles, refused for the others, refused for another care
team's patient, refused without a CSRF token; and a check that no route escapes these tables."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.web.conftest import Clinic, csrf_token
from web.tables import AuditEntry

CLINICAL = ("ivanova", "petrova")  # a doctor and a nurse of team A (P-1's team)
ANY_CLINICAL = ("ivanova", "petrova", "sidorov")  # sidorov is team B's doctor
DOCTOR = ("ivanova",)
ADMIN = ("admin",)
EVERYONE = ("ivanova", "petrova", "sidorov", "admin")
USERS = ("ivanova", "petrova", "sidorov", "admin")


@dataclass(frozen=True)
class Route:
    """One request: who may make it, and what a form/JSON body carries."""

    method: str
    path: str
    allowed: tuple[str, ...]
    form: tuple[tuple[str, str], ...] = ()
    json: bool = False
    ok: tuple[int, ...] = (200, 302)

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


# {own} is an alert of team A's patient P-1; {other} one of team B's patient P-9.
ROUTES = (
    Route("GET", "/alerts", ANY_CLINICAL),
    Route("GET", "/alerts/live", ANY_CLINICAL),
    Route("GET", "/alerts/{own}", CLINICAL),
    Route(
        "POST",
        "/alerts/{own}/acknowledge",
        CLINICAL,
        form=(("reason_code", "contacted_patient"), ("note", "called, rests")),
    ),
    Route("GET", "/patients", ANY_CLINICAL),
    Route("GET", "/patients/P-1", CLINICAL),
    Route("POST", "/patients/P-1/thresholds", DOCTOR, form=(("t_low_sbp", "100"), ("reason", "dizzy at 95"))),
    Route("GET", "/api/v1/alerts", ANY_CLINICAL),
    Route("GET", "/api/v1/alerts/{own}", CLINICAL),
    Route("POST", "/api/v1/alerts/{own}/acknowledge", CLINICAL, json=True),
    Route("GET", "/api/v1/patients", ANY_CLINICAL),
    Route("GET", "/api/v1/patients/P-1/readings", CLINICAL),
    Route("GET", "/admin", ADMIN),
    Route("GET", "/admin/staff", ADMIN),
    Route("GET", "/admin/teams", ADMIN),
    Route("GET", "/admin/patients", ADMIN),
    Route("GET", "/admin/devices", ADMIN),
    Route("GET", "/admin/quarantine", ADMIN),
    Route("GET", "/admin/audit", ADMIN),
    Route(
        "POST",
        "/admin/staff",
        ADMIN,
        form=(
            ("username", "newdoc"),
            ("display_name", "New Doctor"),
            ("phone", "+79990000009"),
            ("role", "doctor"),
            ("password", "a long enough password"),
        ),
    ),
    Route("POST", "/admin/staff/sidorov/active", ADMIN, form=(("active", "1"),)),
    Route("POST", "/admin/staff/sidorov/password", ADMIN, form=(("password", "another long password"),)),
    Route("POST", "/admin/teams", ADMIN, form=(("name", "C"),)),
    Route("POST", "/admin/teams/{team_a}/members", ADMIN, form=(("username", "sidorov"),)),
    Route("POST", "/admin/teams/{team_a}/members/petrova/remove", ADMIN),
    Route(
        "POST",
        "/admin/patients",
        ADMIN,
        form=(("patient_id", "P-5"), ("display_name", "New"), ("phone", "+79991112233")),
    ),
    Route("POST", "/admin/patients/P-2/team", ADMIN, form=(("team", "B"),)),
    Route("POST", "/admin/devices/enrol", ADMIN, form=(("device_id", "gl-77"), ("patient_id", "P-2"))),
    Route("POST", "/admin/devices/bp-P-2/end", ADMIN),
    Route("GET", "/account", EVERYONE),
    Route("POST", "/account/language", EVERYONE, form=(("language", "ru"),)),
    Route(
        "POST",
        "/account/password",
        EVERYONE,
        form=(
            ("current", "correct horse battery"),
            ("new", "a new long password"),
            ("repeat", "a new long password"),
        ),
    ),
    Route("POST", "/account/tokens", EVERYONE, form=(("name", "export"),)),
    Route("POST", "/account/tokens/999/revoke", EVERYONE),
)
# Another care team's objects: refused for team A's staff (and audited).
FOREIGN = (
    Route("GET", "/alerts/{other}", CLINICAL),
    Route(
        "POST",
        "/alerts/{other}/acknowledge",
        CLINICAL,
        form=(("reason_code", "contacted_patient"), ("note", "x")),
    ),
    Route("GET", "/patients/P-9", CLINICAL),
    Route("POST", "/patients/P-9/thresholds", DOCTOR, form=(("t_low_sbp", "100"), ("reason", "x"))),
    Route("GET", "/api/v1/alerts/{other}", CLINICAL),
    Route("POST", "/api/v1/alerts/{other}/acknowledge", CLINICAL, json=True),
    Route("GET", "/api/v1/patients/P-9/readings", CLINICAL),
)
PUBLIC = ("/login", "/healthz", "/metrics", "/api/v1/openapi.json", "/api/v1/docs", "/static/app.css")
# Not pages of ours: Twilio's signed webhooks (tested by their authors) and the start page's redirect;
# /readyz (no login, answers 503 without InfluxDB) is tested in tests/integration/test_observability.py.
ELSEWHERE = ("/twilio/", "/logout", "/", "/readyz")


def _path(clinic: Clinic, route: Route) -> str:
    team_a = clinic.team_id("A")
    return route.path.format(own=clinic.alerts["own"], other=clinic.alerts["other"], team_a=team_a)


def _send(clinic: Clinic, client: FlaskClient, route: Route, *, csrf: bool = True) -> int:
    path = _path(clinic, route)
    token = csrf_token(client, "/account") if csrf else ""
    if route.method == "GET":
        return client.get(path).status_code
    if route.json:
        headers = {"X-CSRFToken": token} if csrf else {}
        body = {"reason_code": "contacted_patient", "note": "called"}
        return client.post(path, json=body, headers=headers).status_code
    data = dict(route.form)
    if csrf:
        data["csrf_token"] = token
    return client.post(path, data=data).status_code


@pytest.fixture
def seeded(clinic: Clinic) -> Clinic:
    clinic.alerts["own"] = clinic.add_alert("P-1")
    clinic.alerts["other"] = clinic.add_alert("P-9")
    return clinic


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
@pytest.mark.parametrize("username", USERS)
def test_each_route_is_allowed_for_its_roles_and_refused_for_the_others(
    seeded: Clinic, route: Route, username: str
) -> None:
    status = _send(seeded, seeded.client(username), route)
    if username in route.allowed:
        assert status in route.ok, f"{username} should be allowed {route.id}, got {status}"
    else:
        assert status == 403, f"{username} should be refused {route.id}, got {status}"


@pytest.mark.parametrize("route", FOREIGN, ids=lambda r: r.id)
def test_another_care_teams_patient_is_refused_and_the_attempt_audited(seeded: Clinic, route: Route) -> None:
    for username in route.allowed:
        assert _send(seeded, seeded.client(username), route) == 403
    with seeded.sessions() as session:
        denied = session.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "access_denied", AuditEntry.actor.in_(route.allowed)
            )
        ).all()
    assert len(denied) == len(route.allowed)
    assert all(e.outcome == "denied" and e.patient_id == "P-9" for e in denied)


def test_the_other_team_sees_its_own_patient(seeded: Clinic) -> None:
    client = seeded.client("sidorov")
    assert client.get("/patients/P-9").status_code == 200
    assert client.get(f"/alerts/{seeded.alerts['other']}").status_code == 200
    assert client.get("/patients/P-1").status_code == 403


@pytest.mark.parametrize("route", [r for r in ROUTES + FOREIGN if r.method == "POST"], ids=lambda r: r.id)
def test_every_form_and_api_post_without_a_csrf_token_is_refused(seeded: Clinic, route: Route) -> None:
    username = route.allowed[0]
    assert _send(seeded, seeded.client(username), route, csrf=False) == 400


@pytest.mark.parametrize("route", ROUTES + FOREIGN, ids=lambda r: r.id)
def test_anonymous_requests_go_to_the_login_page_or_get_401(seeded: Clinic, route: Route) -> None:
    client = seeded.client()
    path = _path(seeded, route)
    if route.method == "POST":
        # Without a session there is no CSRF token either: refused before anything else.
        assert client.post(path, data=dict(route.form)).status_code == 400
        return
    response = client.get(path)
    if path.startswith("/api/"):
        assert response.status_code == 401
        assert response.is_json
    else:
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")


@pytest.mark.parametrize("path", PUBLIC)
def test_public_paths_need_no_login(clinic: Clinic, path: str) -> None:
    assert clinic.client().get(path).status_code == 200


def test_no_route_escapes_the_tables(clinic: Clinic) -> None:
    covered = {re.sub(r"\{[a-z_]+\}", "X", r.path) for r in ROUTES + FOREIGN}
    covered |= {re.sub(r"/P-\d", "/X", p) for p in covered}
    covered |= {
        p.replace("/999/", "/X/").replace("/sidorov/", "/X/").replace("/petrova/", "/X/") for p in covered
    }
    covered |= {p.replace("/bp-P-2/", "/X/").replace("/X/", "/X/") for p in covered}
    covered |= set(PUBLIC)
    missing = []
    for rule in clinic.app.url_map.iter_rules():
        path = re.sub(r"<[^>]+>", "X", rule.rule)
        if rule.endpoint == "static" or path.startswith(ELSEWHERE[0]) or path in ELSEWHERE:
            continue
        if path not in covered:
            missing.append(rule.rule)
    assert missing == [], f"routes without access tests: {missing}"


def test_api_bearer_token_works_without_csrf_and_follows_the_same_rules(seeded: Clinic) -> None:
    client = seeded.client("ivanova")
    token = csrf_token(client, "/account")
    client.post("/account/tokens", data={"name": "rmis", "csrf_token": token})
    page = client.get("/account").get_data(as_text=True)
    secret = re.search(r'id="new-token">(rpm_[^<]+)<', page)
    assert secret is not None
    api = seeded.client()
    headers = {"Authorization": f"Bearer {secret.group(1)}"}
    assert api.get("/api/v1/alerts", headers=headers).status_code == 200
    assert api.get("/api/v1/patients/P-9/readings", headers=headers).status_code == 403
    own = seeded.alerts["own"]
    response = api.post(
        f"/api/v1/alerts/{own}/acknowledge",
        json={"reason_code": "contacted_patient", "note": "called"},
        headers=headers,
    )
    assert response.status_code == 200
    assert response.get_json()["acknowledged_by"] == "ivanova"
    assert api.get("/api/v1/alerts", headers={"Authorization": "Bearer rpm_forged"}).status_code == 401
    # The token does not open the pages: they need the login session.
    assert api.get("/alerts", headers=headers).status_code == 302
