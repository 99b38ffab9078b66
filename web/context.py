"""What a request works with: the database session, the clock, the staff member, the reading store.

`create_app` puts one `WebServices` into `app.extensions["rpmgw_web"]`; views reach it through the
functions below (flaskr's `get_db()` on `g`, grown a little). The database session of a request is
committed after the view returned (`commit_request`) and rolled back on any error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import wraps
from typing import Any, NoReturn, ParamSpec, TypeVar

from flask import abort, current_app, g, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session, sessionmaker

from alerts.tables import Staff
from alerts.thresholds import Thresholds
from gateway.timeseries.base import ReadingStore
from rpmgw.settings import Settings
from web import audit
from web.audit import Actor, Origin

# Background requests (the inbox's polling) send this header: they do not count as activity, and they
# are answered like API calls (401, not a redirect to the login page).
POLL_HEADER = "X-Rpmgw-Poll"
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class WebServices:
    """The application's long-lived collaborators (injected by `create_app`, faked by nothing)."""

    settings: Settings
    sessions: sessionmaker[Session]
    clock: Callable[[], datetime]
    store_factory: Callable[[], ReadingStore]
    clinic: Thresholds
    _store: ReadingStore | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def store(self) -> ReadingStore:
        """The reading store, opened on first use (InfluxDB may come up after the web server)."""
        with self._lock:
            if self._store is None:
                self._store = self.store_factory()
            return self._store

    def close(self) -> None:
        """Release the store's connections."""
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def services() -> WebServices:
    """The current application's services."""
    found: WebServices = current_app.extensions["rpmgw_web"]
    return found


def db() -> Session:
    """The request's database session (one transaction, committed after the view)."""
    if "db" not in g:
        g.db = services().sessions()
    session: Session = g.db
    return session


def commit() -> None:
    """Commit what the request wrote so far (before a redirect, and before a slow InfluxDB query)."""
    if "db" in g:
        g.db.commit()


def close_request_session(error: BaseException | None) -> None:
    """Teardown: roll back anything uncommitted and close the session."""
    session: Session | None = g.pop("db", None)
    if session is not None:
        if error is not None or session.in_transaction():
            session.rollback()
        session.close()


def now() -> datetime:
    """The request's "now" (one value for the whole request, from the injected clock)."""
    if "now" not in g:
        g.now = services().clock()
    value: datetime = g.now
    return value


def staff_or_none() -> Staff | None:
    """The logged-in staff member, if any."""
    staff: Staff | None = g.get("staff")
    return staff


def current_staff() -> Staff:
    """The logged-in staff member (views behind `requires` only)."""
    staff: Staff | None = g.get("staff")
    if staff is None:
        abort(401)
    return staff


def is_api() -> bool:
    """Whether this request is for the JSON API (or a page's background poll): errors are JSON."""
    return request.path.startswith("/api/") or POLL_HEADER in request.headers


def origin() -> Origin:
    """Where the request came from, for the audit log."""
    return Origin(
        ip=request.remote_addr or "",
        user_agent=request.headers.get("User-Agent", ""),
        request=f"{request.method} {request.full_path.rstrip('?')}",
    )


def record(action: str, **details: Any) -> None:
    """Audit an action of the logged-in staff member in the request's transaction."""
    audit.record(db(), actor=Actor.of(current_staff()), action=action, origin=origin(), now=now(), **details)


def deny(
    *, patient_id: str | None = None, object_type: str | None = None, object_id: object = None
) -> NoReturn:
    """Refuse the request (403) and audit the refusal, committed even though the request fails."""
    session = db()
    session.rollback()
    staff = staff_or_none()
    audit.record(
        session,
        actor=Actor.of(staff) if staff is not None else Actor("-"),
        action="access_denied",
        outcome="denied",
        origin=origin(),
        now=now(),
        patient_id=patient_id,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
    )
    session.commit()
    abort(403)


def requires(*roles: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Only logged-in staff of these roles: others are sent to the login page (401 for the API) or refused."""

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            staff = staff_or_none()
            if staff is None:
                if is_api():
                    response = jsonify(error="authentication required: log in or send a Bearer token")
                    response.status_code = 401
                    abort(response)
                abort(redirect(url_for("auth.login", next=request.full_path.rstrip("?"))))
            if staff.role not in roles:
                deny(object_type="page", object_id=request.endpoint)
            return view(*args, **kwargs)

        return wrapped

    return decorate


def refused(message: str, back: str, status: int = 400) -> ResponseReturnValue:
    """A form that was not accepted: a 4xx with its readable reason and the way back to the form."""
    return render_template("refused.html", code=status, message=message, back=back), status
