"""The alert commands through click's CliRunner, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from alerts.cli import register
from rpmgw.cli import SettingsContext
from rpmgw.commands.admin import register as register_admin
from tests.fixtures.db import MigratedDb
from tests.integration.alerts_support import PATIENT, T0, alerts_of, bp, run, severe


def _cli() -> click.Group:
    @click.group()
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.ensure_object(SettingsContext)

    register_admin(group)
    register(group)
    return group


def _run(db_url: str, *args: str, **env: str) -> Result:
    environment = {"RPMGW_DATABASE__URL": db_url, "RPMGW_TIMEZONE": "Asia/Yekaterinburg"} | env
    return CliRunner().invoke(_cli(), list(args), env=environment, catch_exceptions=False)


def _ok(db_url: str, *args: str, **env: str) -> str:
    result = _run(db_url, *args, **env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def _fails(db_url: str, *args: str) -> str:
    result = _run(db_url, *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    return result.stderr


def _clinic(url: str) -> None:
    _ok(url, "patient", "add", "--id", PATIENT, "--name", "Test Patient", "--phone", "+79990000001")
    _ok(
        url,
        "staff",
        "add",
        "--username",
        "dr-a",
        "--name",
        "Dr A",
        "--phone",
        "+79990000101",
        "--role",
        "doctor",
    )
    _ok(
        url,
        "staff",
        "add",
        "--username",
        "nurse-b",
        "--name",
        "Nurse B",
        "--phone",
        "+79990000102",
        "--role",
        "nurse",
    )
    _ok(url, "team", "add", "cardio")
    _ok(url, "team", "member", "cardio", "--staff", "dr-a", "--responsible")
    _ok(url, "team", "member", "cardio", "--staff", "nurse-b")


def test_staff_add_and_list(migrated_db: MigratedDb) -> None:
    url = migrated_db.url
    out = _ok(
        url,
        "staff",
        "add",
        "--username",
        "dr-a",
        "--name",
        "Dr A",
        "--phone",
        "+7 999 000-01-01",
        "--role",
        "doctor",
    )
    assert out == "staff member dr-a added (doctor, +79990000101, ru)\n"
    _ok(
        url,
        "staff",
        "add",
        "--username",
        "admin",
        "--name",
        "Admin",
        "--phone",
        "+79990000102",
        "--role",
        "admin",
        "--language",
        "en",
    )
    _ok(url, "staff", "deactivate", "admin")

    lines = _ok(url, "staff", "list").splitlines()
    assert lines[0].split() == ["USERNAME", "NAME", "ROLE", "PHONE", "LANG", "ACTIVE"]
    assert lines[1].split() == ["admin", "Admin", "admin", "+79990000102", "en", "no"]
    assert lines[2].split() == ["dr-a", "Dr", "A", "doctor", "+79990000101", "ru", "yes"]
    listed = json.loads(_ok(url, "staff", "list", "--json"))
    assert [(s["username"], s["active"]) for s in listed] == [("admin", False), ("dr-a", True)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (
                "staff",
                "add",
                "--username",
                "dr-a",
                "--name",
                "X",
                "--phone",
                "+79990000109",
                "--role",
                "doctor",
            ),
            "rpmgw: staff member 'dr-a' already exists",
        ),
        (
            (
                "staff",
                "add",
                "--username",
                "x y",
                "--name",
                "X",
                "--phone",
                "+79990000109",
                "--role",
                "doctor",
            ),
            "rpmgw: invalid staff member 'x y': username: use 2-64 characters",
        ),
        (
            ("team", "member", "cardio", "--staff", "nurse-b", "--responsible"),
            "rpmgw: 'nurse-b' is a nurse: only a doctor can be the responsible member",
        ),
        (("team", "assign", "neuro", "--patient", PATIENT), "rpmgw: unknown care team 'neuro'"),
        (("team", "assign", "cardio", "--patient", "P-404"), "rpmgw: unknown patient 'P-404'"),
        (
            (
                "oncall",
                "add",
                "--staff",
                "dr-a",
                "--from",
                "2026-12-01T08:00",
                "--to",
                "2026-12-01T20:00+05:00",
            ),
            "has no time zone offset",
        ),
        (
            (
                "oncall",
                "add",
                "--staff",
                "dr-a",
                "--from",
                "2026-12-01T20:00+05:00",
                "--to",
                "2026-12-01T08:00+05:00",
            ),
            "rpmgw: a shift must end after it starts",
        ),
        (
            ("alerts", "ack", "999", "--by", "dr-a", "--reason", "contacted_patient", "--note", "x"),
            "rpmgw: unknown alert 999",
        ),
        (("alerts", "ack", "1", "--by", "dr-a", "--reason", "fixed", "--note", "x"), "'fixed' is not one of"),
        (("alerts", "show", "999"), "rpmgw: unknown alert 999"),
        (
            ("thresholds", "set", "--patient", PATIENT, "--by", "dr-a", "--reason", "r", "low_sbp"),
            "rpmgw: expected KEY=VALUE, got 'low_sbp'",
        ),
        (
            ("thresholds", "set", "--patient", PATIENT, "--by", "dr-a", "--reason", "r", "low_sbp=abc"),
            "rpmgw: low_sbp: 'abc' is not a number",
        ),
        (
            ("thresholds", "set", "--patient", PATIENT, "--by", "dr-a", "--reason", "r", "lowest=1"),
            "rpmgw: unknown threshold 'lowest'",
        ),
        (
            ("thresholds", "set", "--patient", PATIENT, "--by", "dr-a", "--reason", "r", "low_sbp=170"),
            r"rpmgw: thresholds of patient P-000001: low_sbp \(170\) must be below high_sbp \(160\)",
        ),
        (
            ("thresholds", "set", "--patient", PATIENT, "--by", "dr-a", "--reason", "r"),
            "rpmgw: nothing to change",
        ),
        (
            (
                "thresholds",
                "set",
                "--patient",
                PATIENT,
                "--by",
                "dr-a",
                "--reason",
                "r",
                "--unset",
                "low_sbp",
            ),
            "rpmgw: patient P-000001 has no override 'low_sbp' to unset",
        ),
        (("thresholds", "show", "--patient", "P-404"), "rpmgw: unknown patient 'P-404'"),
    ],
    ids=[
        "duplicate-staff",
        "bad-username",
        "nurse-responsible",
        "unknown-team",
        "unknown-patient",
        "naive-time",
        "inverted-shift",
        "unknown-alert",
        "bad-reason",
        "show-unknown",
        "no-equals",
        "not-a-number",
        "unknown-threshold",
        "inconsistent-threshold",
        "nothing-to-change",
        "unset-missing",
        "show-unknown-patient",
    ],
)
def test_errors_are_one_clear_line(migrated_db: MigratedDb, args: tuple[str, ...], message: str) -> None:
    _clinic(migrated_db.url)
    stderr = _fails(migrated_db.url, *args)
    assert re.search(message, stderr), stderr
    assert "Traceback" not in stderr


def test_team_assign_and_list(migrated_db: MigratedDb) -> None:
    url = migrated_db.url
    _clinic(url)
    out = _ok(url, "team", "assign", "cardio", "--patient", PATIENT)
    assert out == f"patient {PATIENT} assigned to care team cardio (responsible doctor: dr-a)\n"
    teams = json.loads(_ok(url, "team", "list", "--json"))
    assert teams == [
        {
            "name": "cardio",
            "members": [
                {"username": "dr-a", "role": "doctor", "responsible": True},
                {"username": "nurse-b", "role": "nurse", "responsible": False},
            ],
            "patients": [PATIENT],
        }
    ]
    assert "dr-a doctor (responsible)" in _ok(url, "team", "list")


def test_oncall_add_and_list(migrated_db: MigratedDb) -> None:
    url = migrated_db.url
    _clinic(url)
    out = _ok(
        url,
        "oncall",
        "add",
        "--staff",
        "dr-a",
        "--from",
        "2024-12-01T08:00+05:00",
        "--to",
        "2024-12-01T20:00Z",
    )
    assert out == "dr-a on call from 2024-12-01T08:00:00+05:00 to 2024-12-02T01:00:00+05:00\n"
    shifts = json.loads(_ok(url, "oncall", "list", "--all", "--json"))
    assert shifts == [
        {"username": "dr-a", "starts_at": "2024-12-01T03:00:00+00:00", "ends_at": "2024-12-01T20:00:00+00:00"}
    ]
    assert _ok(url, "oncall", "list", "--json") == "[]\n"  # that shift is long over


def test_alerts_list_show_and_ack(migrated_db: MigratedDb) -> None:
    url = migrated_db.url
    _clinic(url)
    _ok(url, "team", "assign", "cardio", "--patient", PATIENT)
    run(migrated_db.sessions, bp("m1", T0, 165, 95), now=T0)
    run(migrated_db.sessions, severe("m2", T0 + timedelta(minutes=10), 186, 110), now=T0)
    [alert] = alerts_of(migrated_db.sessions)

    [listed] = json.loads(_ok(url, "alerts", "list", "--json"))
    assert {
        k: listed[k] for k in ("id", "patient_id", "rule", "severity", "state", "worst_value", "last_value")
    } == {
        "id": alert.id,
        "patient_id": PATIENT,
        "rule": "severe_bp",
        "severity": "critical",
        "state": "active, unacknowledged",
        "worst_value": "186/110 mmHg",
        "last_value": "186/110 mmHg",
    }
    assert (listed["reading_count"], listed["late"], listed["confirmation"]) == (2, False, "pending")
    assert listed["first_measured_at"] == "2024-03-01T06:00:00+00:00"
    table = _ok(url, "alerts", "list").splitlines()
    assert table[0].split()[:5] == ["ID", "PATIENT", "RULE", "SEVERITY", "STATE"]
    assert "2024-03-01T11:00:00+05:00" in table[1] and "active, unacknowledged" in table[1]

    out = _ok(
        url,
        "alerts",
        "ack",
        str(alert.id),
        "--by",
        "dr-a",
        "--reason",
        "contacted_patient",
        "--note",
        "called",
    )
    assert out == f"alert {alert.id} acknowledged by dr-a (contacted_patient); now active, acknowledged\n"
    again = _fails(
        url, "alerts", "ack", str(alert.id), "--by", "nurse-b", "--reason", "no_action_needed", "--note", "x"
    )
    assert f"rpmgw: alert {alert.id} was acknowledged by dr-a at" in again

    shown = _ok(url, "alerts", "show", str(alert.id))
    assert f"alert {alert.id}: Severe blood pressure (severe_bp, critical), patient {PATIENT}" in shown
    assert "acknowledged by dr-a" in shown and "contacted_patient: called" in shown
    for kind in ("raised [m1]", "upgraded [m2]", "notified", "acknowledged"):
        assert kind in shown
    document = json.loads(_ok(url, "alerts", "show", str(alert.id), "--json"))
    assert [e["kind"] for e in document["events"]][:2] == ["raised", "upgraded"]
    assert document["acknowledgement"]["reason_code"] == "contacted_patient"

    assert json.loads(_ok(url, "alerts", "list", "--json", "--patient", "P-other")) == []
    assert len(json.loads(_ok(url, "alerts", "list", "--json", "--state", "all"))) == 1


def test_thresholds_set_changes_some_keys_and_show_tells_the_history(migrated_db: MigratedDb) -> None:
    url = migrated_db.url
    _clinic(url)
    set_args = ("thresholds", "set", "--patient", PATIENT, "--by", "dr-a", "--reason")
    assert _ok(url, *set_args, "elderly", "low_sbp=100") == f"patient {PATIENT} thresholds v1: low_sbp=100\n"
    assert (
        _ok(url, *set_args, "target", "high_sbp=150", "hypo_l1_mmol=4.2")
        == f"patient {PATIENT} thresholds v2: high_sbp=150, hypo_l1_mmol=4.2, low_sbp=100\n"
    )
    assert (
        _ok(url, *set_args, "no", "--unset", "low_sbp")
        == f"patient {PATIENT} thresholds v3: high_sbp=150, hypo_l1_mmol=4.2\n"
    )
    assert (
        _ok(url, *set_args, "reset", "--replace")
        == f"patient {PATIENT} thresholds v4: none (clinic thresholds)\n"
    )
    _ok(url, *set_args, "again", "high_sbp=155")

    document = json.loads(_ok(url, "thresholds", "show", "--patient", PATIENT, "--json"))
    assert document["label"] == f"patient:{PATIENT}:v5"
    assert document["overrides"] == {"high_sbp": 155}
    assert document["thresholds"]["high_sbp"] == 155 and document["thresholds"]["low_sbp"] == 90
    assert [v["version"] for v in document["history"]] == [1, 2, 3, 4, 5]
    assert document["history"][0] | {"changed_at": None} == {
        "version": 1,
        "overrides": {"low_sbp": 100},
        "changed_by": "dr-a",
        "changed_at": None,
        "reason": "elderly",
    }
    text = _ok(url, "thresholds", "show", "--patient", PATIENT)
    assert text.startswith(f"thresholds: patient:{PATIENT}:v5\n")
    assert any(line.split()[:3] == ["high_sbp", "155", "*"] for line in text.splitlines())
    assert "v4 " in text and "clinic thresholds (reset)" in text


def test_thresholds_show_the_clinic_file(migrated_db: MigratedDb, tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text('{"severe_sbp": 175}', encoding="utf-8")
    document = json.loads(
        _ok(migrated_db.url, "thresholds", "show", "--json", RPMGW_ALERTS__THRESHOLDS_FILE=str(path))
    )
    assert document["label"] == "clinic" and document["thresholds"]["severe_sbp"] == 175
    assert document["history"] == []


def test_commands_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    assert "rpmgw: database is not migrated: run `rpmgw db upgrade`" in _fails(url, "alerts", "list")
