"""Twilio webhooks on SQLite and PostgreSQL: signed status callbacks and STOP/START replies, over real
HTTP from FakeTwilio to the app, and refusals (403, nothing changed) for bad or missing signatures."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.serving import BaseWSGIServer, make_server

from alerts.notify.delivery import Delivery, DeliveryReport
from alerts.notify.notifier import OutgoingSms, SendReceipt
from alerts.notify.outbox import enqueue
from alerts.notify.tables import OutboxMessage, SmsOptOut
from alerts.notify.twilio_sms import TwilioNotifier
from rpmgw.models import Patient
from rpmgw.settings import DatabaseSettings, Settings, SmsSettings, TwilioSettings
from tests.fakes.twilio_server import DEFAULT_AUTH_TOKEN, FakeTwilio, twilio_signature
from tests.fixtures.db import MigratedDb
from web.webhooks import webhooks

NOON_EKB = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
PHONE = "+79991234567"
PUBLIC_URL = "https://rpm.example.ru"


def _settings(db_url: str, twilio: TwilioSettings, public_url: str, **extra: Any) -> Settings:
    return Settings(
        database=DatabaseSettings(url=db_url),
        sms=SmsSettings(backend="twilio"),
        twilio=twilio,
        public_url=public_url,
        **extra,
    )


def _app(db: MigratedDb, settings: Settings) -> Flask:
    """The blueprint's contract (see web.webhooks): settings in config, sessions in extensions."""
    app = Flask(__name__)
    app.config["RPMGW_SETTINGS"] = settings
    app.extensions["rpmgw_sessions"] = db.sessions
    app.register_blueprint(webhooks)
    return app


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Live:
    """The webhooks served over HTTP on 127.0.0.1, with Twilio faked and the outbox at hand."""

    db: MigratedDb
    fake: FakeTwilio
    url: str
    clock: Clock

    def notifier(self) -> TwilioNotifier:
        return TwilioNotifier(self.fake.settings(), self.url)

    def delivery(self, notifier: Any = None) -> Delivery:
        return Delivery(
            self.db.sessions,
            notifier or self.notifier(),
            SmsSettings(),
            clock=self.clock,
            rng=random.Random(3),
        )

    def enqueue(self, key: str, systolic: int = 184) -> int:
        with self.db.sessions.begin() as session:
            enqueue(
                session,
                key=key,
                recipient_kind="patient",
                phone=PHONE,
                template="severe_bp_advice",
                language="ru",
                params={"systolic": systolic, "diastolic": 112},
                critical=True,
                purpose="advice",
                patient_id="P-1",
                now=self.clock(),
            )
            return session.scalars(select(OutboxMessage.id).where(OutboxMessage.idempotency_key == key)).one()

    def row(self, outbox_id: int) -> OutboxMessage:
        with self.db.sessions() as session:
            row = session.get(OutboxMessage, outbox_id)
            assert row is not None
            return row

    def opted_out(self) -> bool:
        with self.db.sessions() as session:
            return session.get(SmsOptOut, PHONE) is not None


def _add_patient(db: MigratedDb) -> None:
    with db.sessions.begin() as session:
        session.add(Patient(id="P-1", display_name="Иванова Мария", phone=PHONE, language="ru"))


@pytest.fixture
def live(migrated_db: MigratedDb) -> Iterator[Live]:
    _add_patient(migrated_db)
    clock = Clock(NOON_EKB)
    with FakeTwilio(clock=clock) as fake:
        app = _app(migrated_db, _settings(migrated_db.url, fake.settings(), ""))
        server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        url = f"http://127.0.0.1:{server.server_port}"
        app.config["RPMGW_SETTINGS"] = _settings(migrated_db.url, fake.settings(), url)
        thread = threading.Thread(target=server.serve_forever, name="webhooks", daemon=True)
        thread.start()
        try:
            yield Live(migrated_db, fake, url, clock)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


@pytest.fixture
def client(migrated_db: MigratedDb) -> FlaskClient:
    _add_patient(migrated_db)
    twilio = TwilioSettings(
        account_sid="AC" + "1" * 32, auth_token=DEFAULT_AUTH_TOKEN, from_="+15005550006", base_url=""
    )
    return _app(migrated_db, _settings(migrated_db.url, twilio, PUBLIC_URL)).test_client()


def _signed_post(client: FlaskClient, path: str, params: dict[str, str], **headers: str) -> Any:
    signature = twilio_signature(DEFAULT_AUTH_TOKEN, PUBLIC_URL + path, params)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature, **headers})


# -- status callbacks -------------------------------------------------------------------------------


