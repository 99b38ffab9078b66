"""Cookies, CSRF, security headers and the secret key.

CSRF: every state-changing request carries the session's token (a hidden form field, or the
X-CSRFToken header for scripts); API calls authenticated by a Bearer token need none (no cookie is
involved), and Twilio's signed webhooks are exempt. The Content-Security-Policy allows no inline
script: all JavaScript is in web/static/.
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Final

from flask import Flask, Response, request
from flask_babel import gettext
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import BadRequest

from rpmgw.settings import Settings

SECRET_KEY_FILE: Final = "web-secret-key"
CSP: Final = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# No form field or JSON string of ours needs more (notes, reasons, names); longer ones are refused
# before any handler sees them, so that no column overflows into a server error.
MAX_FIELD_CHARS: Final = 2000

csrf = CSRFProtect()


def secret_key(settings: Settings) -> str:
    """RPMGW_WEB__SECRET_KEY, else a random key created once and kept in RPMGW_DATA_DIR (mode 600)."""
    if settings.web.secret_key is not None:
        return settings.web.secret_key.get_secret_value()
    path = Path(settings.data_dir) / SECRET_KEY_FILE
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    # O_EXCL: two processes starting together keep the first one's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(key + "\n")
    return key


def configure(app: Flask, settings: Settings) -> None:
    """Cookie flags, CSRF protection and the response headers."""
    app.config.update(
        SECRET_KEY=secret_key(settings),
        SESSION_COOKIE_NAME="rpmgw_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.web.cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.web.session_timeout_minutes),
        # Checked by us in `check_csrf` (API Bearer calls and webhooks need none).
        WTF_CSRF_CHECK_DEFAULT=False,
        # The login session's own timeout bounds the token's life.
        WTF_CSRF_TIME_LIMIT=None,
        WTF_CSRF_SSL_STRICT=settings.web.cookie_secure,
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    csrf.init_app(app)
    app.before_request(check_field_sizes)
    app.after_request(add_headers)


class FieldTooLong(BadRequest):
    """A form field or JSON string over MAX_FIELD_CHARS; the description names the field."""

    readable = True


def check_field_sizes() -> None:
    """Refuse (400, with the field's name) any form field or JSON string longer than MAX_FIELD_CHARS."""
    if request.method not in UNSAFE_METHODS:
        return
    fields: list[tuple[str, object]] = list(request.form.items(multi=True))
    if request.is_json:
        fields += _json_strings(request.get_json(silent=True), "")
    for name, value in fields:
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            raise FieldTooLong(
                gettext(
                    "The field “%(name)s” is too long: at most %(n)d characters.",
                    name=name,
                    n=MAX_FIELD_CHARS,
                )
            )


def _json_strings(value: object, path: str) -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [
            item for key, inner in value.items() for item in _json_strings(inner, f"{path}.{key}".strip("."))
        ]
    if isinstance(value, list):
        return [
            item for index, inner in enumerate(value) for item in _json_strings(inner, f"{path}[{index}]")
        ]
    return [(path, value)]


def check_csrf() -> None:
    """Refuse a state-changing request without the session's CSRF token (400)."""
    if request.method not in UNSAFE_METHODS:
        return
    if request.blueprint == "twilio_webhooks":
        return
    if request.path.startswith("/api/") and request.headers.get("Authorization", "").startswith("Bearer "):
        return
    csrf.protect()


def add_headers(response: Response) -> Response:
    """Security headers on every response; no caching of anything but static files."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if request.endpoint != "static":
        # Patients' data must not stay in a shared computer's browser cache.
        response.headers["Cache-Control"] = "no-store"
    return response
