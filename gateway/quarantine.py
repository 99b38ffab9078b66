"""The quarantine: MQTT messages that could not be stored as readings, kept byte for byte with the reason.

Nothing a device sends is silently dropped: a payload that breaks the wire contract, or a reading of
an unknown or unenrolled device, lands here. The gateway acknowledges those MQTT messages only after
`add_many` has returned.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import func, insert, select
from sqlalchemy.exc import DataError, DBAPIError, DisconnectionError, IntegrityError
from sqlalchemy.orm import Session

from gateway.errors import GatewayError
from rpmgw.models import QuarantinedMessage

REASON_PATTERN: Final = re.compile(r"^[a-z0-9_]{1,32}$")
DEVICE_ID_MAX: Final = 64


class QuarantineError(GatewayError):
    """Base of the quarantine's errors."""


class QuarantineUnavailable(QuarantineError):
    """The database could not be reached, was busy or is not migrated: retry later, ack nothing meanwhile."""


class QuarantineRejected(QuarantineError):
    """The database refused the rows themselves: retrying the same entries will not help."""


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One message to keep: its topic and raw payload, why it was refused, and when it arrived."""

    topic: str
    payload: bytes
    reason: str
    detail: str
    device_id: str | None
    received_at: datetime

    def __post_init__(self) -> None:
        if not REASON_PATTERN.match(self.reason):
            raise ValueError(f"quarantine reason {self.reason!r} must be a short code of a-z, 0-9 and _")
        if self.device_id is not None and not 1 <= len(self.device_id) <= DEVICE_ID_MAX:
            raise ValueError(f"device_id must have 1-{DEVICE_ID_MAX} characters, got {len(self.device_id)}")
        if self.received_at.tzinfo is None or self.received_at.utcoffset() is None:
            raise ValueError(f"received_at {self.received_at.isoformat()} has no time zone")


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    """A stored quarantine entry; `received_at` is aware UTC."""

    id: int
    topic: str
    payload: bytes
    reason: str
    detail: str
    device_id: str | None
    received_at: datetime


class Quarantine:
    """Adds to and reads the quarantine table."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self._session_factory = session_factory

    def add_many(self, entries: Sequence[QuarantineEntry]) -> None:
        """Store all entries in one transaction (all or none).

        Raises `QuarantineUnavailable` (retry later) or `QuarantineRejected` (do not retry).
        """
        if not entries:
            return
        rows = [
            {
                "received_at": entry.received_at,
                "topic": entry.topic,
                "device_id": entry.device_id,
                "reason": entry.reason,
                "detail": entry.detail,
                "payload": bytes(entry.payload),
            }
            for entry in entries
        ]
        with _translated_errors("store"), self._session_factory() as session, session.begin():
            session.execute(insert(QuarantinedMessage), rows)

    def list(
        self, limit: int = 100, reason: str | None = None, device_id: str | None = None
    ) -> builtins.list[QuarantinedRecord]:
        """The newest entries first, optionally only of one reason and/or one device."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        query = select(QuarantinedMessage).order_by(
            QuarantinedMessage.received_at.desc(), QuarantinedMessage.id.desc()
        )
        if reason is not None:
            query = query.where(QuarantinedMessage.reason == reason)
        if device_id is not None:
            query = query.where(QuarantinedMessage.device_id == device_id)
        with _translated_errors("read"), self._session_factory() as session:
            return [_record(row) for row in session.scalars(query.limit(limit))]

    def counts_by_reason(self) -> dict[str, int]:
        """How many entries there are of each reason."""
        query = select(QuarantinedMessage.reason, func.count()).group_by(QuarantinedMessage.reason)
        with _translated_errors("read"), self._session_factory() as session:
            return {reason: count for reason, count in session.execute(query).tuples()}


@contextmanager
def _translated_errors(action: str) -> Iterator[None]:
    """Turn SQLAlchemy errors into the quarantine's own: only bad rows are not worth retrying."""
    try:
        yield
    except (DataError, IntegrityError) as exc:
        raise QuarantineRejected(f"the database refused quarantined messages: {_text(exc)}") from exc
    except (DBAPIError, DisconnectionError) as exc:
        # Unreachable, busy, read-only or not migrated yet: all may heal, and nothing is acked meanwhile.
        raise QuarantineUnavailable(f"cannot {action} quarantined messages: {_text(exc)}") from exc


def _text(exc: BaseException) -> str:
    origin = exc.orig if isinstance(exc, DBAPIError) else exc
    return str(origin).strip().splitlines()[0][:300] if str(origin).strip() else type(origin).__name__


def _record(row: QuarantinedMessage) -> QuarantinedRecord:
    return QuarantinedRecord(
        id=row.id,
        topic=row.topic,
        payload=bytes(row.payload),
        reason=row.reason,
        detail=row.detail,
        device_id=row.device_id,
        received_at=row.received_at,
    )
