"""The SMS outbox: enqueue a text (idempotently, inside the caller's transaction), list texts, and record
what the provider and the recipients told us (status callbacks, STOP/START replies).

    with sessions.begin() as session:
        ...  # change the alert
        enqueue(session, key=f"alert:{alert.id}:patient:advice", recipient_kind="patient",
                phone=patient.phone, template="severe_bp_advice", language=patient.language,
                params={"systolic": 184, "diastolic": 112}, critical=True, purpose="advice",
                patient_id=patient.id, alert_id=alert.id, now=now)

Delivery is `alerts.notify.delivery.Delivery`'s job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import CursorResult, Table, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import ReturningInsert

from alerts.notify.tables import OutboxMessage, OutboxStatus, RecipientKind, SmsOptOut
from alerts.notify.templates import render

log = logging.getLogger(__name__)

# Twilio message statuses (https://www.twilio.com/docs/messaging/api/message-resource#message-status-values)
DELIVERED_PROVIDER_STATUSES: Final = frozenset({"delivered", "read"})
FAILED_PROVIDER_STATUSES: Final = frozenset({"undelivered", "failed", "canceled"})
FINAL_PROVIDER_STATUSES: Final = DELIVERED_PROVIDER_STATUSES | FAILED_PROVIDER_STATUSES


def enqueue(
    session: Session,
    *,
    key: str,
    recipient_kind: str,
    phone: str,
    template: str,
    language: str,
    params: Mapping[str, object],
    critical: bool,
    purpose: str,
    patient_id: str | None = None,
    staff_id: int | None = None,
    alert_id: int | None = None,
    now: datetime,
) -> bool:
    """Add a pending text unless one with `key` exists; True when this call added it.

    The body is rendered now (`templates.render`, raising `TemplateError`), so later template changes
    never alter a queued text. Safe against a concurrent enqueue of the same key from another
    process: INSERT ... ON CONFLICT DO NOTHING, so exactly one row exists and the loser gets False
    without its transaction being spoiled.
    """
    kind = RecipientKind(recipient_kind)
    if kind is RecipientKind.PATIENT and patient_id is None:
        raise ValueError(f"a patient text needs patient_id (key {key!r})")
    body = render(template, language, **params)
    values: dict[str, Any] = {
        "idempotency_key": key,
        "recipient_kind": kind.value,
        "phone": phone,
        "patient_id": patient_id,
        "staff_id": staff_id,
        "alert_id": alert_id,
        "purpose": purpose,
        "template": template,
        "language": language if language in ("ru", "en") else "en",
        "body": body,
        "critical": critical,
        "status": OutboxStatus.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    inserted = session.execute(_insert_ignoring_duplicates(session, values)).first()
    return inserted is not None


def _insert_ignoring_duplicates(session: Session, values: dict[str, Any]) -> ReturningInsert[tuple[int]]:
    table = cast(Table, OutboxMessage.__table__)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement: postgresql.Insert | sqlite.Insert = postgresql.insert(table)
    elif dialect == "sqlite":
        statement = sqlite.insert(table)
    else:
        raise NotImplementedError(f"the outbox supports SQLite and PostgreSQL, not {dialect}")
    # RETURNING says whether this statement inserted: rowcount is not reliable across drivers here.
    return (
        statement.values(**values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(table.c.id)
    )


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One outbox row as the CLI and the web show it."""

    id: int
    key: str
    recipient_kind: str
    phone: str
    patient_id: str | None
    staff_id: int | None
    alert_id: int | None
    purpose: str
    template: str
    language: str
    body: str
    critical: bool
    status: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None
    provider_id: str | None
    provider_status: str | None
    last_error: str | None
    error_code: str | None

    @classmethod
    def from_row(cls, row: OutboxMessage) -> OutboxEntry:
        """Copy a row (so it can be used after the session is gone)."""
        return cls(
            id=row.id,
            key=row.idempotency_key,
            recipient_kind=row.recipient_kind,
            phone=row.phone,
            patient_id=row.patient_id,
            staff_id=row.staff_id,
            alert_id=row.alert_id,
            purpose=row.purpose,
            template=row.template,
            language=row.language,
            body=row.body,
            critical=row.critical,
            status=row.status,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            created_at=row.created_at,
            sent_at=row.sent_at,
            provider_id=row.provider_id,
            provider_status=row.provider_status,
            last_error=row.last_error,
            error_code=row.error_code,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as RFC 3339 text)."""
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in asdict(self).items()
        }


def list_outbox(
    session: Session,
    *,
    status: str | Sequence[str] | None = None,
    patient_id: str | None = None,
    alert_id: int | None = None,
    limit: int = 100,
) -> list[OutboxEntry]:
    """The newest texts first, optionally only those with a status (or one of several), patient or alert."""
    query = select(OutboxMessage).order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc())
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        query = query.where(OutboxMessage.status.in_([OutboxStatus(s).value for s in statuses]))
    if patient_id is not None:
        query = query.where(OutboxMessage.patient_id == patient_id)
    if alert_id is not None:
        query = query.where(OutboxMessage.alert_id == alert_id)
    return [OutboxEntry.from_row(row) for row in session.scalars(query.limit(limit))]


def is_opted_out(session: Session, phone: str) -> bool:
    """Whether `phone` asked for no more texts."""
    return session.get(SmsOptOut, phone) is not None


def opt_out(session: Session, phone: str, *, source: str, now: datetime) -> bool:
    """Record that `phone` wants no more texts; True when it was not opted out before."""
    if is_opted_out(session, phone):
        return False
    session.add(SmsOptOut(phone=phone, opted_out_at=now, source=source))
    session.flush()
    return True


def opt_in(session: Session, phone: str) -> bool:
    """Let `phone` receive texts again; True when it had opted out."""
    result = session.execute(delete(SmsOptOut).where(SmsOptOut.phone == phone))
    assert isinstance(result, CursorResult)
    return result.rowcount > 0


def status_for_provider(provider_status: str | None, current: str) -> str:
    """The row status implied by the provider's latest word (`current` stays when it says nothing final)."""
    if provider_status in DELIVERED_PROVIDER_STATUSES:
        return OutboxStatus.DELIVERED.value
    if provider_status in FAILED_PROVIDER_STATUSES:
        return OutboxStatus.FAILED.value
    return current


