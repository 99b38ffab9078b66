"""The audit log: who saw or changed what, when, and from where; append-only.

Every view of a patient's data, every acknowledgement, threshold change, enrolment, staff change and
login (successful, failed or throttled) is one `audit_log` row written in the same transaction as the
change it records. There is no function here that updates or deletes an entry, and the database
refuses to (migration 0004).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alerts.tables import Staff
from web.tables import AUDIT_OUTCOMES, AuditEntry

# What the audit log records, for the administrator's filter.
ACTIONS: Final = (
    "login",
    "logout",
    "session_timeout",
    "view_inbox",
    "view_alert",
    "view_patient",
    "view_population",
    "view_readings",
    "acknowledge",
    "change_thresholds",
    "access_denied",
    "change_language",
    "change_password",
    "create_api_token",
    "revoke_api_token",
    "add_staff",
    "set_staff_active",
    "reset_password",
    "add_care_team",
    "add_team_member",
    "remove_team_member",
    "add_patient",
    "assign_patient",
    "enrol_device",
    "end_enrolment",
    "view_admin",
)
# Field lengths of audit_log (longer values are cut, never refused: the entry must be written).
_LIMITS: Final = {"actor": 64, "ip": 64, "user_agent": 200, "request": 300, "object_id": 64, "patient_id": 64}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request came from: the client address, its browser, and "METHOD /path"."""

    ip: str = ""
    user_agent: str = ""
    request: str = ""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a staff member, or (for a failed login) only the username that was typed."""

    username: str
    staff_id: int | None = None
    role: str | None = None

    @classmethod
    def of(cls, staff: Staff) -> Actor:
        """The actor for a staff member."""
        return cls(staff.username, staff.id, staff.role)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What the administrator looks for in the log; None means any."""

    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    patient_id: str | None = None
    ip: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def record(
    session: Session,
    *,
    actor: Actor,
    action: str,
    origin: Origin,
    now: datetime,
    outcome: str = "ok",
    patient_id: str | None = None,
    object_type: str | None = None,
    object_id: str | int | None = None,
    detail: str = "",
) -> None:
    """Add one entry to the audit log inside the caller's transaction."""
    if outcome not in AUDIT_OUTCOMES:
        raise ValueError(f"audit outcome {outcome!r} is not one of {', '.join(AUDIT_OUTCOMES)}")
    session.add(
        AuditEntry(
            at=now,
            actor=_cut(actor.username or "-", "actor"),
            staff_id=actor.staff_id,
            role=actor.role,
            action=action,
            outcome=outcome,
            patient_id=None if patient_id is None else _cut(patient_id, "patient_id"),
            object_type=object_type,
            object_id=None if object_id is None else _cut(str(object_id), "object_id"),
            detail=detail,
            ip=_cut(origin.ip, "ip"),
            user_agent=_cut(origin.user_agent, "user_agent"),
            request=_cut(origin.request, "request"),
        )
    )
    session.flush()


def entries(
    session: Session, where: AuditFilter, *, limit: int = 100, before_id: int | None = None
) -> list[AuditEntry]:
    """Entries matching `where`, newest first; `before_id` pages back through older ones."""
    query = select(AuditEntry)
    if where.actor:
        query = query.where(AuditEntry.actor == where.actor)
    if where.action:
        query = query.where(AuditEntry.action == where.action)
    if where.outcome:
        query = query.where(AuditEntry.outcome == where.outcome)
    if where.patient_id:
        query = query.where(AuditEntry.patient_id == where.patient_id)
    if where.ip:
        query = query.where(AuditEntry.ip == where.ip)
    if where.since is not None:
        query = query.where(AuditEntry.at >= where.since)
    if where.until is not None:
        query = query.where(AuditEntry.at < where.until)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    return list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)))


def failed_logins(
    session: Session, *, since: datetime, username: str | None = None, ip: str | None = None
) -> int:
    """How many failed logins (of `username`, or from `ip`) were recorded at or after `since`."""
    query = (
        select(func.count())
        .select_from(AuditEntry)
        .where(AuditEntry.action == "login", AuditEntry.outcome == "failed", AuditEntry.at >= since)
    )
    if username is not None:
        query = query.where(AuditEntry.actor == _cut(username, "actor"))
    if ip is not None:
        query = query.where(AuditEntry.ip == _cut(ip, "ip"))
    return session.scalar(query) or 0


def actions_in_use(session: Session) -> Sequence[str]:
    """The known actions (for a filter list), plus any older ones found in the log."""
    found = set(session.scalars(select(AuditEntry.action).distinct()))
    return sorted(set(ACTIONS) | found)


def _cut(value: str, field: str) -> str:
    return value[: _LIMITS[field]]