def test_status_callbacks_over_http_update_the_delivery_status(live: Live) -> None:
    delivered_id = live.enqueue("a")
    undelivered_id = live.enqueue("b", systolic=190)
    assert live.delivery().run_once() == DeliveryReport(sent=2)
    sids = {m["body"][:16]: m["sid"] for m in live.fake.messages}
    delivered_sid, undelivered_sid = sids["Давление 184/112"], sids["Давление 190/112"]

    assert live.fake.status_callback(delivered_sid, "sent").status_code == 200
    assert (live.row(delivered_id).status, live.row(delivered_id).provider_status) == ("sent", "sent")
    assert live.fake.status_callback(delivered_sid, "delivered").status_code == 200
    row = live.row(delivered_id)
    assert (row.status, row.provider_status, row.error_code) == ("delivered", "delivered", None)

    assert live.fake.status_callback(undelivered_sid, "undelivered", error_code=30003).status_code == 200
    row = live.row(undelivered_id)
    assert (row.status, row.provider_status, row.error_code) == ("failed", "undelivered", "30003")
    assert "undelivered (error 30003)" in (row.last_error or "")


class ProcessKilled(BaseException):
    """Stands for SIGKILL."""


class DiesAfterSending:
    def __init__(self, inner: TwilioNotifier) -> None:
        self.inner = inner

    def send(self, message: OutgoingSms) -> SendReceipt:
        self.inner.send(message)
        raise ProcessKilled

    def find_sent(
        self, to: str, body: str, since: datetime, exclude: Set[str] = frozenset()
    ) -> SendReceipt | None:
        return self.inner.find_sent(to, body, since, exclude)


def test_a_callback_for_a_row_in_flight_lets_recovery_skip_the_lookup(live: Live) -> None:
    outbox_id = live.enqueue("a")
    with pytest.raises(ProcessKilled):
        live.delivery(DiesAfterSending(live.notifier())).run_once()
    [message] = live.fake.messages
    assert live.fake.status_callback(message["sid"], "delivered").status_code == 200
    row = live.row(outbox_id)
    assert (row.status, row.provider_id, row.provider_status) == ("in_flight", message["sid"], "delivered")

    live.clock.now += timedelta(minutes=3)
    assert live.delivery().run_once() == DeliveryReport(reconciled=1)
    row = live.row(outbox_id)
    assert (row.status, row.provider_id) == ("delivered", message["sid"])
    assert [r.method for r in live.fake.requests] == ["POST"]


def test_a_callback_for_an_unknown_message_is_acknowledged_and_changes_nothing(client: FlaskClient) -> None:
    params = {"MessageSid": "SM" + "9" * 32, "MessageStatus": "delivered", "AccountSid": "AC" + "1" * 32}
    assert _signed_post(client, "/twilio/status", params).status_code == 200


def test_a_callback_without_a_message_sid_is_a_bad_request(client: FlaskClient) -> None:
    assert _signed_post(client, "/twilio/status", {"MessageStatus": "delivered"}).status_code == 400


# -- replies ----------------------------------------------------------------------------------------


def test_stop_by_reply_stops_texts_and_start_restores_them(live: Live) -> None:
    answer = live.fake.inbound(f"{live.url}/twilio/inbound", from_=PHONE, body="СТОП")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/xml")
    assert "<Response></Response>" in answer.text
    assert live.opted_out()

    stopped = live.enqueue("while-stopped")
    assert live.delivery().run_once() == DeliveryReport(suppressed=1)
    assert live.row(stopped).error_code == "opted_out"
    assert live.fake.created == []

    assert live.fake.inbound(f"{live.url}/twilio/inbound", from_=PHONE, body="Старт").status_code == 200
    assert not live.opted_out()
    again = live.enqueue("after-start", systolic=200)
    assert live.delivery().run_once() == DeliveryReport(sent=1)
    assert live.row(again).status == "sent" and len(live.fake.created) == 1
    # A text suppressed while opted out stays suppressed: it is not sent late.
    assert live.row(stopped).status == "suppressed"


@pytest.mark.parametrize(
    ("body", "opted_out"),
    [
        ("STOP", True),
        ("stop", True),
        ("  Stop\n", True),
        ("СТОП", True),
        ("Стоп", True),
        ("стоп.", True),
        ("Спасибо", False),
        ("stop sending please", False),
        ("", False),
    ],
)
def test_reply_words(client: FlaskClient, migrated_db: MigratedDb, body: str, opted_out: bool) -> None:
    params = {"From": PHONE, "To": "+15005550006", "Body": body, "MessageSid": "SM" + "3" * 32}
    assert _signed_post(client, "/twilio/inbound", params).status_code == 200
    with migrated_db.sessions() as session:
        assert (session.get(SmsOptOut, PHONE) is not None) is opted_out


def test_twilio_advanced_opt_out_type_is_honoured(client: FlaskClient, migrated_db: MigratedDb) -> None:
    params = {"From": PHONE, "Body": "ОТПИСКА", "OptOutType": "STOP"}
    assert _signed_post(client, "/twilio/inbound", params).status_code == 200
    with migrated_db.sessions() as session:
        stored = session.get(SmsOptOut, PHONE)
        assert stored is not None and stored.source == "reply"
    assert _signed_post(client, "/twilio/inbound", {**params, "OptOutType": "START"}).status_code == 200
    with migrated_db.sessions() as session:
        assert session.get(SmsOptOut, PHONE) is None


# -- signatures -------------------------------------------------------------------------------------

STOP = {"From": PHONE, "To": "+15005550006", "Body": "STOP", "MessageSid": "SM" + "4" * 32}


