"""`rpmgw sms ...` through click's CliRunner, on SQLite and PostgreSQL, with Twilio faked."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
from click.testing import CliRunner, Result

from alerts.notify.cli import register
from alerts.notify.outbox import enqueue
from rpmgw.cli import SettingsContext
from rpmgw.models import Patient
from tests.fakes.twilio_server import FakeResponse, FakeTwilio
from tests.fixtures.db import MigratedDb


def _cli() -> click.Group:
    @click.group()
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.ensure_object(SettingsContext)

    register(group)
    return group


def _run(db: MigratedDb, *args: str, **env: str) -> Result:
    environment = {"RPMGW_DATABASE__URL": db.url, "RPMGW_TIMEZONE": "Asia/Yekaterinburg"} | env
    return CliRunner().invoke(_cli(), ["sms", *args], env=environment, catch_exceptions=False)


def _seed(db: MigratedDb) -> None:
    with db.sessions.begin() as session:
        session.add(Patient(id="P-1", display_name="Иванова Мария", phone="+79991234567", language="ru"))
        session.flush()
        for n, minute in enumerate((0, 5)):
            enqueue(
                session,
                key=f"k{n}",
                recipient_kind="patient",
                phone="+79991234567",
                template="severe_bp_advice" if n == 0 else "reminder_bp",
                language="ru",
                params={"systolic": 184, "diastolic": 112},
                critical=n == 0,
                purpose="advice" if n == 0 else "reminder",
                patient_id="P-1",
                now=datetime(2026, 12, 1, 7, minute, tzinfo=UTC),
            )


def test_list_shows_the_newest_first_and_filters(migrated_db: MigratedDb) -> None:
    _seed(migrated_db)
    result = _run(migrated_db, "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "STATUS", "TRIES", "PHONE", "PURPOSE", "ERROR", "TEXT"]
    assert "2026-12-01 12:05" in lines[1] and "reminder" in lines[1]
    assert "advice!" in lines[2] and "Давление 184/112" in lines[2] and lines[2].endswith("…")

    as_json = json.loads(_run(migrated_db, "list", "--json", "--status", "pending", "--limit", "1").stdout)
    assert [(e["key"], e["status"]) for e in as_json] == [("k1", "pending")]
    assert _run(migrated_db, "list", "--status", "sent").stdout.strip().endswith("(no texts)")
    assert json.loads(_run(migrated_db, "list", "--json", "--patient", "P-2").stdout) == []


def test_send_test_through_twilio(migrated_db: MigratedDb) -> None:
    with FakeTwilio() as fake:
        result = _run(migrated_db, "send-test", "--to", "+79990000001", "--language", "en", **fake.env())
        assert result.exit_code == 0, result.output
        [request] = fake.created
        assert request.form["To"] == "+79990000001" and request.form["Body"] == "rpm-gateway: test message."
        sid = fake.messages[0]["sid"]
        assert result.stdout.strip() == f"outbox row 1: sent via twilio ({sid})"

        fake.fail_next(FakeResponse.invalid_number("+79990000002"))
        result = _run(migrated_db, "send-test", "--to", "+79990000002", **fake.env())
        assert result.exit_code == 1
        assert result.stdout.startswith("outbox row 2: failed via twilio (21211: ")
    listed = json.loads(_run(migrated_db, "list", "--json").stdout)
    assert [(e["purpose"], e["recipient_kind"], e["status"]) for e in listed] == [
        ("test", "staff", "failed"),
        ("test", "staff", "sent"),
    ]


def test_send_test_with_the_development_back_end(migrated_db: MigratedDb) -> None:
    result = _run(migrated_db, "send-test", "--to", "+79990000001", RPMGW_SMS__BACKEND="outbox")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "outbox row 1: sent via outbox (dev-1)"


def test_a_malformed_number_is_refused(migrated_db: MigratedDb) -> None:
    result = _run(migrated_db, "send-test", "--to", "89991234567")
    assert result.exit_code == 2
    assert "is not an E.164 number like +79991234567" in result.output


def test_opt_out_and_in_by_hand(migrated_db: MigratedDb) -> None:
    assert _run(migrated_db, "opt-out", "+79991234567").stdout.strip() == "+79991234567 opted out"
    assert _run(migrated_db, "opt-out", "+79991234567").stdout.strip() == "+79991234567 was already opted out"
    assert (
        _run(migrated_db, "opt-in", "+79991234567").stdout.strip() == "+79991234567 may receive texts again"
    )
    assert _run(migrated_db, "opt-in", "+79991234567").stdout.strip() == "+79991234567 was not opted out"