def record_provider_status(
    session: Session,
    *,
    provider_id: str,
    provider_status: str,
    error_code: str | None = None,
    outbox_id: int | None = None,
) -> bool:
    """Apply a delivery status callback; False when no row matches (an unknown or foreign message).

    The row is found by provider id, or by `outbox_id` (from the callback URL) when the worker has not
    recorded the provider id yet. Callbacks may arrive out of order: a final status (delivered,
    undelivered, failed) is never replaced by an earlier one (queued, sent). An in-flight row only
    notes the provider's word; the worker applies it when it records the send.
    """
    conditions = [OutboxMessage.provider_id == provider_id]
    if outbox_id is not None:
        conditions.append((OutboxMessage.id == outbox_id) & OutboxMessage.provider_id.is_(None))
    row = session.scalars(select(OutboxMessage).where(or_(*conditions)).with_for_update().limit(1)).first()
    if row is None:
        return False
    if row.provider_status in FINAL_PROVIDER_STATUSES and provider_status not in FINAL_PROVIDER_STATUSES:
        return True
    values: dict[str, Any] = {"provider_id": provider_id, "provider_status": provider_status}
    if row.status != OutboxStatus.IN_FLIGHT:
        values["status"] = status_for_provider(provider_status, row.status)
    if provider_status in FAILED_PROVIDER_STATUSES:
        values["error_code"] = error_code or row.error_code
        values["last_error"] = f"Twilio reports the text {provider_status}" + (
            f" (error {error_code})" if error_code else ""
        )
    session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id).values(**values))
    return True
