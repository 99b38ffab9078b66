"""Broker accounts: `rpmgw device credentials DEVICE_ID` and `rpmgw broker account|remove|list`.

Passwords are generated, stored in Mosquitto's password file as salted hashes and printed once.
The broker re-reads the file on SIGHUP (`docker compose kill -s HUP mosquitto`).
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from gateway.wire import DEVICE_ID_PATTERN
from rpmgw.broker_accounts import (
    GATEWAY_USERNAME,
    PUBLISHER_USERNAME,
    generate_password,
    remove_account,
    set_password,
    usernames,
)
from rpmgw.cli import SettingsContext, pass_settings
from rpmgw.errors import BrokerAccountError

_RESERVED = (GATEWAY_USERNAME, PUBLISHER_USERNAME)
_RELOAD_HINT = "reload the broker to apply: send it SIGHUP (docker compose kill -s HUP mosquitto)"


def register(cli: click.Group) -> None:
    """Add `device credentials` to the device group and the `broker` group to `rpmgw`."""
    device = cli.commands.get("device")
    if isinstance(device, click.Group):
        device.add_command(device_credentials)
    cli.add_command(broker)


def _password_file_option(function: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--password-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Mosquitto's password file (default: <RPMGW_DATA_DIR>/mosquitto/passwords).",
    )(function)


def _resolve(ctx: SettingsContext, password_file: Path | None) -> Path:
    return password_file if password_file is not None else ctx.settings.data_dir / "mosquitto" / "passwords"


@click.command("credentials")
@click.argument("device_id")
@_password_file_option
@pass_settings
def device_credentials(ctx: SettingsContext, device_id: str, password_file: Path | None) -> None:
    """Create or replace DEVICE_ID's broker account; the new password is printed once."""
    if not re.match(DEVICE_ID_PATTERN, device_id):
        raise BrokerAccountError(f"invalid device id {device_id!r}: 3-64 letters, digits, '_' or '-'")
    if device_id in _RESERVED:
        raise BrokerAccountError(f"{device_id!r} is a reserved broker account, not a device id")
    path = _resolve(ctx, password_file)
    password = generate_password()
    set_password(path, device_id, password)
    click.echo(f"device {device_id}: MQTT username {device_id}")
    click.echo(f"password (shown once, only its hash is stored in {path}): {password}")
    click.echo(_RELOAD_HINT)


@click.group()
def broker() -> None:
    """Accounts of the MQTT broker (the gateway's, the simulator's)."""


@broker.command("account")
@click.argument("username", default=GATEWAY_USERNAME)
@_password_file_option
@pass_settings
def broker_account(ctx: SettingsContext, username: str, password_file: Path | None) -> None:
    """Create or replace USERNAME's account (default: the gateway's); the password is printed once."""
    path = _resolve(ctx, password_file)
    password = generate_password()
    set_password(path, username, password)
    click.echo(f"account {username} written to {path}")
    click.echo(f"password (shown once): {password}")
    if username == GATEWAY_USERNAME:
        click.echo("give it to the gateway as RPMGW_MQTT__USERNAME / RPMGW_MQTT__PASSWORD")
    click.echo(_RELOAD_HINT)


@broker.command("remove")
@click.argument("username")
@_password_file_option
@pass_settings
def broker_remove(ctx: SettingsContext, username: str, password_file: Path | None) -> None:
    """Delete USERNAME's account (a lost or returned device)."""
    path = _resolve(ctx, password_file)
    if not remove_account(path, username):
        raise BrokerAccountError(f"{path} has no account {username!r}")
    click.echo(f"account {username} removed from {path}")
    click.echo(_RELOAD_HINT)


@broker.command("list")
@_password_file_option
@pass_settings
def broker_list(ctx: SettingsContext, password_file: Path | None) -> None:
    """List the account names in the password file (never the hashes)."""
    for name in usernames(_resolve(ctx, password_file)):
        click.echo(name)
