"""The admin commands through click's CliRunner, on SQLite and PostgreSQL (and a real influxd for status)."""

from __future__ import annotations

import base64
import json
import socket
from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner, Result

from gateway.quarantine import Quarantine, QuarantineEntry
from gateway.registry import EnrolmentRegistry
from gateway.timeseries.base import StoredReading
from gateway.timeseries.influx_v1 import InfluxV1Store
from gateway.wire import Rejection, parse
from rpmgw.cli import SettingsContext
from rpmgw.commands.admin import register
from rpmgw.db import head_revision, make_engine, session_factory
from rpmgw.settings import InfluxSettings
from tests.fixtures.db import MigratedDb

T0 = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)


def _cli() -> click.Group:
    """A fresh group with only the admin commands (independent of the other commands' modules)."""

    @click.group()
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.ensure_object(SettingsContext)

    register(group)
    return group


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(db_url: str, *args: str, influx_url: str | None = None, **env: str) -> Result:
    environment = {"RPMGW_DATABASE__URL": db_url, "RPMGW_TIMEZONE": "Asia/Yekaterinburg"} | env
    environment["RPMGW_INFLUX__URL"] = influx_url or f"http://127.0.0.1:{_free_port()}"
    return CliRunner().invoke(_cli(), list(args), env=environment, catch_exceptions=False)


def _ok(db_url: str, *args: str, **env: str) -> str:
    result = _run(db_url, *args, **env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def _fails(db_url: str, *args: str, exit_code: int = 2) -> str:
    result = _run(db_url, *args)
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    return result.stderr


def _add_patient(url: str, patient_id: str, *extra: str) -> None:
    _ok(
        url,
        "patient",
        "add",
        "--id",
        patient_id,
        "--name",
        f"Patient {patient_id}",
        "--phone",
        "+79991234567",
        *extra,
    )


# --- db ------------------------------------------------------------------------------------------


def test_db_upgrade_then_check(db_url: str) -> None:
    assert "rpmgw: database is not migrated: run `rpmgw db upgrade`" in _fails(db_url, "db", "check")
    out = _ok(db_url, "db", "upgrade")
    assert f"is at revision {head_revision()}" in out
    assert "is current" in _ok(db_url, "db", "check")
    assert f"is at revision {head_revision()}" in _ok(db_url, "db", "upgrade")


@pytest.mark.parametrize(
    "args",
    [
        ("patient", "list"),
        ("device", "list"),
        ("quarantine", "list"),
        ("status",),
        ("patient", "add", "--id", "P-1", "--name", "A", "--phone", "+79991234567"),
        ("device", "enrol", "bp-1", "--patient", "P-1"),
    ],
)
def test_commands_refuse_an_unmigrated_database(db_url: str, args: tuple[str, ...]) -> None:
    stderr = _fails(db_url, *args)
    assert stderr.startswith("rpmgw: database is not migrated: run `rpmgw db upgrade`")
    assert len(stderr.strip().splitlines()) == 1


# --- patient -------------------------------------------------------------------------------------


def test_patient_add_and_list(migrated_db: MigratedDb) -> None:
    url = migrated_db.url
    out = _ok(
        url, "patient", "add", "--id", "P-000123", "--name", "Иванова А.", "--phone", "+7 999 123-45-67"
    )
    assert "patient P-000123 added (+79991234567, ru, Asia/Yekaterinburg)" in out
    _ok(
        url,
        "patient",
        "add",
        "--id",
        "P-2",
        "--name",
        "Smith",
        "--phone",
        "+447911123456",
        "--language",
        "en",
        "--timezone",
        "Europe/London",
    )

    listed = json.loads(_ok(url, "patient", "list", "--json"))
    assert [(p["id"], p["display_name"], p["phone"], p["language"], p["timezone"]) for p in listed] == [
        ("P-000123", "Иванова А.", "+79991234567", "ru", "Asia/Yekaterinburg"),
        ("P-2", "Smith", "+447911123456", "en", "Europe/London"),
    ]
    assert datetime.fromisoformat(listed[0]["created_at"]).utcoffset() == timedelta(0)

    table = _ok(url, "patient", "list").splitlines()
    assert table[0].split() == ["ID", "NAME", "PHONE", "LANG", "TIMEZONE", "CREATED"]
    assert table[1].startswith("P-000123") and "+05:00" in table[1]
    assert len(table) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--phone", "89991234567"), "rpmgw: invalid patient 'P-1': phone: '89991234567' is not an E.164"),
        (("--phone", "+79991234567", "--timezone", "Mars/Base"), "timezone: unknown time zone 'Mars/Base'"),
    ],
)
def test_patient_add_errors_are_one_clear_line(
    migrated_db: MigratedDb, extra: tuple[str, ...], message: str
) -> None:
    stderr = _fails(migrated_db.url, "patient", "add", "--id", "P-1", "--name", "A", *extra)
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert json.loads(_ok(migrated_db.url, "patient", "list", "--json")) == []


