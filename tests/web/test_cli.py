"""`rpmgw user add` and `rpmgw user passwd` (web/cli.py, registered on a group of its own here)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from alerts import staff as staff_admin
from rpmgw.db import make_engine, session_factory, upgrade
from web import accounts, cli
from web.tables import AuditEntry


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    upgrade(url)
    return {"RPMGW_DATABASE__URL": url, "RPMGW_DATA_DIR": str(tmp_path)}


def _run(env: dict[str, str], args: list[str], stdin: str | None = None) -> tuple[int, str]:
    group = click.Group()
    cli.register(group)
    result = CliRunner().invoke(group, args, input=stdin, env=env)
    return result.exit_code, result.output


def _check_login(env: dict[str, str], username: str, password: str) -> bool:
    engine = make_engine(env["RPMGW_DATABASE__URL"])
    try:
        with session_factory(engine)() as session:
            member = staff_admin.get_staff(session, username)
            from werkzeug.security import check_password_hash

            from web.tables import StaffCredential

            credential = session.get(StaffCredential, member.id)
            return credential is not None and check_password_hash(credential.password_hash, password)
    finally:
        engine.dispose()


def test_user_add_from_stdin_with_a_team_then_passwd_from_a_file(env: dict[str, str], tmp_path: Path) -> None:
    code, output = _run(
        env,
        [
            "user",
            "add",
            "--username",
            "ivanova",
            "--name",
            "Анна Иванова",
            "--role",
            "doctor",
            "--phone",
            "+79990000001",
            "--team",
            "Therapy 1",
            "--responsible",
            "--password-stdin",
        ],
        stdin="first password!\n",
    )
    assert code == 0, output
    assert "user ivanova (doctor) can log in; care team Therapy 1" in output
    assert _check_login(env, "ivanova", "first password!")
    secret = tmp_path / "pw"
    secret.write_text("second password!\n")
    code, output = _run(env, ["user", "passwd", "--username", "ivanova", "--password-file", str(secret)])
    assert code == 0, output
    assert _check_login(env, "ivanova", "second password!")
    engine = make_engine(env["RPMGW_DATABASE__URL"])
    with session_factory(engine)() as session:
        teams = staff_admin.list_care_teams(session)
        actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))
    engine.dispose()
    assert teams[0].responsible is not None and teams[0].responsible.username == "ivanova"
    assert actions == ["add_staff", "reset_password"]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (
            ["--phone", "+79990000001", "--password-stdin"],
            "short\n",
            f"at least {accounts.MIN_PASSWORD_LENGTH}",
        ),
        (["--password-stdin"], "long enough password\n", "give --phone"),
        (["--phone", "+79990000001"], None, "exactly one of --password-file"),
        (["--phone", "+79990000001", "--password-stdin"], "\n", "the password is empty"),
    ],
)
def test_user_add_refuses_with_a_reason(
    env: dict[str, str], args: list[str], stdin: str | None, message: str
) -> None:
    code, output = _run(
        env, ["user", "add", "--username", "u1", "--name", "U", "--role", "nurse", *args], stdin=stdin
    )
    assert code == 2 and message in output


def test_user_add_refuses_an_existing_login(env: dict[str, str]) -> None:
    args = [
        "user",
        "add",
        "--username",
        "u1",
        "--name",
        "U",
        "--role",
        "nurse",
        "--phone",
        "+79990000001",
        "--password-stdin",
    ]
    assert _run(env, args, stdin="long enough password\n")[0] == 0
    code, output = _run(env, args, stdin="long enough password\n")
    assert code == 2 and "rpmgw user passwd" in output
