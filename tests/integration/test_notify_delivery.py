"""SMS delivery through the real `twilio` library against FakeTwilio, on SQLite and PostgreSQL:
exact requests, retries with backoff, permanent failures, quiet hours, rate limits, opt-out,
crash recovery without double sends, and two workers on the same rows."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from alerts.notify.delivery import Delivery, DeliveryReport, Outcome
from alerts.notify.dev import OutboxOnlyNotifier
from alerts.notify.notifier import OutgoingSms, SendReceipt, build_notifier
from alerts.notify.outbox import enqueue, opt_out
from alerts.notify.tables import OutboxMessage, SmsOptOut
from alerts.notify.twilio_sms import TwilioNotifier
from alerts.tables import Staff
from rpmgw.db import make_engine, session_factory
from rpmgw.models import Patient
from rpmgw.settings import Settings, SmsSettings
from tests.fakes.twilio_server import FakeResponse, FakeTwilio
from tests.fixtures.db import MigratedDb

# 12:00 in Yekaterinburg (UTC+5): outside quiet hours.
NOON_EKB = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
PUBLIC_URL = "https://rpm.example.ru"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Env:
    db: MigratedDb
    fake: FakeTwilio
    clock: Clock
    notifier: TwilioNotifier

    def delivery(self, notifier: Any = None, **sms: Any) -> Delivery:
        return Delivery(
            self.db.sessions,
            notifier or self.notifier,
            SmsSettings(**sms),
            clock=self.clock,
            rng=random.Random(7),
        )

    def patient(self, patient_id: str = "P-1", phone: str = "+79991234567", **fields: Any) -> None:
        with self.db.sessions.begin() as session:
            session.add(Patient(id=patient_id, display_name="Иванова Мария", phone=phone, **fields))

    def enqueue(self, key: str, **overrides: Any) -> int:
        values: dict[str, Any] = {
            "key": key,
            "recipient_kind": "patient",
            "phone": "+79991234567",
            "template": "severe_bp_advice",
            "language": "ru",
            "params": {"systolic": 184, "diastolic": 112},
            "critical": True,
            "purpose": "advice",
            "patient_id": "P-1",
            "now": self.clock(),
        } | overrides
        with self.db.sessions.begin() as session:
            assert enqueue(session, **values)
            return session.scalars(select(OutboxMessage.id).where(OutboxMessage.idempotency_key == key)).one()

    def row(self, outbox_id: int) -> OutboxMessage:
        with self.db.sessions() as session:
            row = session.get(OutboxMessage, outbox_id)
            assert row is not None
            return row

    def posted_bodies(self) -> list[str]:
        return [r.form["Body"] for r in self.fake.created]


@pytest.fixture
def env(migrated_db: MigratedDb) -> Iterator[Env]:
    clock = Clock(NOON_EKB)
    with FakeTwilio(clock=clock) as fake:
        notifier = TwilioNotifier(fake.settings(timeout=0.5), PUBLIC_URL)
        yield Env(migrated_db, fake, clock, notifier)


def _report(**counts: int) -> DeliveryReport:
    return DeliveryReport(**counts)


# -- the happy path ---------------------------------------------------------------------------------


def test_one_request_per_row_with_exact_form_fields_and_auth(env: Env) -> None:
    env.patient()
    with env.db.sessions.begin() as session:
        session.add(
            Staff(username="dr", display_name="Dr", phone="+79990000001", role="doctor", language="en")
        )
    with env.db.sessions() as session:
        staff_id = session.scalars(select(Staff.id)).one()
    patient_row = env.enqueue("alert:1:patient:advice")
    staff_row = env.enqueue(
        "alert:1:staff:alert",
        recipient_kind="staff",
        phone="+79990000001",
        template="staff_alert",
        language="en",
        params={"rule": "severe_bp", "patient_id": "P-1", "value": "184/112", "time": "12:00"},
        purpose="alert",
        patient_id=None,
        staff_id=staff_id,
    )

    assert env.delivery().run_once() == _report(sent=2)

    created = env.fake.created
    assert [r.auth for r in created] == [(env.fake.account_sid, env.fake.auth_token)] * 2
    assert [r.path for r in created] == [f"/2010-04-01/Accounts/{env.fake.account_sid}/Messages.json"] * 2
    by_to = {r.form["To"]: r.form for r in created}
    assert by_to["+79991234567"] == {
        "To": "+79991234567",
        "From": "+15005550006",
        "Body": env.row(patient_row).body,
        "StatusCallback": f"{PUBLIC_URL}/twilio/status?outbox_id={patient_row}",
    }
    assert by_to["+79990000001"]["Body"] == "RPM: Severe blood pressure, patient P-1: 184/112, 12:00."
    sids = {m["to"]: m["sid"] for m in env.fake.messages}
    for outbox_id, phone in ((patient_row, "+79991234567"), (staff_row, "+79990000001")):
        row = env.row(outbox_id)
        assert (row.status, row.attempts, row.provider_id, row.provider_status) == (
            "sent",
            1,
            sids[phone],
            "queued",
        )
        assert row.sent_at == NOON_EKB and row.claimed_at == NOON_EKB and row.maybe_sent_since is None

    # Nothing is due any more: no second request, ever.
    env.clock.advance(days=2)
    assert env.delivery().run_once() == _report()
    assert len(env.fake.requests) == 2


def test_a_messaging_service_is_used_instead_of_a_from_number(env: Env) -> None:
    env.patient()
    settings = env.fake.settings(from_="+15005550006", messaging_service_sid="MG" + "2" * 32)
    env.enqueue("k")
    assert env.delivery(TwilioNotifier(settings, "")).run_once() == _report(sent=1)
    [request] = env.fake.created
    assert request.form["MessagingServiceSid"] == "MG" + "2" * 32
    assert "From" not in request.form and "StatusCallback" not in request.form


def test_critical_rows_go_first(env: Env) -> None:
    env.patient()
    env.enqueue("reminder", template="reminder_bp", params={}, critical=False, purpose="reminder")
    env.enqueue("advice")
    assert env.delivery().run_once(limit=1) == _report(sent=1)
    assert env.posted_bodies()[0].startswith("Давление 184/112")


def test_the_development_back_end_only_records(env: Env) -> None:
    env.patient()
    outbox_id = env.enqueue("k")
    assert env.delivery(OutboxOnlyNotifier()).run_once() == _report(sent=1)
    row = env.row(outbox_id)
    assert (row.status, row.provider_id) == ("sent", f"dev-{outbox_id}")
    assert row.body.startswith("Давление 184/112")
    assert env.fake.requests == []


def test_build_notifier_follows_the_backend_setting(env: Env) -> None:
    assert isinstance(build_notifier(Settings()), OutboxOnlyNotifier)
    settings = Settings(sms=SmsSettings(backend="twilio"), twilio=env.fake.settings())
    assert isinstance(build_notifier(settings), TwilioNotifier)


# -- retries ----------------------------------------------------------------------------------------


def test_429_is_retried_with_growing_backoff_and_ends_sent(env: Env) -> None:
    env.patient()
    outbox_id = env.enqueue("k")
    env.fake.fail_next(FakeResponse.rate_limited(), FakeResponse.rate_limited(), FakeResponse.rate_limited())
    delivery = env.delivery(retry_base_seconds=5, retry_max_seconds=900)
    for attempt, full_delay in enumerate((10, 20, 40), start=1):
        assert delivery.run_once() == _report(retried=1)
        row = env.row(outbox_id)
        assert (row.status, row.attempts, row.error_code) == ("pending", attempt, "20429")
        assert "Too Many Requests" in (row.last_error or "")
        wait = row.next_attempt_at - env.clock()
        assert timedelta(seconds=full_delay / 2) <= wait <= timedelta(seconds=full_delay)
        # Not due before the backoff has passed: no request at all.
        assert delivery.run_once() == _report()
        assert len(env.fake.created) == attempt
        env.clock.now = row.next_attempt_at
    assert delivery.run_once() == _report(sent=1)
    row = env.row(outbox_id)
    assert (row.status, row.attempts) == ("sent", 4)
    assert len(env.fake.created) == 4 and len(env.fake.messages) == 1
    # 429 means "not created": no lookup before retrying.
    assert [r.method for r in env.fake.requests] == ["POST"] * 4


def test_500_is_retried_after_checking_twilio_did_not_create_it(env: Env) -> None:
    env.patient()
    outbox_id = env.enqueue("k")
    env.fake.fail_next(FakeResponse.server_error())
    delivery = env.delivery()
    assert delivery.run_once() == _report(retried=1)
    row = env.row(outbox_id)
    assert (row.status, row.error_code, row.maybe_sent_since) == ("pending", "20500", NOON_EKB)
    env.clock.now = row.next_attempt_at
    assert delivery.run_once() == _report(sent=1)
    assert [r.method for r in env.fake.requests] == ["POST", "GET", "POST"]
    assert env.fake.requests[1].query["To"] == "+79991234567"
    assert env.row(outbox_id).status == "sent" and len(env.fake.messages) == 1


@pytest.mark.parametrize("created", [True, False], ids=["twilio-created-it", "twilio-never-had-it"])
def test_a_timeout_is_retried_without_a_double_send(env: Env, created: bool) -> None:
    env.patient()
    outbox_id = env.enqueue("k")
    env.fake.fail_next(FakeResponse.slow(3, create=created))
    delivery = env.delivery()
    assert delivery.run_once() == _report(retried=1)
    row = env.row(outbox_id)
    assert (row.status, row.error_code) == ("pending", "timeout")
    assert "no answer from Twilio in time" in (row.last_error or "")
    env.clock.now = row.next_attempt_at
    if created:
        assert delivery.run_once() == _report(reconciled=1)
        assert len(env.fake.created) == 1
    else:
        assert delivery.run_once() == _report(sent=1)
        assert len(env.fake.created) == 2
    [message] = env.fake.messages
    row = env.row(outbox_id)
    assert (row.status, row.provider_id, row.maybe_sent_since) == ("sent", message["sid"], None)


def test_an_unreachable_twilio_is_retried(env: Env) -> None:
    env.patient()
    outbox_id = env.enqueue("k")
    settings = env.fake.settings()
    env.fake.stop()
    assert env.delivery(TwilioNotifier(settings, PUBLIC_URL)).run_once() == _report(retried=1)
    row = env.row(outbox_id)
    # Connection refused: nothing can have been sent, so no lookup is needed next time.
    assert (row.status, row.error_code, row.maybe_sent_since) == ("pending", "connection", None)


def test_retries_stop_after_max_attempts(env: Env) -> None:
    env.patient()
    outbox_id = env.enqueue("k")
    env.fake.fail_next(*[FakeResponse.rate_limited()] * 3)
    delivery = env.delivery(max_attempts=3)
    outcomes = []
    for _ in range(3):
        outcomes.append(delivery.run_once())
        env.clock.advance(hours=1)
    assert outcomes == [_report(retried=1), _report(retried=1), _report(failed=1)]
    row = env.row(outbox_id)
    assert (row.status, row.attempts, row.error_code) == ("failed", 3, "20429")
    assert (row.last_error or "").startswith("gave up after 3 attempts")
    assert delivery.run_once() == _report()
    assert len(env.fake.created) == 3


def test_an_invalid_number_fails_at_once_and_is_never_retried(env: Env) -> None:
    env.patient()
    outbox_id = env.enqueue("k")
    env.fake.fail_next(FakeResponse.invalid_number("+79991234567"))
    delivery = env.delivery()
    assert delivery.run_once() == _report(failed=1)
    row = env.row(outbox_id)
    assert (row.status, row.attempts, row.error_code) == ("failed", 1, "21211")
    assert "+79991234567 is not a valid phone number" in (row.last_error or "")
    for _ in range(3):
        env.clock.advance(days=1)
        assert delivery.run_once() == _report()
    assert len(env.fake.requests) == 1


def test_an_unsubscribed_recipient_fails_and_is_opted_out(env: Env) -> None:
    env.patient()
    first = env.enqueue("first")
    env.fake.fail_next(FakeResponse.unsubscribed())
    assert env.delivery().run_once() == _report(failed=1)
    assert env.row(first).error_code == "21610"
    with env.db.sessions() as session:
        opted = session.get(SmsOptOut, "+79991234567")
        assert opted is not None and opted.source == "twilio:21610"
    second = env.enqueue("second", params={"systolic": 190, "diastolic": 100})
    assert env.delivery().run_once() == _report(suppressed=1)
    assert (env.row(second).status, env.row(second).error_code) == ("suppressed", "opted_out")
    assert len(env.fake.created) == 1


# -- SMS rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timezone", "local_time", "reminder_outcome"),
    [
        ("Asia/Yekaterinburg", "23:30", "deferred"),
        ("Europe/Moscow", "21:30", "sent"),  # the same instant is still evening in Moscow
        ("Asia/Vladivostok", "04:30", "deferred"),
    ],
)
def test_quiet_hours_defer_a_reminder_but_not_a_critical_text(
    env: Env, timezone: str, local_time: str, reminder_outcome: str
) -> None:
    env.clock.now = datetime(2026, 12, 1, 18, 30, tzinfo=UTC)  # 23:30 in Yekaterinburg
    env.patient(timezone=timezone)
    assert env.clock().astimezone(ZoneInfo(timezone)).strftime("%H:%M") == local_time
    critical = env.enqueue("advice")
    reminder = env.enqueue("reminder", template="reminder_bp", params={}, critical=False, purpose="reminder")
    delivery = env.delivery()
    delivery.run_once()
    assert env.row(critical).status == "sent"
    assert env.row(reminder).status == reminder_outcome
    if reminder_outcome == "deferred":
        row = env.row(reminder)
        eight_local = datetime.fromisoformat("2026-12-02T08:00").replace(tzinfo=ZoneInfo(timezone))
        assert row.next_attempt_at == eight_local.astimezone(UTC) and row.attempts == 0
        assert (row.last_error or "").startswith("quiet hours: held until 2026-12-02 08:00")
        assert len(env.fake.created) == 1
        env.clock.now = row.next_attempt_at - timedelta(seconds=1)
        assert delivery.run_once() == _report()
        env.clock.now = row.next_attempt_at
        assert delivery.run_once() == _report(sent=1)
        assert env.row(reminder).status == "sent"
    assert len(env.fake.created) == 2


def test_quiet_hours_do_not_apply_to_staff(env: Env) -> None:
    env.clock.now = datetime(2026, 12, 1, 18, 30, tzinfo=UTC)
    outbox_id = env.enqueue(
        "staff", recipient_kind="staff", template="test_message", params={}, critical=False, patient_id=None
    )
    assert env.delivery().run_once() == _report(sent=1)
    assert env.row(outbox_id).status == "sent"


def test_the_fourth_text_in_an_hour_is_suppressed_but_staff_texts_are_not_limited(env: Env) -> None:
    env.patient()
    ids = [env.enqueue(f"t{n}", params={"systolic": 180 + n, "diastolic": 110}) for n in range(4)]
    staff = [
        env.enqueue(
            f"s{n}",
            recipient_kind="staff",
            template="test_message",
            params={},
            critical=False,
            patient_id="P-1",
        )
        for n in range(5)
    ]
    assert env.delivery().run_once() == _report(sent=8, suppressed=1)
    statuses = [env.row(i).status for i in ids]
    assert statuses == ["sent", "sent", "sent", "suppressed"]
    row = env.row(ids[3])
    assert row.error_code == "rate_hour" and "3 text(s) in the last hour (max 3)" in (row.last_error or "")
    assert all(env.row(i).status == "sent" for i in staff)
    # An hour later the patient may be texted again.
    env.clock.advance(minutes=61)
    env.enqueue("t-later", params={"systolic": 200, "diastolic": 110})
    assert env.delivery().run_once() == _report(sent=1)


def test_a_critical_text_past_the_daily_cap_is_still_sent(env: Env) -> None:
    env.patient()
    delivery = env.delivery(max_per_hour=3, max_per_day=10)
    for n in range(10):
        env.enqueue(f"r{n}", template="remeasure_advice", params={}, critical=False, purpose="remeasure")
        assert delivery.run_once() == _report(sent=1), n
        env.clock.advance(minutes=21)
    env.clock.advance(minutes=61)
    routine = env.enqueue("routine", template="reminder_bp", params={}, critical=False, purpose="reminder")
    critical = env.enqueue("critical")
    assert delivery.run_once() == _report(sent=1, suppressed=1)
    assert (env.row(routine).status, env.row(routine).error_code) == ("suppressed", "rate_day")
    assert env.row(critical).status == "sent"
    assert len(env.fake.created) == 11


def test_an_opted_out_patient_gets_no_texts_not_even_critical_ones(env: Env) -> None:
    env.patient()
    with env.db.sessions.begin() as session:
        opt_out(session, "+79991234567", source="reply", now=env.clock())
    outbox_id = env.enqueue("k")
    assert env.delivery().run_once() == _report(suppressed=1)
    row = env.row(outbox_id)
    assert (row.status, row.error_code) == ("suppressed", "opted_out")
    assert "opted out" in (row.last_error or "")
    assert env.fake.requests == []


# -- crashes and concurrency -------------------------------------------------------------------------


class ProcessKilled(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even `except Exception`."""