def test_patient_add_refuses_a_duplicate_and_a_bad_language(migrated_db: MigratedDb) -> None:
    _add_patient(migrated_db.url, "P-1")
    assert "rpmgw: patient 'P-1' already exists" in _fails(
        migrated_db.url, "patient", "add", "--id", "P-1", "--name", "B", "--phone", "+79991234567"
    )
    stderr = _fails(
        migrated_db.url,
        "patient",
        "add",
        "--id",
        "P-2",
        "--name",
        "B",
        "--phone",
        "+79991234567",
        "--language",
        "de",
    )
    assert "'de' is not one of 'ru', 'en'" in stderr


# --- device --------------------------------------------------------------------------------------


def test_device_enrol_re_enrol_and_list(migrated_db: MigratedDb) -> None:
    url = migrated_db.url
    _add_patient(url, "P-1")
    _add_patient(url, "P-2")
    out = _ok(
        url,
        "device",
        "enrol",
        "bp-000123",
        "--patient",
        "P-1",
        "--from",
        "2026-11-01T09:00:00+05:00",
        "--kind",
        "blood_pressure",
    )
    assert "device bp-000123 enrolled to P-1 from 2026-11-01T09:00:00+05:00" in out
    out = _ok(url, "device", "enrol", "bp-000123", "--patient", "P-2", "--from", "2026-11-05T04:00:00Z")
    assert "device bp-000123 enrolled to P-2 from 2026-11-05T09:00:00+05:00" in out
    assert "closed its enrolment to P-1 at 2026-11-05T09:00:00+05:00" in out
    out = _ok(url, "device", "enrol", "bp-000123", "--patient", "P-2")
    assert "already enrolled to P-2" in out
    _ok(url, "device", "enrol", "gl-7", "--patient", "P-1", "--kind", "glucose")

    devices = json.loads(_ok(url, "device", "list", "--json"))
    assert devices[0] == {
        "id": "bp-000123",
        "kind": "blood_pressure",
        "created_at": devices[0]["created_at"],
        "enrolments": [
            {
                "patient_id": "P-1",
                "valid_from": "2026-11-01T04:00:00+00:00",
                "valid_to": "2026-11-05T04:00:00+00:00",
                "current": False,
            },
            {
                "patient_id": "P-2",
                "valid_from": "2026-11-05T04:00:00+00:00",
                "valid_to": None,
                "current": True,
            },
        ],
    }
    assert devices[1]["id"] == "gl-7"
    assert devices[1]["kind"] == "glucose"
    (current,) = devices[1]["enrolments"]
    # Without --from the enrolment starts now.
    assert abs(datetime.fromisoformat(current["valid_from"]) - datetime.now(UTC)) < timedelta(minutes=1)

    table = _ok(url, "device", "list").splitlines()
    assert table[0].split() == ["DEVICE", "KIND", "PATIENT", "FROM", "TO"]
    assert table[1].split() == [
        "bp-000123",
        "blood_pressure",
        "P-1",
        "2026-11-01T09:00:00+05:00",
        "2026-11-05T09:00:00+05:00",
    ]
    assert table[2].split() == [
        "bp-000123",
        "blood_pressure",
        "P-2",
        "2026-11-05T09:00:00+05:00",
        "(current)",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("bp-1", "--patient", "P-404"), "rpmgw: unknown patient 'P-404'"),
        (("bp-1", "--patient", "P-1", "--from", "2026-10-31T00:00:00Z"), "is enrolled to 'P-1' since"),
        (
            ("bp-1", "--patient", "P-2", "--from", "2026-11-01T08:59:59+05:00"),
            "a new enrolment must start after",
        ),
        (("bp-1", "--patient", "P-2", "--from", "2026-11-05T09:00:00"), "has no time zone offset"),
        (("bp-1", "--patient", "P-2", "--from", "yesterday"), "is not an RFC 3339 date-time"),
        (("b", "--patient", "P-1"), "rpmgw: invalid device id 'b'"),
        (("bp-1", "--patient", "P-2", "--kind", "scale"), "'scale' is not one of"),
    ],
)
def test_device_enrol_errors(migrated_db: MigratedDb, args: tuple[str, ...], message: str) -> None:
    _add_patient(migrated_db.url, "P-1")
    _add_patient(migrated_db.url, "P-2")
    _ok(migrated_db.url, "device", "enrol", "bp-1", "--patient", "P-1", "--from", "2026-11-01T09:00:00+05:00")
    assert message in _fails(migrated_db.url, "device", "enrol", *args)
    devices = json.loads(_ok(migrated_db.url, "device", "list", "--json"))
    assert [(d["id"], len(d["enrolments"])) for d in devices] == [("bp-1", 1)]


