"""`rpmgw user add` and `rpmgw user passwd`: web accounts from the command line.

A user is a staff member (alerts.staff) with a password. Passwords are read from a file or from
standard input, never from the command line (it would land in the shell history and in `ps`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from alerts import staff as staff_admin
from alerts.errors import UnknownStaff
from alerts.tables import STAFF_ROLES
from rpmgw.cli import SettingsContext, pass_settings
from rpmgw.db import check_current, make_engine, session_factory
from rpmgw.models import utcnow
from web import accounts, audit
from web.audit import Actor, Origin
from web.errors import WeakPassword

P = ParamSpec("P")
R = TypeVar("R")
_CLI_ORIGIN = Origin(ip="cli", user_agent="rpmgw", request="")


def _read_password(password_file: Path | None, password_stdin: bool) -> str:
    if (password_file is None) == (not password_stdin):
        raise click.UsageError("give exactly one of --password-file FILE or --password-stdin")
    text = password_file.read_text(encoding="utf-8") if password_file is not None else sys.stdin.read()
    # One line: a trailing newline from `echo` or an editor is not part of the password.
    password = text.splitlines()[0] if text.strip() else ""
    if not password:
        raise click.UsageError("the password is empty")
    return password


def _password_options(command: Callable[P, R]) -> Callable[P, R]:
    command = click.option(
        "--password-stdin", is_flag=True, help="Read the password from standard input (first line)."
    )(command)
    return click.option(
        "--password-file",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="Read the password from this file (first line).",
    )(command)


@click.group()
def user() -> None:
    """Web application accounts (staff members with a password)."""


@user.command("add")
@click.option("--username", required=True, help="Login name: 2-64 of A-Z a-z 0-9 _ . -")
@click.option("--name", "display_name", required=True, help="Name shown to colleagues.")
@click.option("--role", type=click.Choice(STAFF_ROLES), required=True)
@click.option("--phone", default=None, help="E.164 number for pages (needed for a new staff member).")
@click.option("--team", default=None, help="Care team to join (created when missing).")
@click.option("--responsible", is_flag=True, help="Make the doctor the team's responsible doctor.")
@click.option("--language", type=click.Choice(["ru", "en"]), default="ru", show_default=True)
@_password_options
@pass_settings
def add(
    ctx: SettingsContext,
    username: str,
    display_name: str,
    role: str,
    phone: str | None,
    team: str | None,
    responsible: bool,
    language: str,
    password_file: Path | None,
    password_stdin: bool,
) -> None:
    """Create a user, or give an existing staff member without a password a login."""
    password = _read_password(password_file, password_stdin)
    engine = make_engine(ctx.settings.database_url)
    try:
        check_current(engine)
        with session_factory(engine).begin() as session:
            now = utcnow()
            try:
                member = staff_admin.get_staff(session, username)
            except UnknownStaff:
                if phone is None:
                    raise click.UsageError(f"{username!r} is a new staff member: give --phone") from None
                member = staff_admin.add_staff(
                    session,
                    username=username,
                    display_name=display_name,
                    phone=phone,
                    role=role,
                    language=language,
                )
            else:
                if accounts.has_password(session, member.id):
                    raise click.UsageError(f"{username!r} already has a login: use `rpmgw user passwd`")
            try:
                accounts.set_password(session, member, password, now=now)
            except WeakPassword as exc:
                raise click.UsageError(str(exc)) from None
            if team:
                if team not in {t.name for t in staff_admin.list_care_teams(session)}:
                    staff_admin.add_care_team(session, team)
                staff_admin.add_member(session, team, username, responsible=responsible)
            audit.record(
                session,
                actor=Actor("cli"),
                action="add_staff",
                origin=_CLI_ORIGIN,
                now=now,
                object_type="staff",
                object_id=username,
                detail=f"{member.role} {team or ''}".strip(),
            )
    finally:
        engine.dispose()
    click.echo(f"user {username} ({role}) can log in" + (f"; care team {team}" if team else ""))


@user.command("passwd")
@click.option("--username", required=True)
@_password_options
@pass_settings
def passwd(ctx: SettingsContext, username: str, password_file: Path | None, password_stdin: bool) -> None:
    """Set a user's password (their open sessions end)."""
    password = _read_password(password_file, password_stdin)
    engine = make_engine(ctx.settings.database_url)
    try:
        check_current(engine)
        with session_factory(engine).begin() as session:
            member = staff_admin.get_staff(session, username)
            try:
                accounts.set_password(session, member, password, now=utcnow())
            except WeakPassword as exc:
                raise click.UsageError(str(exc)) from None
            audit.record(
                session,
                actor=Actor("cli"),
                action="reset_password",
                origin=_CLI_ORIGIN,
                now=utcnow(),
                object_type="staff",
                object_id=username,
            )
    finally:
        engine.dispose()
    click.echo(f"password of {username} set")


def register(cli: click.Group) -> None:
    """Add `rpmgw user` to the CLI."""
    cli.add_command(user)
