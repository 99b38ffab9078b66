"""The doctors' web application: alert inbox, patients, administration, JSON API, Twilio webhooks.

    app = create_app()                       # settings from the environment
    app = create_app(settings, store=..., clock=...)   # tests inject the reading store and the clock

Blueprints, one per concern: `auth` (login, logout, account), `alerts` (the inbox and acknowledgement),
`patients` (population overview and the patient page), `admin`, `api` (/api/v1, OpenAPI) and Twilio's
`webhooks`. Served by waitress (`rpmgw web`) behind a TLS-terminating proxy (docs/web.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask import Flask, Response, g, jsonify, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from alerts.tables import Staff
from alerts.thresholds import load_clinic_thresholds
from gateway import metrics
from gateway.health import database_check, influx_check, readiness
from gateway.timeseries import open_store
from gateway.timeseries.base import ReadingStore
from rpmgw.db import make_engine, session_factory
from rpmgw.models import utcnow
from rpmgw.settings import Settings, load_settings
from web import accounts, audit, i18n, security
from web.audit import Actor
from web.context import (
    POLL_HEADER,
    WebServices,
    close_request_session,
    commit,
    db,
    is_api,
    now,
    origin,
    services,
)
from web.tables import WebSession

# Probes and scrapes: no login, no CSRF (put /metrics behind the proxy's access rules in production).
UNAUTHENTICATED = ("static", "healthz", "readyz", "prometheus_metrics")


def create_app(
    settings: Settings | None = None,
    *,
    store: ReadingStore | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Flask:
    """The Flask application; settings default to the environment, the store to InfluxDB from them."""
    settings = settings or load_settings()
    app = Flask(__name__)
    if settings.web.trusted_proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app,
            x_for=settings.web.trusted_proxies,
            x_proto=settings.web.trusted_proxies,
            x_host=settings.web.trusted_proxies,
        )
    engine = make_engine(settings.database_url)
    sessions = session_factory(engine)
    store_factory: Callable[[], ReadingStore] = (
        (lambda: store) if store is not None else (lambda: open_store(settings.influx))
    )
    app.extensions["rpmgw_web"] = WebServices(
        settings=settings,
        sessions=sessions,
        clock=clock or utcnow,
        store_factory=store_factory,
        clinic=load_clinic_thresholds(settings.alerts.thresholds_file),
    )
    # What web.webhooks (Twilio) reads.
    app.config["RPMGW_SETTINGS"] = settings
    app.extensions["rpmgw_sessions"] = sessions

    security.configure(app, settings)
    i18n.init_app(app)
    _register_blueprints(app)
    app.before_request(_identify)
    app.after_request(_commit)
    app.teardown_request(close_request_session)
    app.register_error_handler(HTTPException, _http_error)
    app.context_processor(_template_globals)

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify(status="ok"), 200

    readiness_checks = {
        "database": database_check(engine),
        "influxdb": influx_check(settings.influx.url),
    }

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        ready, results = readiness(readiness_checks)
        return jsonify(status="ready" if ready else "not ready", checks=results), 200 if ready else 503

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

    app.before_request(_start_timer)
    app.after_request(_count_request)

    @app.get("/")
    def home() -> ResponseReturnValue:
        staff = g.get("staff")
        if staff is None:
            return redirect(url_for("auth.login"))
        if staff.role == "admin":
            return redirect(url_for("admin.index"))
        return redirect(url_for("alerts.inbox"))

    return app


def _register_blueprints(app: Flask) -> None:
    from web.admin import admin
    from web.api import api
    from web.auth import auth
    from web.inbox import inbox
    from web.patients import patients
    from web.webhooks import webhooks

    for blueprint in (auth, inbox, patients, admin, api, webhooks):
        app.register_blueprint(blueprint)


def _identify() -> ResponseReturnValue | None:
    """Refuse a forged form first, then find out who is asking (login session or API token)."""
    if request.endpoint in UNAUTHENTICATED or request.blueprint == "twilio_webhooks":
        return None
    security.check_csrf()
    authorization = request.headers.get("Authorization", "")
    if is_api() and authorization.startswith("Bearer "):
        staff = accounts.resolve_api_token(db(), authorization.removeprefix("Bearer ").strip(), now=now())
        if staff is None:
            response = jsonify(error="invalid or revoked API token")
            response.status_code = 401
            return response
        g.staff = staff
        g.auth = "token"
        return None
    token = session.get("sid")
    if not isinstance(token, str):
        return None
    settings = services().settings.web
    staff, ended = accounts.resolve_session(
        db(),
        token,
        now=now(),
        timeout=timedelta(minutes=settings.session_timeout_minutes),
        touch=POLL_HEADER not in request.headers,
    )
    if staff is None:
        if ended == "timeout":
            _audit_timeout(token)
        session.pop("sid", None)
        g.logged_off = ended
        return None
    g.staff = staff
    g.auth = "session"
    return None


def _start_timer() -> None:
    g.request_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    endpoint = request.endpoint or "unmatched"
    metrics.WEB_REQUESTS.labels(endpoint=endpoint, status=str(response.status_code)).inc()
    started = g.get("request_started")
    if started is not None:
        metrics.WEB_SECONDS.labels(endpoint=endpoint).observe(time.perf_counter() - started)
    return response


def _audit_timeout(token: str) -> None:
    row = (
        db().scalars(select(WebSession).where(WebSession.token_hash == accounts.digest(token))).one_or_none()
    )
    if row is None:
        return
    staff = db().get(Staff, row.staff_id)
    if staff is not None:
        audit.record(db(), actor=Actor.of(staff), action="session_timeout", origin=origin(), now=now())


def _commit(response: Response) -> Response:
    if response.status_code < 500:
        commit()
    return response


def _http_error(error: HTTPException) -> ResponseReturnValue:
    if error.response is not None:  # abort(redirect(...)) / abort(jsonify(...))
        return error.response
    code = error.code or 500
    if is_api():
        return jsonify(error=error.description or error.name), code
    return render_template("error.html", code=code, error=error), code


def _template_globals() -> dict[str, Any]:
    from web.access import sees_clinical_data
    from web.inbox import rule_title, severity_counts

    settings = services().settings
    staff = g.get("staff")
    extra: dict[str, Any] = {"rule_title": rule_title}
    if staff is not None and sees_clinical_data(staff):
        extra["header_counts"] = severity_counts(db(), staff)
    return extra | {
        "staff": g.get("staff"),
        "now": now(),
        "poll_seconds": settings.web.poll_seconds,
        "session_timeout_minutes": settings.web.session_timeout_minutes,
        "clinic_timezone": settings.timezone,
    }
