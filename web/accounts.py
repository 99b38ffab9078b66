"""Staff accounts of the web application: passwords, logins with throttling, sessions and API tokens.

Passwords are stored as scrypt hashes (werkzeug). A login session and an API token are random strings
held by the client; only their SHA-256 is stored, so a copy of the database logs nobody in. Every
function works inside the caller's transaction (it flushes, it never commits).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from alerts.tables import Staff
from rpmgw.settings import WebSettings
from web import audit
from web.audit import Actor, Origin
from web.errors import InvalidCredentials, LoginThrottled, WeakPassword
from web.tables import ApiToken, StaffCredential, WebSession

MIN_PASSWORD_LENGTH: Final = 10
MAX_PASSWORD_LENGTH: Final = 256
API_TOKEN_PREFIX: Final = "rpm_"
# Checked against when the username is unknown, so that a wrong username costs as long as a wrong password.
_DUMMY_HASH: Final = generate_password_hash("not a password of anyone", method="scrypt")
# A session's last_seen_at is written at most this often (every click would be a write otherwise).
_TOUCH_EVERY: Final = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class NewApiToken:
    """A freshly created API token: `secret` is shown once and never stored."""

    id: int
    name: str
    secret: str


def hash_password(password: str) -> str:
    """The scrypt hash of a password (salted; the parameters are part of the hash)."""
    return generate_password_hash(password, method="scrypt")


def check_password_strength(password: str, *, username: str) -> None:
    """Refuse a password that is too short, too long, or contains the username; raises `WeakPassword`."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"a password may have at most {MAX_PASSWORD_LENGTH} characters")
    if username and username.lower() in password.lower():
        raise WeakPassword("a password must not contain the username")


def set_password(session: Session, staff: Staff, password: str, *, now: datetime) -> None:
    """Give the staff member a (new) password; their open sessions end (a stolen one stops working)."""
    check_password_strength(password, username=staff.username)
    credential = session.get(StaffCredential, staff.id)
    if credential is None:
        session.add(StaffCredential(staff_id=staff.id, password_hash=hash_password(password), changed_at=now))
    else:
        credential.password_hash = hash_password(password)
        credential.changed_at = now
    end_sessions_of(session, staff.id, now=now, reason="password_changed")
    session.flush()


def has_password(session: Session, staff_id: int) -> bool:
    """Whether the staff member can log in at all."""
    return session.get(StaffCredential, staff_id) is not None


def authenticate(
    session: Session, username: str, password: str, *, origin: Origin, now: datetime, settings: WebSettings
) -> Staff:
    """The active staff member with this username and password; every attempt is audited.

    Raises `LoginThrottled` when this username (or this address) failed too often within
    `settings.login_window_minutes`, else `InvalidCredentials` for anything wrong, without saying what.
    """
    username = username.strip()
    since = now - timedelta(minutes=settings.login_window_minutes)
    if (
        audit.failed_logins(session, since=since, username=username) >= settings.login_max_failures
        or audit.failed_logins(session, since=since, ip=origin.ip) >= 4 * settings.login_max_failures
    ):
        audit.record(
            session,
            actor=Actor(username),
            action="login",
            outcome="denied",
            origin=origin,
            now=now,
            detail="throttled: too many failed logins",
        )
        raise LoginThrottled(f"too many failed logins: try again in {settings.login_window_minutes} minutes")
    found = session.execute(
        select(Staff, StaffCredential.password_hash)
        .join(StaffCredential, StaffCredential.staff_id == Staff.id)
        .where(Staff.username == username)
    ).one_or_none()
    stored_hash = _DUMMY_HASH if found is None else found[1]
    password_ok = check_password_hash(stored_hash, password)
    if found is None or not password_ok or not found[0].active:
        why = "unknown user or no password" if found is None else "wrong password"
        if found is not None and password_ok:
            why = "account deactivated"
        audit.record(
            session,
            actor=Actor(username),
            action="login",
            outcome="failed",
            origin=origin,
            now=now,
            detail=why,
        )
        raise InvalidCredentials("wrong username or password")
    staff: Staff = found[0]
    audit.record(session, actor=Actor.of(staff), action="login", origin=origin, now=now)
    return staff


