"""docker-compose.yml is checked against the settings, the CLI and mosquitto.conf (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
import pytest
import yaml
from pydantic import BaseModel

from rpmgw.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
RPMGW_SERVICES = ("migrate", "gateway", "web", "simulator")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def broker_conf() -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in (ROOT / "mosquitto.conf").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            options.setdefault(key, []).append(value.strip())
    return options


def _substitute(value: str) -> str:
    """Resolve `${NAME:-default}` the way compose does when NAME is unset."""
    return re.sub(r"\$\{[A-Za-z_]+:-([^}]*)\}", r"\1", value)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping"
    return {key: _substitute(str(value)) for key, value in env.items()}


def _setting_paths(model: type[BaseModel], prefix: str = "RPMGW_") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _setting_paths(annotation, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def test_the_product_services_are_all_there(compose: dict[str, Any]) -> None:
    services = set(compose["services"])
    assert {"mosquitto", "influxdb", "gateway", "web", "simulator"} <= services


@pytest.mark.parametrize("service", RPMGW_SERVICES)
def test_every_rpmgw_variable_is_a_real_setting(compose: dict[str, Any], service: str) -> None:
    known = _setting_paths(Settings)
    env = _env(compose["services"][service])
    used = {key for key in env if key.startswith("RPMGW_")}
    assert used, f"{service} sets no RPMGW_ variables"
    assert used <= known, f"{service} sets unknown variables: {sorted(used - known)}"


@pytest.mark.parametrize("service", RPMGW_SERVICES)
def test_settings_load_from_the_compose_environment(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(compose["services"][service]).items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.mqtt.host == "mosquitto"
    assert settings.influx.version == "2"
    assert urlparse(settings.influx.url).hostname == "influxdb"
    assert urlparse(settings.database_url).hostname == "postgres"


@pytest.mark.parametrize("service", RPMGW_SERVICES)
def test_every_command_is_an_rpmgw_command(compose: dict[str, Any], service: str) -> None:
    from rpmgw.cli import _register, cli

    _register()
    command: click.Command = cli
    words = list(compose["services"][service]["command"])
    ctx = click.Context(cli)
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        sub = command.get_command(ctx, words.pop(0))
        assert sub is not None, (
            f"{service}: `rpmgw {' '.join(compose['services'][service]['command'])}` does not exist"
        )
        command = sub
    assert not isinstance(command, click.Group), f"{service}: command names a group, not a command"
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for word in words:
        if word.startswith("--"):
            assert word in options, f"{service}: rpmgw {command.name} has no option {word}"


def test_broker_port_and_config_mount_match_mosquitto_conf(
    compose: dict[str, Any], broker_conf: dict[str, list[str]]
) -> None:
    mosquitto = compose["services"]["mosquitto"]
    listener_port = broker_conf["listener"][0].split()[0]
    assert any(str(p).endswith(f":{listener_port}") for p in mosquitto["ports"])
    assert "./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in mosquitto["volumes"]
    gateway_env = _env(compose["services"]["gateway"])
    assert gateway_env["RPMGW_MQTT__PORT"] == listener_port


def test_broker_persistence_is_on_a_named_volume(
    compose: dict[str, Any], broker_conf: dict[str, list[str]]
) -> None:
    assert broker_conf["persistence"] == ["true"]
    location = broker_conf["persistence_location"][0].rstrip("/")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["mosquitto"]["volumes"]}
    assert location in mounts, f"persistence_location {location} is not a mounted volume"
    assert mounts[location] in compose["volumes"]


def test_broker_never_drops_queued_qos1_messages_by_count(broker_conf: dict[str, list[str]]) -> None:
    assert broker_conf["max_queued_messages"] == ["0"]
    assert int(broker_conf["max_queued_bytes"][0]) > 0


def test_data_of_every_server_is_on_a_named_volume(compose: dict[str, Any]) -> None:
    expected = {"influxdb": "/var/lib/influxdb2", "postgres": "/var/lib/postgresql/data"}
    for service, path in expected.items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"][service]["volumes"]}
        assert mounts.get(path) in compose["volumes"], f"{service} keeps {path} on no named volume"


def test_influx_2_setup_matches_the_gateway_settings(compose: dict[str, Any]) -> None:
    influx = _env(compose["services"]["influxdb"])
    gateway = _env(compose["services"]["gateway"])
    assert influx["DOCKER_INFLUXDB_INIT_ORG"] == gateway["RPMGW_INFLUX__ORG"]
    assert influx["DOCKER_INFLUXDB_INIT_BUCKET"] == gateway["RPMGW_INFLUX__BUCKET"]
    assert influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == gateway["RPMGW_INFLUX__TOKEN"]
    port = urlparse(gateway["RPMGW_INFLUX__URL"]).port
    assert any(str(p).endswith(f":{port}") for p in compose["services"]["influxdb"]["ports"])


def test_postgres_credentials_match_the_database_url(compose: dict[str, Any]) -> None:
    postgres = _env(compose["services"]["postgres"])
    url = urlparse(_env(compose["services"]["gateway"])["RPMGW_DATABASE__URL"])
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == postgres["POSTGRES_DB"]


HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(\d+)/readyz")


@pytest.mark.parametrize(
    ("service", "port_of"),
    [
        ("gateway", lambda s: s.gateway.health_port),
        ("web", lambda s: s.web.port),
    ],
)
def test_healthchecks_probe_the_process_s_own_readyz(
    compose: dict[str, Any], service: str, port_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    definition = compose["services"][service]
    probe = " ".join(definition["healthcheck"]["test"])
    found = HEALTH_URL.search(probe)
    assert found, f"{service}: the healthcheck does not ask /readyz on 127.0.0.1"
    for key, value in _env(definition).items():
        monkeypatch.setenv(key, value)
    assert int(found.group(1)) == port_of(load_settings()), f"{service}: healthcheck port is not the setting"
    assert definition["healthcheck"]["test"][:2] == ["CMD", "python"], "the image has python, not curl"


def test_web_port_is_published(compose: dict[str, Any]) -> None:
    web = compose["services"]["web"]
    port = _env(web)["RPMGW_WEB__PORT"]
    assert f"{port}:{port}" in web["ports"]
    assert _env(web)["RPMGW_WEB__HOST"] == "0.0.0.0"


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    return {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}


def test_broker_refuses_anonymous_clients_and_uses_the_shipped_acl(
    compose: dict[str, Any], broker_conf: dict[str, list[str]]
) -> None:
    assert broker_conf["allow_anonymous"] == ["false"]
    mounts = _mounts(compose["services"]["mosquitto"])
    assert mounts[broker_conf["acl_file"][0]] == "./mosquitto.acl"
    assert (ROOT / "mosquitto.acl").is_file()
    accounts_dir = str(Path(broker_conf["password_file"][0]).parent)
    assert mounts.get(accounts_dir) in compose["volumes"], "the password file is on no named volume"


def test_the_documented_account_commands_use_the_broker_s_password_file(
    broker_conf: dict[str, list[str]],
) -> None:
    header = (ROOT / "docker-compose.yml").read_text().split("services:")[0]
    password_file = broker_conf["password_file"][0]
    commands = re.findall(r"mosquitto_passwd [^\n]*", header)
    assert len(commands) == 3, commands
    assert all(password_file in command for command in commands)
    assert "kill -s HUP mosquitto" in header


@pytest.mark.parametrize(("service", "username"), [("gateway", "rpmgw-gateway"), ("simulator", "rpmgw-sim")])
def test_mqtt_clients_log_in_with_a_password_from_the_environment(
    compose: dict[str, Any], service: str, username: str
) -> None:
    raw = compose["services"][service]["environment"]
    assert raw["RPMGW_MQTT__USERNAME"] == username
    assert re.fullmatch(r"\$\{RPMGW_MQTT_[A-Z]+_PASSWORD:-\}", raw["RPMGW_MQTT__PASSWORD"]), (
        "no secret in the file"
    )
    acl = (ROOT / "mosquitto.acl").read_text()
    assert re.search(rf"^user {username}$", acl, re.MULTILINE)


def test_no_secret_is_committed_next_to_the_broker_config() -> None:
    for name in ("mosquitto.conf", "mosquitto.acl", "docker-compose.yml"):
        assert "$7$" not in (ROOT / name).read_text(), f"{name} holds a password hash"