class DiesAfterSending:
    """The worker dies right after Twilio accepted the text, before recording it."""

    def __init__(self, inner: TwilioNotifier) -> None:
        self.inner = inner

    def send(self, message: OutgoingSms) -> SendReceipt:
        self.inner.send(message)
        raise ProcessKilled

    def find_sent(
        self, to: str, body: str, since: datetime, exclude: Set[str] = frozenset()
    ) -> SendReceipt | None:
        return self.inner.find_sent(to, body, since, exclude)


class DiesBeforeSending(DiesAfterSending):
    """The worker dies after claiming the row, before the request left."""

    def send(self, message: OutgoingSms) -> SendReceipt:
        raise ProcessKilled


def test_a_row_left_in_flight_after_twilio_got_it_is_reconciled_not_resent(env: Env) -> None:
    env.patient()
    outbox_id = env.enqueue("k")
    with pytest.raises(ProcessKilled):
        env.delivery(DiesAfterSending(env.notifier)).run_once()
    assert env.row(outbox_id).status == "in_flight" and len(env.fake.created) == 1

    # A live claim is not stolen: another worker leaves it alone until the claim is stale.
    restarted = env.delivery()
    assert restarted.run_once() == _report()
    env.clock.advance(minutes=1)
    assert restarted.run_once() == _report()

    env.clock.advance(minutes=2)
    assert restarted.run_once() == _report(reconciled=1)
    [message] = env.fake.messages
    row = env.row(outbox_id)
    assert (row.status, row.provider_id, row.attempts) == ("sent", message["sid"], 2)
    assert len(env.fake.created) == 1
    assert [r.method for r in env.fake.requests] == ["POST", "GET"]