def start_session(session: Session, staff: Staff, *, ip: str, now: datetime) -> str:
    """A new login session of `staff`; returns the token for the browser."""
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(token_hash=digest(token), staff_id=staff.id, created_at=now, last_seen_at=now, ip=ip[:64])
    )
    session.flush()
    return token


def resolve_session(
    session: Session, token: str, *, now: datetime, timeout: timedelta, touch: bool = True
) -> tuple[Staff | None, str | None]:
    """The staff member of a live session, or (None, why it ended) for a dead or unknown one.

    A session unused for `timeout` ends ("timeout"); one of a deactivated member ends ("deactivated").
    `touch=False` (background polling) does not count as activity.
    """
    row = session.scalars(select(WebSession).where(WebSession.token_hash == digest(token))).one_or_none()
    if row is None:
        return None, None
    if row.ended_at is not None:
        return None, row.end_reason
    staff = session.get(Staff, row.staff_id)
    if staff is None or not staff.active:
        _end(row, now, "deactivated")
        return None, "deactivated"
    if now - row.last_seen_at > timeout:
        _end(row, now, "timeout")
        return None, "timeout"
    if touch and now - row.last_seen_at >= _TOUCH_EVERY:
        row.last_seen_at = now
    session.flush()
    return staff, None


def end_session(session: Session, token: str, *, now: datetime, reason: str = "logout") -> None:
    """End a login session (logout); a no-op for an unknown or ended one."""
    row = session.scalars(select(WebSession).where(WebSession.token_hash == digest(token))).one_or_none()
    if row is not None and row.ended_at is None:
        _end(row, now, reason)
        session.flush()


def end_sessions_of(session: Session, staff_id: int, *, now: datetime, reason: str) -> None:
    """End every open session of a staff member (deactivated, password changed)."""
    session.execute(
        update(WebSession)
        .where(WebSession.staff_id == staff_id, WebSession.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
    )


def create_api_token(session: Session, staff: Staff, name: str, *, now: datetime) -> NewApiToken:
    """A new API token for `staff`, named by its owner (e.g. "RMIS export")."""
    name = name.strip()[:100] or "API"
    secret = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        staff_id=staff.id, name=name, token_hash=digest(secret), prefix=secret[:12], created_at=now
    )
    session.add(row)
    session.flush()
    return NewApiToken(id=row.id, name=name, secret=secret)


def resolve_api_token(session: Session, secret: str, *, now: datetime) -> Staff | None:
    """The active staff member owning this unrevoked token, or None."""
    if not secret.startswith(API_TOKEN_PREFIX):
        return None
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest(secret))).one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    staff = session.get(Staff, row.staff_id)
    if staff is None or not staff.active:
        return None
    if row.last_used_at is None or now - row.last_used_at >= _TOUCH_EVERY:
        row.last_used_at = now
        session.flush()
    return staff


def list_api_tokens(session: Session, staff_id: int) -> list[ApiToken]:
    """A staff member's tokens, newest first (revoked ones included, marked)."""
    return list(
        session.scalars(select(ApiToken).where(ApiToken.staff_id == staff_id).order_by(ApiToken.id.desc()))
    )


def revoke_api_token(session: Session, staff_id: int, token_id: int, *, now: datetime) -> bool:
    """Revoke one of the staff member's own tokens; False when there is no such live token of theirs."""
    row = session.get(ApiToken, token_id)
    if row is None or row.staff_id != staff_id or row.revoked_at is not None:
        return False
    row.revoked_at = now
    session.flush()
    return True


def _end(row: WebSession, now: datetime, reason: str) -> None:
    row.ended_at = now
    row.end_reason = reason


def digest(token: str) -> str:
    """The SHA-256 (hex) under which a session or API token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()