def test_device_unenrol(migrated_db: MigratedDb) -> None:
    url = migrated_db.url
    _add_patient(url, "P-1")
    _ok(url, "device", "enrol", "bp-1", "--patient", "P-1", "--from", "2026-11-01T00:00:00Z")
    out = _ok(url, "device", "unenrol", "bp-1", "--at", "2026-11-02T00:00:00Z")
    assert "device bp-1 no longer enrolled to P-1 from 2026-11-02T05:00:00+05:00" in out
    assert "has no open enrolment" in _fails(url, "device", "unenrol", "bp-1")
    assert "unknown device 'bp-2'" in _fails(url, "device", "unenrol", "bp-2")
    (device,) = json.loads(_ok(url, "device", "list", "--json"))
    assert device["enrolments"][0]["valid_to"] == "2026-11-02T00:00:00+00:00"


# --- quarantine ----------------------------------------------------------------------------------


def _quarantine_some(db: MigratedDb) -> None:
    Quarantine(db.sessions).add_many(
        [
            QuarantineEntry(
                "rpm/devices/bp-1/readings", b'{"v":1,\n"x":"\xd0\xb4"}', "schema", "v: bad", "bp-1", T0
            ),
            QuarantineEntry(
                "rpm/devices/bp-2/readings",
                b"\xff\xfe\x00\x01",
                "not_utf8",
                "not UTF-8",
                "bp-2",
                T0 + timedelta(minutes=1),
            ),
            QuarantineEntry(
                "rpm/devices/bp-9/readings",
                b"{}",
                "unenrolled",
                "no patient",
                "bp-9",
                T0 + timedelta(minutes=2),
            ),
        ]
    )


def test_quarantine_list_json(migrated_db: MigratedDb) -> None:
    _quarantine_some(migrated_db)
    listed = json.loads(_ok(migrated_db.url, "quarantine", "list", "--json"))
    assert [item["reason"] for item in listed] == ["unenrolled", "not_utf8", "schema"]
    binary = listed[1]
    assert binary["payload_encoding"] == "base64"
    assert base64.b64decode(binary["payload"]) == b"\xff\xfe\x00\x01"
    assert binary["payload_bytes"] == 4
    assert binary["device_id"] == "bp-2"
    assert binary["topic"] == "rpm/devices/bp-2/readings"
    assert binary["detail"] == "not UTF-8"
    assert binary["received_at"] == "2026-11-01T04:01:00+00:00"
    text = listed[2]
    assert (text["payload"], text["payload_encoding"]) == ('{"v":1,\n"x":"д"}', "utf-8")

    assert [
        i["device_id"]
        for i in json.loads(_ok(migrated_db.url, "quarantine", "list", "--json", "--reason", "schema"))
    ] == ["bp-1"]
    assert [
        i["reason"]
        for i in json.loads(_ok(migrated_db.url, "quarantine", "list", "--json", "--device", "bp-2"))
    ] == ["not_utf8"]
    assert len(json.loads(_ok(migrated_db.url, "quarantine", "list", "--json", "--limit", "2"))) == 2
    assert json.loads(_ok(migrated_db.url, "quarantine", "list", "--json", "--reason", "future")) == []


def test_quarantine_list_text(migrated_db: MigratedDb) -> None:
    _quarantine_some(migrated_db)
    out = _ok(migrated_db.url, "quarantine", "list", "--limit", "2", "--reason", "not_utf8")
    assert "2026-11-01T09:01:00+05:00  not_utf8  device=bp-2  topic=rpm/devices/bp-2/readings" in out
    assert "detail: not UTF-8" in out
    assert "payload (base64, 4 bytes): //4AAQ==" in out
    out = _ok(migrated_db.url, "quarantine", "list", "--device", "bp-1")
    assert 'payload (utf-8, 17 bytes): {"v":1,\\n"x":"д"}' in out
    assert "bp-9" not in out
    assert "--limit" in _fails(migrated_db.url, "quarantine", "list", "--limit", "0")