def test_a_row_left_in_flight_that_twilio_never_got_is_sent_once(env: Env) -> None:
    env.patient()
    outbox_id = env.enqueue("k")
    with pytest.raises(ProcessKilled):
        env.delivery(DiesBeforeSending(env.notifier)).run_once()
    assert env.row(outbox_id).status == "in_flight" and env.fake.requests == []
    env.clock.advance(minutes=3)
    delivery = env.delivery()
    assert delivery.run_once() == _report(sent=1)
    assert delivery.run_once() == _report()
    assert [r.method for r in env.fake.requests] == ["GET", "POST"]
    assert env.row(outbox_id).status == "sent" and len(env.fake.messages) == 1


def test_reconciling_a_queued_message_without_date_sent(migrated_db: MigratedDb) -> None:
    clock = Clock(NOON_EKB)
    # Twilio has not handed the text to the carrier yet: no DateSent, status "queued".
    with FakeTwilio(clock=clock, auto_send=False) as fake:
        env = Env(migrated_db, fake, clock, TwilioNotifier(fake.settings(), PUBLIC_URL))
        env.patient()
        outbox_id = env.enqueue("k")
        with pytest.raises(ProcessKilled):
            env.delivery(DiesAfterSending(env.notifier)).run_once()
        clock.advance(minutes=3)
        assert env.delivery().run_once() == _report(reconciled=1)
        assert env.row(outbox_id).provider_status == "queued" and len(fake.created) == 1


