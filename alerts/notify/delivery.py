"""Delivery of the SMS outbox: a pipeline of small stages per due row, as in Alertmanager's notify.

    opt-out (patients) -> quiet hours (patients, non-critical) -> rate limit (patients)
        -> claim (in_flight, attempts + 1, COMMITTED before the provider is called)
        -> send -> record sent + provider id
        (retryable failure -> pending with exponential backoff; permanent -> failed)

Exactly once from the recipient's point of view:
- a row is claimed with a conditional UPDATE under a row lock, so two workers never both send it;
- a row still in flight after `in_flight_timeout` was left by a worker that died between sending and
  recording: before sending it again, the provider is asked whether it already has the text
  (`Notifier.find_sent`); the same happens after an *uncertain* failure (a timeout: the request may
  have arrived). `in_flight_timeout` must exceed the provider's request timeout.

On PostgreSQL a patient's row is locked (FOR NO KEY UPDATE) while one of their texts is checked and
claimed, so two workers cannot both squeeze a text under the rate limit; SQLite serialises every
transaction anyway (BEGIN IMMEDIATE, see rpmgw.db).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import CursorResult, Select, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from alerts.notify.errors import NotifierError
from alerts.notify.notifier import Notifier, OutgoingSms, SendReceipt
from alerts.notify.outbox import opt_out, status_for_provider
from alerts.notify.policy import RateCounts, quiet_until, rate_limit_exceeded, retry_delay
from alerts.notify.tables import (
    DUE_STATUSES,
    PROVIDER_STATUSES,
    OutboxMessage,
    OutboxStatus,
    RecipientKind,
    SmsOptOut,
)
from rpmgw.models import DEFAULT_TIMEZONE, Patient, utcnow
from rpmgw.settings import SmsSettings

log = logging.getLogger(__name__)

# Twilio: the recipient replied STOP to our number; it will refuse every further text to them.
UNSUBSCRIBED_CODE: Final = "21610"
DEFAULT_IN_FLIGHT_TIMEOUT: Final = timedelta(minutes=2)
# Clock difference tolerated between us and the provider when looking a text up.
DEFAULT_RECONCILE_MARGIN: Final = timedelta(minutes=5)


class Outcome(StrEnum):
    """What happened to one row in one run."""

    SENT = "sent"
    RETRIED = "retried"
    FAILED = "failed"
    DEFERRED = "deferred"
    SUPPRESSED = "suppressed"
    RECONCILED = "reconciled"  # found already sent after a crash or an uncertain failure
    SKIPPED = "skipped"  # another worker had it, or it was no longer due


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """How many rows one `run_once` moved, by outcome."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    deferred: int = 0
    suppressed: int = 0
    reconciled: int = 0

    @property
    def total(self) -> int:
        """Rows this run changed (0: nothing was due)."""
        return self.sent + self.retried + self.failed + self.deferred + self.suppressed + self.reconciled


@dataclass(frozen=True, slots=True)
class Verdict:
    """A stage's decision to hold a row back instead of sending it now."""

    outcome: Outcome  # DEFERRED or SUPPRESSED
    reason: str
    code: str | None = None
    until: datetime | None = None  # DEFERRED: when to try again


@dataclass(frozen=True, slots=True)
class Claim:
    """A row this worker owns until it records the result (`claimed_at` is the ownership token)."""

    outbox_id: int
    phone: str
    body: str
    attempts: int
    claimed_at: datetime
    maybe_sent_since: datetime | None
    provider_id: str | None  # known already when a status callback beat the worker to it
    provider_status: str | None


Stage = Callable[[Session, OutboxMessage, datetime], Verdict | None]


