"""Relational models of the web application: passwords, login sessions, API tokens and the audit log.

Migration 0004 creates these tables. A "user" of the web application is a `staff` row (alerts.tables)
with a `staff_credentials` row. The audit log is append-only: no code path updates or deletes it, and
the database refuses UPDATE and DELETE on it with a trigger (SQLite and PostgreSQL alike).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

import alerts.tables  # noqa: F401  (staff, which these rows refer to)
from rpmgw.models import Base, BigId, UtcDateTime, utcnow

AUDIT_OUTCOMES: Final = ("ok", "denied", "failed")
SESSION_END_REASONS: Final = ("logout", "timeout", "deactivated", "password_changed")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


class StaffCredential(Base):
    """A staff member's password (scrypt hash); without this row the staff member cannot log in."""

    __tablename__ = "staff_credentials"

    staff_id: Mapped[int] = mapped_column(BigId, ForeignKey("staff.id"), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    def __repr__(self) -> str:
        return f"StaffCredential(staff_id={self.staff_id!r}, changed_at={self.changed_at!r})"


class WebSession(Base):
    """One login: the browser holds a random token whose SHA-256 is `token_hash`.

    Kept on the server so that logging out, a timeout or deactivating the staff member ends it for good
    (a signed cookie alone could be replayed until it expires).
    """

    __tablename__ = "web_sessions"
    __table_args__ = (
        CheckConstraint(
            f"end_reason IS NULL OR end_reason IN ({_in(SESSION_END_REASONS)})", name="end_reason"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    staff_id: Mapped[int] = mapped_column(BigId, ForeignKey("staff.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    end_reason: Mapped[str | None] = mapped_column(String(16))
    ip: Mapped[str] = mapped_column(String(64), default="")

    def __repr__(self) -> str:
        return f"WebSession(id={self.id!r}, staff_id={self.staff_id!r}, ended_at={self.ended_at!r})"


class ApiToken(Base):
    """A token for the JSON API (Authorization: Bearer ...); only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    staff_id: Mapped[int] = mapped_column(BigId, ForeignKey("staff.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the token, to recognise it in a list.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    def __repr__(self) -> str:
        return f"ApiToken(id={self.id!r}, staff_id={self.staff_id!r}, prefix={self.prefix!r})"


class AuditEntry(Base):
    """Who did or saw what, when, and from where; append-only.

    `actor` is the username (or the name typed at a failed login); `patient_id` and `staff_id` are not
    foreign keys: an entry must outlive anything it names and may name what does not exist (a refused
    request for an unknown patient).
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint(f"outcome IN ({_in(AUDIT_OUTCOMES)})", name="outcome"),
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_actor_at", "actor", "at"),
        Index("ix_audit_log_patient_id_at", "patient_id", "at"),
        Index("ix_audit_log_action_at", "action", "at"),
        Index("ix_audit_log_ip_at", "ip", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(String(64))
    staff_id: Mapped[int | None] = mapped_column(BigId)
    role: Mapped[str | None] = mapped_column(String(8))
    action: Mapped[str] = mapped_column(String(40))
    outcome: Mapped[str] = mapped_column(String(8))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text(), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(200), default="")
    request: Mapped[str] = mapped_column(String(300), default="")  # "GET /patients/P-1"

    def __repr__(self) -> str:
        return f"AuditEntry(id={self.id!r}, actor={self.actor!r}, action={self.action!r}, outcome={self.outcome!r})"