def test_an_identical_text_already_recorded_is_not_mistaken_for_the_lost_one(env: Env) -> None:
    env.patient()
    first = env.enqueue("reminder-1", template="reminder_bp", params={}, critical=False)
    assert env.delivery().run_once() == _report(sent=1)
    env.clock.advance(minutes=1)
    second = env.enqueue("reminder-2", template="reminder_bp", params={}, critical=False)
    with pytest.raises(ProcessKilled):
        env.delivery(DiesBeforeSending(env.notifier)).run_once()
    env.clock.advance(minutes=3)
    # Same phone, same body, within the lookup window: the first text's SID must not be reused.
    assert env.delivery().run_once() == _report(sent=1)
    assert env.row(first).provider_id != env.row(second).provider_id
    assert len(env.fake.created) == 2


def test_two_workers_on_two_engines_send_every_row_exactly_once(migrated_db: MigratedDb) -> None:
    patients = [f"P-{n}" for n in range(12)]
    with FakeTwilio() as fake:
        with migrated_db.sessions.begin() as session:
            for n, patient_id in enumerate(patients):
                session.add(Patient(id=patient_id, display_name="X", phone=f"+7999000{n:04d}"))
            session.flush()
            now = datetime.now(UTC).replace(hour=7)  # noon in Yekaterinburg
            for n, patient_id in enumerate(patients):
                # The last patient gets five texts: the hourly cap (3) must hold across both workers.
                for k in range(5 if n == len(patients) - 1 else 3):
                    enqueue(
                        session,
                        key=f"{patient_id}:{k}",
                        recipient_kind="patient",
                        phone=f"+7999000{n:04d}",
                        template="severe_bp_advice",
                        language="en",
                        params={"systolic": 180 + k, "diastolic": 110},
                        critical=True,
                        purpose="advice",
                        patient_id=patient_id,
                        now=now - timedelta(minutes=1),
                    )
        engines = [make_engine(migrated_db.url) for _ in range(2)]
        barrier = threading.Barrier(2, timeout=30)
        reports: list[list[DeliveryReport]] = [[], []]
        errors: list[BaseException] = []

        def worker(index: int) -> None:
            delivery = Delivery(
                session_factory(engines[index]),
                TwilioNotifier(fake.settings(), ""),
                SmsSettings(),
                clock=lambda: now,
            )
            try:
                barrier.wait()
                while True:
                    report = delivery.run_once(limit=7)
                    reports[index].append(report)
                    if report.total == 0:
                        break
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        finally:
            for engine in engines:
                engine.dispose()
        assert errors == []
        posted = Counter((r.form["To"], r.form["Body"]) for r in fake.created)
        assert len(posted) == 11 * 3 + 3 and set(posted.values()) == {1}
        assert all(sum(1 for to, _ in posted if to == f"+7999000{n:04d}") == 3 for n in range(12))
        sent = sum(r.sent for rs in reports for r in rs)
        suppressed = sum(r.suppressed for rs in reports for r in rs)
        assert (sent, suppressed) == (36, 2)
        with migrated_db.sessions() as session:
            statuses = Counter(session.scalars(select(OutboxMessage.status)))
        assert statuses == {"sent": 36, "suppressed": 2}