class Delivery:
    """Delivers due outbox rows through one `Notifier`; safe to run in several processes at once."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        notifier: Notifier,
        sms_settings: SmsSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        default_timezone: str = DEFAULT_TIMEZONE,
        in_flight_timeout: timedelta = DEFAULT_IN_FLIGHT_TIMEOUT,
        reconcile_margin: timedelta = DEFAULT_RECONCILE_MARGIN,
        rng: random.Random | None = None,
    ) -> None:
        self._sessions = session_factory
        self._notifier = notifier
        self._settings = sms_settings
        self._clock = clock
        self._default_zone = ZoneInfo(default_timezone)
        self._in_flight_timeout = in_flight_timeout
        self._margin = reconcile_margin
        self._rng = rng or random.Random()
        self._stages: tuple[Stage, ...] = (self._opt_out, self._quiet_hours, self._rate_limit)

    def run_once(self, limit: int = 100, *, critical: bool | None = None) -> DeliveryReport:
        """Recover rows left in flight by dead workers, then deliver up to `limit` due rows.

        `critical` True or False takes only critical or only routine texts (None: both, critical first):
        the worker delivers them on separate lanes, so that a critical text never waits behind a run of
        routine ones (a morning's reminders, each a round trip to the provider).
        """
        outcomes: Counter[Outcome] = Counter()
        for outbox_id in self._stale_in_flight(limit, critical):
            outcomes[self.recover(outbox_id)] += 1
        for outbox_id in self._due(limit, critical):
            outcomes[self.process(outbox_id)] += 1
        return DeliveryReport(
            sent=outcomes[Outcome.SENT],
            retried=outcomes[Outcome.RETRIED],
            failed=outcomes[Outcome.FAILED],
            deferred=outcomes[Outcome.DEFERRED],
            suppressed=outcomes[Outcome.SUPPRESSED],
            reconciled=outcomes[Outcome.RECONCILED],
        )

    def process(self, outbox_id: int) -> Outcome:
        """Run one due row through the pipeline (SKIPPED when it is not due or another worker has it)."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = self._lock_due(session, outbox_id, now)
            if row is None:
                return Outcome.SKIPPED
            for stage in self._stages:
                verdict = stage(session, row, now)
                if verdict is not None:
                    self._hold(session, row, verdict)
                    return verdict.outcome
            claim = self._claim(session, row, now)
        return self._deliver(claim)

    def recover(self, outbox_id: int) -> Outcome:
        """Take over a row whose claimer died: look the text up at the provider, send it only if absent."""
        now = self._clock()
        with self._sessions.begin() as session:
            row = session.scalars(
                select(OutboxMessage)
                .where(
                    OutboxMessage.id == outbox_id,
                    OutboxMessage.status == OutboxStatus.IN_FLIGHT,
                    OutboxMessage.claimed_at < now - self._in_flight_timeout,
                )
                .with_for_update()
            ).first()
            if row is None or row.claimed_at is None:
                return Outcome.SKIPPED
            since = min(t for t in (row.maybe_sent_since, row.claimed_at) if t is not None)
            log.warning(
                "outbox row %d was left in flight since %s; checking the provider before any resend",
                row.id,
                row.claimed_at.isoformat(),
            )
            claim = self._take(
                session, row, now, expected_status=OutboxStatus.IN_FLIGHT, maybe_sent_since=since
            )
        return self._deliver(claim)

    # -- selection -------------------------------------------------------------------------------

    def _due(self, limit: int, critical: bool | None) -> list[int]:
        now = self._clock()
        query = _lane(
            select(OutboxMessage.id).where(
                OutboxMessage.status.in_([s.value for s in DUE_STATUSES]),
                OutboxMessage.next_attempt_at <= now,
            ),
            critical,
        )
        with self._sessions() as session:
            return list(
                session.scalars(
                    query.order_by(
                        OutboxMessage.critical.desc(), OutboxMessage.next_attempt_at, OutboxMessage.id
                    ).limit(limit)
                )
            )

    def _stale_in_flight(self, limit: int, critical: bool | None) -> list[int]:
        cutoff = self._clock() - self._in_flight_timeout
        query = _lane(
            select(OutboxMessage.id).where(
                OutboxMessage.status == OutboxStatus.IN_FLIGHT, OutboxMessage.claimed_at < cutoff
            ),
            critical,
        )
        with self._sessions() as session:
            return list(
                session.scalars(query.order_by(OutboxMessage.claimed_at, OutboxMessage.id).limit(limit))
            )

    def _lock_due(self, session: Session, outbox_id: int, now: datetime) -> OutboxMessage | None:
        patient_id = session.scalar(select(OutboxMessage.patient_id).where(OutboxMessage.id == outbox_id))
        if patient_id is not None:
            # Serialises this patient's rate-limit check and claim across workers (PostgreSQL).
            session.execute(
                select(Patient.id).where(Patient.id == patient_id).with_for_update(key_share=True)
            )
        return session.scalars(
            select(OutboxMessage)
            .where(
                OutboxMessage.id == outbox_id,
                OutboxMessage.status.in_([s.value for s in DUE_STATUSES]),
                OutboxMessage.next_attempt_at <= now,
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        ).first()

    # -- stages: each returns a Verdict to hold the row back, or None to let it through -----------

    def _opt_out(self, session: Session, row: OutboxMessage, now: datetime) -> Verdict | None:
        if row.recipient_kind != RecipientKind.PATIENT:
            return None
        opted = session.get(SmsOptOut, row.phone)
        if opted is None:
            return None
        return Verdict(
            Outcome.SUPPRESSED,
            f"the number opted out of texts ({opted.source}) at {opted.opted_out_at.isoformat()}",
            code="opted_out",
        )

    def _quiet_hours(self, session: Session, row: OutboxMessage, now: datetime) -> Verdict | None:
        if row.recipient_kind != RecipientKind.PATIENT or row.critical:
            return None
        zone = self._patient_zone(session, row.patient_id)
        until = quiet_until(now, zone, self._settings.quiet_hours_start, self._settings.quiet_hours_end)
        if until is None:
            return None
        local = until.astimezone(zone).strftime("%Y-%m-%d %H:%M")
        return Verdict(Outcome.DEFERRED, f"quiet hours: held until {local} {zone.key}", until=until)

    def _rate_limit(self, session: Session, row: OutboxMessage, now: datetime) -> Verdict | None:
        if row.recipient_kind != RecipientKind.PATIENT or row.patient_id is None:
            return None
        counts = RateCounts(
            last_hour=self._texts_to_patient(session, row, since=now - timedelta(hours=1)),
            last_day=self._texts_to_patient(session, row, since=now - timedelta(days=1)),
        )
        exceeded = rate_limit_exceeded(
            counts,
            critical=row.critical,
            max_per_hour=self._settings.max_per_hour,
            max_per_day=self._settings.max_per_day,
        )
        if exceeded is None:
            return None
        return Verdict(
            Outcome.SUPPRESSED,
            f"rate limit: {counts.last_hour} text(s) in the last hour (max {self._settings.max_per_hour}), "
            f"{counts.last_day} in the last day (max {self._settings.max_per_day}"
            f"{', critical texts exempt' if exceeded.value == 'rate_day' else ''})",
            code=exceeded.value,
        )

    def _texts_to_patient(self, session: Session, row: OutboxMessage, since: datetime) -> int:
        # Texts that reached (or are reaching) the provider; one failing before the provider never counts.
        return (
            session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(
                    OutboxMessage.patient_id == row.patient_id,
                    OutboxMessage.recipient_kind == RecipientKind.PATIENT,
                    OutboxMessage.id != row.id,
                    or_(
                        OutboxMessage.status == OutboxStatus.IN_FLIGHT,
                        OutboxMessage.status.in_([s.value for s in PROVIDER_STATUSES])
                        & (OutboxMessage.sent_at >= since),
                    ),
                )
            )
            or 0
        )

    def _patient_zone(self, session: Session, patient_id: str | None) -> ZoneInfo:
        name = (
            session.scalar(select(Patient.timezone).where(Patient.id == patient_id)) if patient_id else None
        )
        if not name:
            return self._default_zone
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning(
                "patient %s has an unknown time zone %r; using %s", patient_id, name, self._default_zone
            )
            return self._default_zone

    def _hold(self, session: Session, row: OutboxMessage, verdict: Verdict) -> None:
        values: dict[str, object] = {"status": verdict.outcome.value, "last_error": verdict.reason}
        if verdict.until is not None:
            values["next_attempt_at"] = verdict.until
        if verdict.code is not None:
            values["error_code"] = verdict.code
        session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id).values(**values))
        log.info("outbox row %d %s: %s", row.id, verdict.outcome.value, verdict.reason)

    # -- claim, send, record ---------------------------------------------------------------------

    def _claim(self, session: Session, row: OutboxMessage, now: datetime) -> Claim:
        return self._take(
            session, row, now, expected_status=OutboxStatus(row.status), maybe_sent_since=row.maybe_sent_since
        )

    def _take(
        self,
        session: Session,
        row: OutboxMessage,
        now: datetime,
        *,
        expected_status: OutboxStatus,
        maybe_sent_since: datetime | None,
    ) -> Claim:
        # Read before the UPDATE: the ORM synchronises `row` with the values it sets.
        claim = Claim(
            outbox_id=row.id,
            phone=row.phone,
            body=row.body,
            attempts=row.attempts + 1,
            claimed_at=now,
            maybe_sent_since=maybe_sent_since,
            provider_id=row.provider_id,
            provider_status=row.provider_status,
        )
        condition = [OutboxMessage.id == row.id, OutboxMessage.status == expected_status]
        if expected_status is OutboxStatus.IN_FLIGHT:
            condition.append(OutboxMessage.claimed_at == row.claimed_at)
        result = session.execute(
            update(OutboxMessage)
            .where(*condition)
            .values(
                status=OutboxStatus.IN_FLIGHT.value,
                attempts=OutboxMessage.attempts + 1,
                claimed_at=now,
                maybe_sent_since=maybe_sent_since,
            )
        )
        assert isinstance(result, CursorResult)
        if result.rowcount != 1:
            # Cannot happen under the row lock we hold; refuse to send rather than risk a duplicate.
            raise RuntimeError(f"outbox row {row.id} changed under our lock")
        return claim

    def _deliver(self, claim: Claim) -> Outcome:
        if claim.provider_id is not None:
            # A status callback named the provider's id while the row was in flight: it was sent.
            self._record_sent(claim, SendReceipt(claim.provider_id, claim.provider_status or "queued"))
            return Outcome.RECONCILED
        if claim.maybe_sent_since is not None:
            since = claim.maybe_sent_since - self._margin
            try:
                found = self._notifier.find_sent(
                    claim.phone, claim.body, since, exclude=self._known_provider_ids(claim.phone, since)
                )
            except NotifierError as exc:
                # Cannot tell whether it went out: never resend blind, ask again later.
                return self._record_failure(claim, NotifierError(exc.message, True, exc.code, uncertain=True))
            if found is not None:
                log.info(
                    "outbox row %d was already sent (%s): recorded without resending",
                    claim.outbox_id,
                    found.provider_id,
                )
                self._record_sent(claim, found)
                return Outcome.RECONCILED
        try:
            receipt = self._notifier.send(OutgoingSms(claim.outbox_id, claim.phone, claim.body))
        except NotifierError as exc:
            return self._record_failure(claim, exc)
        self._record_sent(claim, receipt)
        return Outcome.SENT

    def _known_provider_ids(self, phone: str, since: datetime) -> frozenset[str]:
        with self._sessions() as session:
            ids = session.scalars(
                select(OutboxMessage.provider_id).where(
                    OutboxMessage.phone == phone,
                    OutboxMessage.provider_id.is_not(None),
                    OutboxMessage.sent_at >= since,
                )
            )
            return frozenset(provider_id for provider_id in ids if provider_id is not None)

    def _record_sent(self, claim: Claim, receipt: SendReceipt) -> None:
        now = self._clock()
        with self._sessions.begin() as session:
            row = self._owned(session, claim)
            if row is None:
                return
            # A callback for this very message may already have said more than the send's answer.
            provider_status = (
                row.provider_status
                if row.provider_id == receipt.provider_id and row.provider_status is not None
                else receipt.status
            )
            session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id)
                .values(
                    status=status_for_provider(provider_status, OutboxStatus.SENT.value),
                    provider_id=receipt.provider_id,
                    provider_status=provider_status,
                    sent_at=now,
                    maybe_sent_since=None,
                )
            )

    def _record_failure(self, claim: Claim, exc: NotifierError) -> Outcome:
        now = self._clock()
        with self._sessions.begin() as session:
            row = self._owned(session, claim)
            if row is None:
                return Outcome.SKIPPED
            values: dict[str, object] = {"error_code": exc.code, "last_error": exc.message}
            if exc.uncertain:
                values["maybe_sent_since"] = claim.maybe_sent_since or claim.claimed_at
            if exc.code == UNSUBSCRIBED_CODE:
                opt_out(session, claim.phone, source=f"twilio:{UNSUBSCRIBED_CODE}", now=now)
            if not exc.retryable:
                outcome = Outcome.FAILED
                values["status"] = OutboxStatus.FAILED.value
            elif claim.attempts >= self._settings.max_attempts:
                outcome = Outcome.FAILED
                values["status"] = OutboxStatus.FAILED.value
                values["last_error"] = f"gave up after {claim.attempts} attempts: {exc.message}"
            else:
                outcome = Outcome.RETRIED
                delay = retry_delay(
                    claim.attempts,
                    base_seconds=self._settings.retry_base_seconds,
                    max_seconds=self._settings.retry_max_seconds,
                    rng=self._rng,
                )
                values["status"] = OutboxStatus.PENDING.value
                values["next_attempt_at"] = now + delay
            session.execute(update(OutboxMessage).where(OutboxMessage.id == row.id).values(**values))
        level = logging.WARNING if outcome is Outcome.RETRIED else logging.ERROR
        # The provider's message may quote the phone number: it stays in the outbox row, not in the log.
        log.log(
            level,
            "outbox row %d %s (attempt %d): error %s",
            claim.outbox_id,
            outcome.value,
            claim.attempts,
            exc.code,
        )
        return outcome

    def _owned(self, session: Session, claim: Claim) -> OutboxMessage | None:
        row = session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.id == claim.outbox_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).first()
        if row is None or row.status != OutboxStatus.IN_FLIGHT or row.claimed_at != claim.claimed_at:
            # Only after this worker stalled past in_flight_timeout: the row's new owner reconciles it.
            log.error(
                "outbox row %d was taken over by another worker; not recording this attempt", claim.outbox_id
            )
            return None
        return row


def _lane(query: Select[tuple[int]], critical: bool | None) -> Select[tuple[int]]:
    """`query` narrowed to critical (True) or routine (False) texts; None leaves it as it is."""
    return query if critical is None else query.where(OutboxMessage.critical.is_(critical))