def _bad_signatures() -> list[tuple[str, dict[str, str], dict[str, str]]]:
    def sign(url: str, params: dict[str, str], token: str = DEFAULT_AUTH_TOKEN) -> dict[str, str]:
        return {"X-Twilio-Signature": twilio_signature(token, url, params)}

    url = PUBLIC_URL + "/twilio/inbound"
    return [
        ("missing", STOP, {}),
        ("empty", STOP, {"X-Twilio-Signature": ""}),
        ("garbage", STOP, {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}),
        ("another token", STOP, sign(url, STOP, token="another-token-0123456789abcdef")),
        ("another host", STOP, sign("https://evil.example.com/twilio/inbound", STOP)),
        ("plain http", STOP, sign("http://rpm.example.ru/twilio/inbound", STOP)),
        ("another path", STOP, sign(PUBLIC_URL + "/twilio/status", STOP)),
        ("tampered body", {**STOP, "From": "+79990000000"}, sign(url, STOP)),
        ("extra field", {**STOP, "OptOutType": "STOP"}, sign(url, STOP)),
    ]


@pytest.mark.parametrize(
    ("params", "headers"), [(p, h) for _, p, h in _bad_signatures()], ids=[n for n, _, _ in _bad_signatures()]
)
def test_bad_or_missing_signatures_get_403_and_change_nothing(
    client: FlaskClient, migrated_db: MigratedDb, params: dict[str, str], headers: dict[str, str]
) -> None:
    with migrated_db.sessions.begin() as session:
        enqueue(
            session,
            key="k",
            recipient_kind="patient",
            phone=PHONE,
            template="reminder_bp",
            language="ru",
            params={},
            critical=False,
            purpose="reminder",
            patient_id="P-1",
            now=NOON_EKB,
        )
        row = session.scalars(select(OutboxMessage)).one()
        row.status, row.provider_id = "sent", "SM" + "5" * 32
    assert client.post("/twilio/inbound", data=params, headers=headers).status_code == 403
    callback = {"MessageSid": "SM" + "5" * 32, "MessageStatus": "delivered"}
    assert client.post("/twilio/status?outbox_id=1", data=callback, headers=headers).status_code == 403
    with migrated_db.sessions() as session:
        assert session.scalars(select(SmsOptOut)).all() == []
        stored = session.scalars(select(OutboxMessage)).one()
        assert (stored.status, stored.provider_status) == ("sent", None)


def test_the_same_requests_signed_properly_are_accepted(client: FlaskClient, migrated_db: MigratedDb) -> None:
    # The counterpart of the refusals above: the checks refuse forgeries, not everything.
    assert _signed_post(client, "/twilio/inbound", STOP).status_code == 200
    with migrated_db.sessions() as session:
        assert session.get(SmsOptOut, PHONE) is not None


def test_without_an_auth_token_every_webhook_is_refused(migrated_db: MigratedDb) -> None:
    _add_patient(migrated_db)
    # The development back end needs no Twilio account: then no webhook can be verified.
    app = _app(migrated_db, Settings(database=DatabaseSettings(url=migrated_db.url), public_url=PUBLIC_URL))
    answer = app.test_client().post(
        "/twilio/inbound",
        data=STOP,
        headers={"X-Twilio-Signature": twilio_signature("", PUBLIC_URL + "/twilio/inbound", STOP)},
    )
    assert answer.status_code == 403


def test_behind_a_proxy_the_forwarded_scheme_and_host_are_what_twilio_signed(migrated_db: MigratedDb) -> None:
    _add_patient(migrated_db)
    twilio = TwilioSettings(account_sid="AC" + "1" * 32, auth_token=DEFAULT_AUTH_TOKEN, from_="+15005550006")
    client = _app(migrated_db, _settings(migrated_db.url, twilio, "")).test_client()
    headers = {
        "X-Twilio-Signature": twilio_signature(DEFAULT_AUTH_TOKEN, PUBLIC_URL + "/twilio/inbound", STOP)
    }
    # Without the proxy's headers the app sees http://localhost/...: not what Twilio signed.
    assert client.post("/twilio/inbound", data=STOP, headers=headers).status_code == 403
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "rpm.example.ru", **headers}
    assert client.post("/twilio/inbound", data=STOP, headers=forwarded).status_code == 200
    with migrated_db.sessions() as session:
        assert session.get(SmsOptOut, PHONE) is not None


def test_the_web_application_serves_the_webhooks(migrated_db: MigratedDb, tmp_path: Path) -> None:
    from web import create_app

    _add_patient(migrated_db)
    twilio = TwilioSettings(account_sid="AC" + "1" * 32, auth_token=DEFAULT_AUTH_TOKEN, from_="+15005550006")
    client = create_app(_settings(migrated_db.url, twilio, PUBLIC_URL, data_dir=tmp_path)).test_client()
    assert client.post("/twilio/inbound", data=STOP).status_code == 403
    assert _signed_post(client, "/twilio/inbound", STOP).status_code == 200
    with migrated_db.sessions() as session:
        assert session.get(SmsOptOut, PHONE) is not None