def test_the_process_entry_point_skips_rows_that_are_not_due(env: Env) -> None:
    env.patient()
    outbox_id = env.enqueue("k", now=env.clock() + timedelta(minutes=5))
    assert env.delivery().process(outbox_id) is Outcome.SKIPPED
    assert env.delivery().process(10_000) is Outcome.SKIPPED
    env.clock.advance(minutes=5)
    assert env.delivery().process(outbox_id) is Outcome.SENT
    assert env.delivery().process(outbox_id) is Outcome.SKIPPED


# -- the worker process's loops -----------------------------------------------------------------------


@contextmanager
def running_worker(
    env: Env,
    *,
    rules_every: float,
    texts_every: float,
    delivery: Delivery | None = None,
    clock: Callable[[], datetime] | None = None,
    before_stop: Callable[[], object] | None = None,
) -> Iterator[Any]:
    """A `Worker` running on its own thread while the body runs; stopped (and seen to stop) after it,
    `before_stop` first (e.g. to let a held-up round finish)."""
    from alerts.thresholds import Thresholds
    from alerts.worker import Worker
    from rpmgw.settings import AlertsSettings

    worker = Worker(
        sessions=env.db.sessions,
        delivery=delivery or env.delivery(),
        clinic=Thresholds(),
        settings=AlertsSettings(worker_interval_seconds=rules_every, delivery_interval_seconds=texts_every),
        clock=clock or env.clock,
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        if before_stop is not None:
            before_stop()
        worker.stop()
        thread.join(30)
    assert not thread.is_alive(), "the worker did not stop"


def test_the_worker_sends_a_queued_text_while_its_time_rules_are_still_running(env: Env) -> None:
    # The time rules look at every patient and may take a while under load; a critical text the gateway
    # queued meanwhile must not wait for them. Here the time rules' round is held up on its clock.
    from tests.helpers import wait_until

    env.patient()
    rules_running, release = threading.Event(), threading.Event()

    def held_rules_clock() -> datetime:
        rules_running.set()
        release.wait(60)
        return env.clock()

    with running_worker(
        env, rules_every=0.05, texts_every=0.05, clock=held_rules_clock, before_stop=release.set
    ):
        assert rules_running.wait(30), "the worker never started its time rules"
        row = env.enqueue("alert:9:patient:advice")
        wait_until(lambda: env.row(row).status == "sent", 30, "the text to be sent while the time rules run")
        assert len(env.fake.created) == 1


def test_the_worker_looks_for_texts_at_its_delivery_pace_and_runs_the_time_rules_at_theirs(env: Env) -> None:
    # The time rules look at every patient, so they run every few seconds; texts are looked for far more
    # often (the bench once ran both every 50 ms, and the time rules took the CPU the gateway needed).
    from tests.helpers import wait_until

    class CountingDelivery(Delivery):
        rounds = 0

        def run_once(self, limit: int = 100, *, critical: bool | None = None) -> DeliveryReport:
            if critical:
                CountingDelivery.rounds += 1
            return super().run_once(limit, critical=critical)

    counting = CountingDelivery(
        env.db.sessions, env.notifier, SmsSettings(), clock=env.clock, rng=random.Random(7)
    )
    with running_worker(env, rules_every=3600, texts_every=0.02, delivery=counting) as worker:
        wait_until(lambda: CountingDelivery.rounds >= 5, 30, "five delivery rounds")
        assert worker.stats.ticks == 1  # the time rules ran once, at the start, and wait an hour now


def test_a_critical_text_does_not_wait_behind_a_run_of_routine_texts(env: Env) -> None:
    # At 08:00 a region's reminders, held through quiet hours, all fall due; each is a round trip to the
    # provider. A critical text queued meanwhile goes out on its own lane, not after them.
    from tests.helpers import wait_until

    routine = 30
    for n in range(routine):
        env.patient(f"P-{n}", phone=f"+7999000{n:04d}")
        env.enqueue(
            f"reminder:{n}",
            template="reminder_bp",
            params={},
            critical=False,
            purpose="reminder",
            patient_id=f"P-{n}",
            phone=f"+7999000{n:04d}",
        )
    env.patient("P-urgent", phone="+79995550101")
    env.fake.fail_next(*(FakeResponse.slow(0.2) for _ in range(routine + 1)))  # 6 s of routine texts
    with running_worker(env, rules_every=3600, texts_every=0.05):
        wait_until(lambda: len(env.fake.created) >= 1, 30, "the first routine text to reach the provider")
        urgent = env.enqueue("alert:1:patient:advice", patient_id="P-urgent", phone="+79995550101")
        wait_until(lambda: env.row(urgent).status == "sent", 30, "the critical text to be sent")
        routine_sent = sum(1 for r in env.fake.created if r.form["To"] != "+79995550101")
        assert routine_sent < routine, "the critical text went out only after every routine one"
        wait_until(lambda: len(env.fake.created) == routine + 1, 60, "the routine texts to be sent too")
    assert len({r.form["To"] for r in env.fake.created}) == routine + 1  # each text once


def test_the_worker_stops_with_an_error_when_one_of_its_loops_dies(env: Env) -> None:
    # A worker quietly running without its routine texts (or its time rules) would leave reminders
    # unsent with nobody told; it stops instead, and its supervisor restarts it.
    from alerts.thresholds import Thresholds
    from alerts.worker import Worker
    from rpmgw.settings import AlertsSettings

    class BrokenRoutineLane(Delivery):
        def run_once(self, limit: int = 100, *, critical: bool | None = None) -> DeliveryReport:
            if critical is False:
                raise ValueError("routine lane broke")
            return super().run_once(limit, critical=critical)

    worker = Worker(
        sessions=env.db.sessions,
        delivery=BrokenRoutineLane(
            env.db.sessions, env.notifier, SmsSettings(), clock=env.clock, rng=random.Random(7)
        ),
        clinic=Thresholds(),
        settings=AlertsSettings(worker_interval_seconds=3600, delivery_interval_seconds=0.05),
        clock=env.clock,
    )
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the worker went on without its routine lane"
    assert len(raised) == 1 and "routine lane broke" in str(raised[0])
