"""Login, throttling, automatic logoff, logout, cookie flags, security headers, password storage."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from sqlalchemy import select

from tests.web.conftest import PASSWORD, Clinic, csrf_token, login
from web.security import CSP
from web.tables import AuditEntry, StaffCredential


def _login(clinic: Clinic, username: str, password: str, ip: str = "10.0.0.1") -> int:
    client = clinic.app.test_client()
    token = csrf_token(client)
    response = client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token},
        environ_base={"REMOTE_ADDR": ip},
    )
    return response.status_code


def _audit(clinic: Clinic, action: str) -> list[AuditEntry]:
    with clinic.sessions() as session:
        return list(
            session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id))
        )


def test_login_starts_a_session_and_is_audited_with_the_address(clinic: Clinic) -> None:
    client = clinic.app.test_client()
    token = csrf_token(client)
    response = client.post(
        "/login",
        data={"username": "ivanova", "password": PASSWORD, "csrf_token": token, "next": "/patients"},
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
        headers={"User-Agent": "TestBrowser/1"},
    )
    assert response.status_code == 302 and response.headers["Location"] == "/patients"
    assert client.get("/patients").status_code == 200
    entry = _audit(clinic, "login")[-1]
    assert (entry.actor, entry.outcome, entry.ip, entry.user_agent) == (
        "ivanova",
        "ok",
        "192.0.2.7",
        "TestBrowser/1",
    )


@pytest.mark.parametrize(
    ("username", "password", "why"),
    [
        ("ivanova", "wrong password!", "wrong password"),
        ("nobody", PASSWORD, "unknown user or no password"),
    ],
)
def test_a_failed_login_says_nothing_about_why_but_the_audit_log_does(
    clinic: Clinic, username: str, password: str, why: str
) -> None:
    client = clinic.app.test_client()
    token = csrf_token(client)
    response = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert response.status_code == 401
    assert "Неверное имя пользователя или пароль." in response.get_data(as_text=True)  # Russian by default
    entry = _audit(clinic, "login")[-1]
    assert (entry.actor, entry.outcome, entry.detail) == (username, "failed", why)


def test_an_open_redirect_after_login_is_refused(clinic: Clinic) -> None:
    client = clinic.app.test_client()
    token = csrf_token(client)
    response = client.post(
        "/login",
        data={"username": "ivanova", "password": PASSWORD, "csrf_token": token, "next": "//evil.example/x"},
    )
    assert response.headers["Location"] == "/"


def test_logins_are_throttled_per_username_then_allowed_again_after_the_window(clinic: Clinic) -> None:
    limit = clinic.settings.web.login_max_failures
    for _ in range(limit):
        assert _login(clinic, "ivanova", "wrong password!") == 401
    # Even the right password is refused while throttled, and the refusal is audited.
    assert _login(clinic, "ivanova", PASSWORD) == 401
    assert _audit(clinic, "login")[-1].outcome == "denied"
    clinic.clock.advance(minutes=clinic.settings.web.login_window_minutes + 1)
    assert _login(clinic, "ivanova", PASSWORD) == 302


def test_logins_are_throttled_per_address_across_usernames(clinic: Clinic) -> None:
    limit = 4 * clinic.settings.web.login_max_failures
    for i in range(limit):
        _login(clinic, f"guess{i}", "whatever password", ip="203.0.113.9")
    assert _login(clinic, "ivanova", PASSWORD, ip="203.0.113.9") == 401
    assert _login(clinic, "ivanova", PASSWORD, ip="203.0.113.10") == 302


def test_a_deactivated_account_cannot_log_in(clinic: Clinic) -> None:
    from alerts import staff as staff_admin

    with clinic.sessions.begin() as session:
        staff_admin.set_staff_active(session, "petrova", False)
    assert _login(clinic, "petrova", PASSWORD) == 401
    assert _audit(clinic, "login")[-1].detail == "account deactivated"


def test_automatic_logoff_after_the_timeout_without_activity(clinic: Clinic) -> None:
    client = clinic.client("ivanova")
    minutes = clinic.settings.web.session_timeout_minutes
    clinic.clock.advance(minutes=minutes - 1)
    assert client.get("/alerts").status_code == 200  # activity: the clock restarts
    clinic.clock.advance(minutes=minutes - 1)
    assert client.get("/alerts").status_code == 200
    clinic.clock.advance(minutes=minutes + 1)
    response = client.get("/alerts")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    assert [e.actor for e in _audit(clinic, "session_timeout")] == ["ivanova"]
    # The session is over for good, even if the clock went back.
    clinic.clock.advance(minutes=-2 * minutes)
    assert client.get("/alerts").status_code == 302


def test_background_polling_does_not_keep_a_session_alive(clinic: Clinic) -> None:
    client = clinic.client("ivanova")
    minutes = clinic.settings.web.session_timeout_minutes
    for _ in range(3):
        clinic.clock.advance(minutes=minutes // 2)
        status = client.get("/alerts/live", headers={"X-Rpmgw-Poll": "1"}).status_code
    assert status == 401


def test_logout_ends_the_session_on_the_server(clinic: Clinic) -> None:
    client = clinic.client("ivanova")
    with client.session_transaction() as cookie_session:
        stolen = dict(cookie_session)
    token = csrf_token(client, "/account")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    replay = clinic.app.test_client()
    with replay.session_transaction() as cookie_session:
        cookie_session.update(stolen)
    assert replay.get("/alerts").status_code == 302


def test_changing_the_password_ends_other_sessions(clinic: Clinic) -> None:
    other = clinic.client("ivanova")
    client = clinic.client("ivanova")
    token = csrf_token(client, "/account")
    client.post(
        "/account/password",
        data={
            "current": PASSWORD,
            "new": "a brand new secret",
            "repeat": "a brand new secret",
            "csrf_token": token,
        },
    )
    assert client.get("/alerts").status_code == 200
    assert other.get("/alerts").status_code == 302
    login(clinic.app.test_client(), "ivanova", "a brand new secret")


def test_passwords_are_stored_as_scrypt_hashes(clinic: Clinic) -> None:
    with clinic.sessions() as session:
        hashes = list(session.scalars(select(StaffCredential.password_hash)))
    assert hashes and all(h.startswith("scrypt:") and PASSWORD not in h for h in hashes)


@pytest.mark.parametrize("secure", [False, True])
def test_session_cookie_flags(make_clinic: Callable[..., Clinic], secure: bool) -> None:
    clinic = make_clinic(cookie_secure=secure)
    base = "https://localhost" if secure else "http://localhost"
    client = clinic.app.test_client()
    page = client.get("/login", base_url=base).get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    response = client.post(
        "/login",
        data={"username": "ivanova", "password": PASSWORD, "csrf_token": token},
        base_url=base,
        headers={"Referer": f"{base}/login"},
    )
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert ("Secure" in cookie) is secure


@pytest.mark.parametrize("path", ["/login", "/alerts", "/api/v1/openapi.json", "/static/app.js"])
def test_security_headers_on_every_response(clinic: Clinic, path: str) -> None:
    response = clinic.client("ivanova").get(path)
    assert response.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if not path.startswith("/static/"):
        assert response.headers["Cache-Control"] == "no-store"


def test_no_template_has_an_inline_script_or_style() -> None:
    from pathlib import Path

    import web

    templates = Path(web.__file__).parent / "templates"
    for template in templates.rglob("*.html"):
        text = template.read_text(encoding="utf-8")
        assert " style=" not in text, f"{template.name}: inline style (CSP style-src 'self')"
        assert not re.search(r"\son[a-z]+=", text), f"{template.name}: inline event handler"
        for chunk in text.split("<script")[1:]:
            head = chunk.split(">", 1)[0]
            assert "src=" in head or 'type="application/json"' in head, f"{template.name}: inline script"


def test_the_secret_key_is_generated_once_and_kept_in_the_data_dir(tmp_path: object) -> None:
    from pathlib import Path

    from rpmgw.settings import load_settings
    from web.security import SECRET_KEY_FILE, secret_key

    assert isinstance(tmp_path, Path)
    settings = load_settings(data_dir=tmp_path)
    first = secret_key(settings)
    assert secret_key(settings) == first and len(first) >= 32
    assert (tmp_path / SECRET_KEY_FILE).stat().st_mode & 0o077 == 0
    assert secret_key(load_settings(data_dir=tmp_path, web={"secret_key": "k" * 32})) == "k" * 32


def test_a_short_secret_key_is_refused_at_start_up() -> None:
    from rpmgw.errors import SettingsError
    from rpmgw.settings import load_settings

    with pytest.raises(SettingsError, match="RPMGW_WEB__SECRET_KEY must have at least 32 characters"):
        load_settings(web={"secret_key": "short"})
