"""`rpmgw sms ...`: look at the outbox, send a test text, opt a number out or back in by hand."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from zoneinfo import ZoneInfo

import click
from sqlalchemy import select

from alerts.notify.delivery import Delivery
from alerts.notify.notifier import build_notifier
from alerts.notify.outbox import enqueue, list_outbox, opt_in, opt_out
from alerts.notify.tables import OutboxMessage, OutboxStatus, RecipientKind
from rpmgw.cli import SettingsContext, pass_settings
from rpmgw.commands.admin import clear_errors
from rpmgw.db import migrated_sessions
from rpmgw.models import LANGUAGES, utcnow
from rpmgw.validation import PHONE_PATTERN

BODY_PREVIEW = 60


def register(cli: click.Group) -> None:
    """Add `rpmgw sms` to the `rpmgw` group."""
    cli.add_command(sms)


def _phone(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not re.fullmatch(PHONE_PATTERN, value):
        raise click.BadParameter(f"{value!r} is not an E.164 number like +79991234567", ctx, param)
    return value


@click.group()
def sms() -> None:
    """Texts to patients and staff (the SMS outbox)."""


@sms.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in OutboxStatus]),
    help="Only texts with this status (repeatable).",
)
@click.option("--patient", "patient_id", help="Only texts to this patient.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (with the full bodies).")
@pass_settings
@clear_errors
def sms_list(
    ctx: SettingsContext, statuses: Sequence[str], patient_id: str | None, limit: int, as_json: bool
) -> None:
    """List the newest texts first."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions() as session:
        entries = list_outbox(session, status=list(statuses) or None, patient_id=patient_id, limit=limit)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], ensure_ascii=False, indent=2))
        return
    zone = ZoneInfo(ctx.settings.timezone)
    rows = [
        (
            str(e.id),
            e.created_at.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
            e.status,
            str(e.attempts),
            e.phone,
            e.purpose + ("!" if e.critical else ""),
            e.error_code or "",
            e.body if len(e.body) <= BODY_PREVIEW else e.body[: BODY_PREVIEW - 1] + "…",
        )
        for e in entries
    ]
    headers = ("ID", "CREATED", "STATUS", "TRIES", "PHONE", "PURPOSE", "ERROR", "TEXT")
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if not rows:
        click.echo("(no texts)")


@sms.command("send-test")
@click.option("--to", "phone", required=True, callback=_phone, help="E.164 number, e.g. +79991234567.")
@click.option("--language", type=click.Choice(LANGUAGES), default="ru", show_default=True)
@pass_settings
@clear_errors
def send_test(ctx: SettingsContext, phone: str, language: str) -> None:
    """Send a test text through the configured back end now (it is kept in the outbox like any other)."""
    settings = ctx.settings
    with migrated_sessions(settings.database_url) as sessions:
        key = f"test:{uuid.uuid4()}"
        with sessions.begin() as session:
            enqueue(
                session,
                key=key,
                recipient_kind=RecipientKind.STAFF,
                phone=phone,
                template="test_message",
                language=language,
                params={},
                critical=False,
                purpose="test",
                now=utcnow(),
            )
            outbox_id = session.scalars(
                select(OutboxMessage.id).where(OutboxMessage.idempotency_key == key)
            ).one()
        delivery = Delivery(
            sessions, build_notifier(settings), settings.sms, default_timezone=settings.timezone
        )
        outcome = delivery.process(outbox_id)
        with sessions() as session:
            row = session.get(OutboxMessage, outbox_id)
            assert row is not None
            detail = row.provider_id if row.provider_id else f"{row.error_code}: {row.last_error}"
    click.echo(f"outbox row {outbox_id}: {outcome.value} via {settings.sms.backend} ({detail})")
    if row.status not in (OutboxStatus.SENT, OutboxStatus.DELIVERED):
        raise click.exceptions.Exit(1)


@sms.command("opt-out")
@click.argument("phone", callback=_phone)
@pass_settings
@clear_errors
def sms_opt_out(ctx: SettingsContext, phone: str) -> None:
    """Stop all texts to PHONE (as if it had replied STOP)."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        changed = opt_out(session, phone, source="admin", now=utcnow())
    click.echo(f"{phone} opted out" if changed else f"{phone} was already opted out")


@sms.command("opt-in")
@click.argument("phone", callback=_phone)
@pass_settings
@clear_errors
def sms_opt_in(ctx: SettingsContext, phone: str) -> None:
    """Allow texts to PHONE again (as if it had replied START)."""
    with migrated_sessions(ctx.settings.database_url) as sessions, sessions.begin() as session:
        changed = opt_in(session, phone)
    click.echo(f"{phone} may receive texts again" if changed else f"{phone} was not opted out")
