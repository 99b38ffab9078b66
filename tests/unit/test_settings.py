"""Settings: names from the environment, defaults, and clear errors on bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpmgw.errors import SettingsError
from rpmgw.settings import load_settings


def test_nested_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "RPMGW_MQTT__HOST": "broker.example",
        "RPMGW_MQTT__PORT": "8883",
        "RPMGW_MQTT__USERNAME": "gw",
        "RPMGW_MQTT__PASSWORD": "secret",
        "RPMGW_MQTT__CLIENT_ID": "gw-1",
        "RPMGW_INFLUX__URL": "http://influx:8086/",
        "RPMGW_INFLUX__VERSION": "2",
        "RPMGW_INFLUX__DATABASE": "readings",
        "RPMGW_INFLUX__BUCKET": "b",
        "RPMGW_INFLUX__ORG": "o",
        "RPMGW_INFLUX__TOKEN": "t",
        "RPMGW_DATABASE__URL": "postgresql+psycopg://u@db/rpm",
        "RPMGW_DATA_DIR": str(tmp_path),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.client_id) == (
        "broker.example",
        8883,
        "gw-1",
    )
    assert (settings.mqtt.username, settings.mqtt.password) == ("gw", "secret")
    assert settings.influx.url == "http://influx:8086"
    assert (settings.influx.version, settings.influx.database) == ("2", "readings")
    assert (settings.influx.bucket, settings.influx.org, settings.influx.token) == ("b", "o", "t")
    assert settings.database_url == "postgresql+psycopg://u@db/rpm"
    assert settings.data_dir == tmp_path


def test_defaults_are_usable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RPMGW_DATA_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.mqtt.client_id == "rpmgw-gateway"
    assert settings.influx.version == "auto"
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'rpmgw.sqlite3'}"
    assert settings.timezone == "Asia/Yekaterinburg"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("RPMGW_MQTT__PORT", "not-a-port", "RPMGW_MQTT__PORT"),
        ("RPMGW_MQTT__PORT", "70000", "RPMGW_MQTT__PORT"),
        ("RPMGW_INFLUX__VERSION", "3", "RPMGW_INFLUX__VERSION"),
        ("RPMGW_INFLUX__URL", "influx:8086", "RPMGW_INFLUX__URL"),
        ("RPMGW_TIMEZONE", "Mars/Olympus", "RPMGW_TIMEZONE"),
        ("RPMGW_GATEWAY__BATCH_SIZE", "0", "RPMGW_GATEWAY__BATCH_SIZE"),
        ("RPMGW_MQTT__PASSWORD", "orphan", "RPMGW_MQTT__USERNAME"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert named in str(caught.value)
