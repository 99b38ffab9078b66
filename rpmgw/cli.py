"""The `rpmgw` command: one entry point for every process and admin task."""

from __future__ import annotations

import logging
import sys

import click

from rpmgw.errors import RpmgwError
from rpmgw.settings import Settings, load_settings


class SettingsContext:
    """Settings are loaded lazily so that `--help` works even with a broken environment."""

    def __init__(self) -> None:
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings


pass_settings = click.make_pass_decorator(SettingsContext, ensure=True)


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """rpm-gateway: remote patient monitoring over MQTT (settings come from RPMGW_* variables)."""
    ctx.ensure_object(SettingsContext)


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from alerts.cli import register as register_alerts
    from alerts.notify.cli import register as register_sms
    from device_sim.cli import sim
    from rpmgw.bench.cli import register as register_bench
    from rpmgw.commands.admin import register as register_admin
    from rpmgw.commands.broker import register as register_broker
    from rpmgw.commands.run import register as register_run
    from web.cli import register as register_users

    cli.add_command(sim)
    register_admin(cli)
    register_broker(cli)
    register_run(cli)
    register_bench(cli)
    register_alerts(cli)
    register_sms(cli)
    register_users(cli)


def main() -> None:
    """Console-script entry point: errors of ours become one clear line and exit code 2."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Alembic announces every plugin at INFO; only its warnings matter to an operator.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    _register()
    try:
        result = cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except RpmgwError as exc:
        click.echo(f"rpmgw: {exc}", err=True)
        sys.exit(2)
    # A command that calls ctx.exit(code) returns that code here.
    sys.exit(result if isinstance(result, int) else 0)