# --- status --------------------------------------------------------------------------------------


def _bp(device_id: str, measured_at: str, msg_id: str) -> StoredReading:
    payload = json.dumps(
        {
            "v": 1,
            "msg_id": msg_id,
            "device_id": device_id,
            "type": "blood_pressure",
            "measured_at": measured_at,
            "systolic": 150,
            "diastolic": 90,
        }
    ).encode()
    reading = parse(f"rpm/devices/{device_id}/readings", payload, now=datetime.now(UTC))
    assert not isinstance(reading, Rejection), reading
    return StoredReading("P-1", reading)


def test_status_json_with_readings(
    migrated_db: MigratedDb, influx_settings: InfluxSettings, influx_store: InfluxV1Store
) -> None:
    influx_store.write(
        [_bp("bp-1", "2026-11-01T09:00:00+05:00", "m1"), _bp("bp-1", "2026-11-02T09:00:00+05:00", "m2")]
    )
    _add_patient(migrated_db.url, "P-1")
    _ok(migrated_db.url, "device", "enrol", "bp-1", "--patient", "P-1", "--from", "2026-10-01T00:00:00Z")
    _quarantine_some(migrated_db)
    env = {"RPMGW_INFLUX__VERSION": "1", "RPMGW_INFLUX__DATABASE": influx_settings.database}

    result = _run(migrated_db.url, "status", "--json", influx_url=influx_settings.url, **env)

    assert result.exit_code == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["database"] | {"url": None} == {
        "url": None,
        "patients": 1,
        "devices": 1,
        "open_enrolments": 1,
    }
    assert status["quarantine"] == {"not_utf8": 1, "schema": 1, "unenrolled": 1}
    assert status["readings"]["reachable"] is True
    assert status["readings"]["counts"]["blood_pressure"] == 2
    assert status["readings"]["counts"].get("glucose", 0) == 0
    assert status["readings"]["last_measured_at"] == "2026-11-02T04:00:00+00:00"
    assert status["readings"]["error"] is None

    result = _run(migrated_db.url, "status", influx_url=influx_settings.url, **env)
    assert result.exit_code == 0, result.stderr
    assert "patients: 1  devices: 1  open enrolments: 1" in result.stdout
    assert "quarantined: 3 (not_utf8: 1, schema: 1, unenrolled: 1)" in result.stdout
    assert "blood_pressure: 2" in result.stdout
    assert "last measured at 2026-11-02T09:00:00+05:00" in result.stdout


@pytest.mark.parametrize("as_json", [False, True])
def test_status_with_influx_unreachable_still_shows_the_database(
    migrated_db: MigratedDb, as_json: bool
) -> None:
    _add_patient(migrated_db.url, "P-1")
    influx_url = f"http://127.0.0.1:{_free_port()}"
    args = ("status", "--json") if as_json else ("status",)

    result = _run(migrated_db.url, *args, influx_url=influx_url)

    assert result.exit_code != 0
    assert result.stderr.startswith(f"rpmgw: InfluxDB at {influx_url} is unreachable")
    if as_json:
        status = json.loads(result.stdout)
        assert status["database"]["patients"] == 1
        assert status["readings"]["reachable"] is False
        assert "unreachable" in status["readings"]["error"]
    else:
        assert "patients: 1  devices: 0  open enrolments: 0" in result.stdout
        assert "quarantined: 0" in result.stdout


def test_the_database_url_password_is_never_printed() -> None:
    url = "postgresql://postgres:s3cret@127.0.0.1:1/rpm"
    result = _run(url, "patient", "list")
    assert result.exit_code == 2
    assert "s3cret" not in result.stderr
    assert result.stderr.startswith("rpmgw: cannot reach the database at postgresql+psycopg://postgres:***@")


def test_the_registry_sees_what_the_cli_enrolled(migrated_db: MigratedDb) -> None:
    _add_patient(migrated_db.url, "P-1")
    _ok(migrated_db.url, "device", "enrol", "bp-1", "--patient", "P-1", "--from", "2026-11-01T00:00:00Z")
    engine = make_engine(migrated_db.url)
    try:
        registry = EnrolmentRegistry(session_factory(engine), cache_size=10, ttl=1.0)
        assert registry.patient_for("bp-1", datetime(2026, 11, 1, 1, tzinfo=UTC)) == "P-1"
        assert registry.patient_for("bp-1", datetime(2026, 10, 31, 23, tzinfo=UTC)) is None
    finally:
        engine.dispose()
