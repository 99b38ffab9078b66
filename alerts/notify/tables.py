"""Relational models of the notifications: the SMS outbox and the opted-out numbers.

Migration 0003 creates these tables. Every text to a patient or a staff member is one `outbox` row,
written in the same transaction as the alert change that caused it and delivered later by the worker.

Row status (`OutboxStatus`), from birth to an end:

    pending --claim--> in_flight --provider accepted--> sent --callback--> delivered | failed
       ^  |                 |
       |  +--quiet hours--> deferred (next_attempt_at = end of quiet hours) --due--> claim
       +---retryable error--+        (next_attempt_at = now + backoff; failed after max_attempts)
    pending|deferred --opted out / over the rate limit--> suppressed (error_code says which)
    in_flight --permanent error--> failed
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Final

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

import alerts.tables  # noqa: F401  (staff and alerts, which outbox rows refer to)
from rpmgw.models import LANGUAGES, Base, BigId, UtcDateTime


class OutboxStatus(StrEnum):
    """Where an outbox row is in its life (see the module docstring)."""

    PENDING = "pending"  # waiting for next_attempt_at
    DEFERRED = "deferred"  # held back by the patient's quiet hours until next_attempt_at
    IN_FLIGHT = "in_flight"  # claimed by a worker: the provider may or may not have it
    SENT = "sent"  # the provider accepted it (provider_id)
    DELIVERED = "delivered"  # the provider reported delivery to the handset
    FAILED = "failed"  # permanent error, attempts exhausted, or the provider reported it undelivered
    SUPPRESSED = "suppressed"  # not sent on purpose: opted out or over the rate limit (error_code)


class RecipientKind(StrEnum):
    """Who a text is for: opt-out, quiet hours and rate limits apply to patients only."""

    PATIENT = "patient"
    STAFF = "staff"


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


# Rows a worker may pick up when next_attempt_at has come.
DUE_STATUSES: Final = (OutboxStatus.PENDING, OutboxStatus.DEFERRED)
# Rows whose text reached (or may have reached) the provider.
PROVIDER_STATUSES: Final = (OutboxStatus.SENT, OutboxStatus.DELIVERED, OutboxStatus.FAILED)


class OutboxMessage(Base):
    """One text to one phone, rendered at enqueue time; `idempotency_key` makes enqueueing idempotent.

    Keys follow `alert:<alert id>:<recipient>:<purpose>` for alert texts (docs/alerts-design.md).
    `error_code` holds the provider's code of the last failure ("21211"), a network word ("timeout"),
    or why a row was suppressed ("opted_out", "rate_hour", "rate_day").
    """

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint(f"recipient_kind IN ({_in(tuple(RecipientKind))})", name="recipient_kind"),
        CheckConstraint(f"status IN ({_in(tuple(OutboxStatus))})", name="status"),
        CheckConstraint(f"language IN ({_in(LANGUAGES)})", name="language"),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_patient_id_sent_at", "patient_id", "sent_at"),
        Index("ix_outbox_phone_sent_at", "phone", "sent_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    recipient_kind: Mapped[str] = mapped_column(String(8))
    phone: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("patients.id"))
    staff_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("staff.id"), index=True)
    alert_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("alerts.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    template: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(2))
    body: Mapped[str] = mapped_column(Text())
    critical: Mapped[bool] = mapped_column(Boolean())
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer(), default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # When the current (or last) claim was taken: a stale in_flight row's claimer died.
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # Set when an earlier attempt may have reached the provider unanswered: look it up before resending.
    maybe_sent_since: Mapped[datetime | None] = mapped_column(UtcDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    provider_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    provider_status: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text())
    error_code: Mapped[str | None] = mapped_column(String(32))

    def __repr__(self) -> str:
        return (
            f"OutboxMessage(id={self.id!r}, key={self.idempotency_key!r}, status={self.status!r}, "
            f"attempts={self.attempts!r})"
        )


class SmsOptOut(Base):
    """A phone number that asked for no more texts (reply STOP/СТОП, or Twilio's error 21610).

    A START/СТАРТ reply deletes the row.
    """

    __tablename__ = "sms_opt_outs"

    phone: Mapped[str] = mapped_column(String(16), primary_key=True)
    opted_out_at: Mapped[datetime] = mapped_column(UtcDateTime())
    source: Mapped[str] = mapped_column(String(32))

    def __repr__(self) -> str:
        return f"SmsOptOut(phone=..., opted_out_at={self.opted_out_at!r}, source={self.source!r})"
