"""Web fixtures: an app on a fresh SQLite database, a clinic with two care teams, logged-in clients.

Readings come from `MemoryStore`, a small honest implementation of the `ReadingStore` protocol (the
InfluxDB back ends are tested against real servers elsewhere, and in the browser test here).
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from alerts import staff as staff_admin
from alerts.tables import Alert
from gateway.errors import StorageUnavailable
from gateway.timeseries.base import ReadingType, StoredReading, StoreSummary
from gateway.wire import BloodPressureReading, GlucoseReading
from rpmgw import admin as registry
from rpmgw.db import make_engine, session_factory, upgrade
from rpmgw.settings import Settings, load_settings
from web import accounts, create_app

NOW = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)  # 11:00 in Yekaterinburg
PASSWORD = "correct horse battery"


class MemoryStore:
    """Readings kept in memory, with the `ReadingStore` contract (half-open ranges, oldest first)."""

    def __init__(self) -> None:
        self.stored: list[StoredReading] = []
        self.down = False
        self.recent_asked: list[list[str]] = []  # the patient ids of each `recent` call

    def _check(self) -> None:
        if self.down:
            raise StorageUnavailable("InfluxDB at http://127.0.0.1:1 did not answer (test)")

    def ensure_ready(self) -> None:
        self._check()

    def write(self, readings: Sequence[StoredReading]) -> None:
        self._check()
        self.stored.extend(readings)

    def readings(
        self, patient_id: str, start: datetime, end: datetime, type: ReadingType | None = None
    ) -> list[StoredReading]:
        self._check()
        found = [
            r
            for r in self.stored
            if r.patient_id == patient_id
            and start <= r.reading.measured_at < end
            and (type is None or r.reading.type == type)
        ]
        return sorted(found, key=lambda r: r.reading.measured_at)

    def recent(self, patient_ids: Sequence[str], since: datetime) -> dict[str, list[StoredReading]]:
        self._check()
        self.recent_asked.append(list(patient_ids))
        result: dict[str, list[StoredReading]] = {}
        for r in sorted(self.stored, key=lambda r: r.reading.measured_at):
            if r.patient_id in patient_ids and r.reading.measured_at >= since:
                result.setdefault(r.patient_id, []).append(r)
        return result

    def summary(self) -> StoreSummary:
        self._check()
        counts: dict[str, int] = {}
        for r in self.stored:
            counts[r.reading.type] = counts.get(r.reading.type, 0) + 1
        return StoreSummary(counts, max((r.reading.measured_at for r in self.stored), default=None))

    def close(self) -> None:
        pass

    def add_bp(
        self,
        patient_id: str,
        at: datetime,
        systolic: int,
        diastolic: int,
        pulse: int = 70,
        quality: tuple[str, ...] = (),
    ) -> None:
        reading = BloodPressureReading.model_validate(
            {
                "v": 1,
                "msg_id": str(uuid.uuid4()),
                "device_id": f"bp-{patient_id}",
                "type": "blood_pressure",
                "measured_at": at.isoformat(),
                "systolic": systolic,
                "diastolic": diastolic,
                "pulse": pulse,
            }
        )
        self.stored.append(StoredReading(patient_id, reading, quality))

    def add_glucose(
        self, patient_id: str, at: datetime, value: float | None, censored: str | None = None
    ) -> None:
        reading = GlucoseReading.model_validate(
            {
                "v": 1,
                "msg_id": str(uuid.uuid4()),
                "device_id": f"gl-{patient_id}",
                "type": "glucose",
                "measured_at": at.isoformat(),
                "value": value,
                "unit": "mmol/L",
                "censored": censored,
            }
        )
        self.stored.append(StoredReading(patient_id, reading, ()))


@dataclass
class Clock:
    """The app's clock, moved by tests."""

    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Clinic:
    """What the tests log in as and look at: team A (ivanova, nurse petrova) and team B (sidorov)."""

    app: Flask
    sessions: sessionmaker[Session]
    store: MemoryStore
    clock: Clock
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)
    alerts: dict[str, int] = field(default_factory=dict)

    def client(self, username: str | None = None) -> FlaskClient:
        """A test client, logged in as `username` when given (a session seeded at NOW)."""
        client = self.app.test_client()
        if username is not None:
            with client.session_transaction() as cookie_session:
                cookie_session["sid"] = self.tokens[username]
        return client

    def team_id(self, name: str) -> int:
        """The id of a care team."""
        with self.sessions() as session:
            return staff_admin.get_care_team(session, name).id

    def add_patients(self, team: str, count: int, prefix: str = "P-1") -> list[str]:
        """`count` more patients of `team` (ids `prefix`000, `prefix`001, ...)."""
        ids = [f"{prefix}{n:03d}" for n in range(count)]
        with self.sessions.begin() as session:
            for patient_id in ids:
                registry.add_patient(
                    session, patient_id=patient_id, display_name=f"Пациент {patient_id}", phone="+79991234567"
                )
                staff_admin.assign_patient(session, patient_id, team)
        return ids

    def note_activity(self) -> None:
        """Record the stored readings in `patient_activity`, as the gateway does after storing a batch."""
        from alerts.timerules import record_activity

        with self.sessions.begin() as session:
            record_activity(
                session,
                [
                    (r.patient_id, r.reading.type, r.reading.measured_at, r.reading.device_id)
                    for r in self.store.stored
                ],
                self.clock.now,
            )

    def add_alert(
        self, patient_id: str, rule: str = "severe_bp", severity: str = "critical", **fields: object
    ) -> int:
        """An open alert (as the lifecycle would have written it)."""
        from alerts.model import RULES, RuleId

        with self.sessions.begin() as session:
            alert = Alert(
                patient_id=patient_id,
                family=RULES[RuleId(rule)].family.value,
                rule=rule,
                severity=severity,
                opened_at=fields.pop("opened_at", self.clock.now - timedelta(minutes=20)),  # type: ignore[arg-type]
                first_measured_at=self.clock.now - timedelta(minutes=21),
                last_measured_at=self.clock.now - timedelta(minutes=21),
                reading_count=1,
                worst_value_text=fields.pop("value", "184/112 mmHg"),  # type: ignore[arg-type]
                worst_key=184.0,
                last_value_text="184/112 mmHg",
                escalation_level=0,
                **fields,
            )
            session.add(alert)
            session.flush()
            return alert.id


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    """The CSRF token of the client's session, read from a form."""
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> None:
    """Log in through the form; fails the test when the login does not succeed."""
    token = csrf_token(client)
    response = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]


def post(
    client: FlaskClient, path: str, data: dict[str, str] | None = None, *, form_page: str = "/account"
) -> object:
    """POST a form with the session's CSRF token (read from `form_page`)."""
    token = csrf_token(client, form_page)
    return client.post(path, data={**(data or {}), "csrf_token": token})


def seed_database(url: str) -> dict[str, str]:
    """Migrate and fill a database with the clinic's staff, teams, patients and devices.

    Returns a live login session token per username (logging in through the form costs a scrypt check).
    """
    tokens: dict[str, str] = {}
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    with sessions.begin() as s:
        for username, name, role, team in (
            ("ivanova", "Анна Иванова", "doctor", "A"),
            ("petrova", "Ольга Петрова", "nurse", "A"),
            ("sidorov", "Пётр Сидоров", "doctor", "B"),
            ("admin", "Admin", "admin", None),
        ):
            member = staff_admin.add_staff(
                s, username=username, display_name=name, phone="+79990000001", role=role, language="en"
            )
            accounts.set_password(s, member, PASSWORD, now=NOW - timedelta(days=1))
            tokens[username] = accounts.start_session(s, member, ip="127.0.0.1", now=NOW)
            if team is not None:
                if team not in {t.name for t in staff_admin.list_care_teams(s)}:
                    staff_admin.add_care_team(s, team)
                staff_admin.add_member(s, team, username, responsible=role == "doctor")
        for patient_id, name, team in (
            ("P-1", "Мария Кузнецова", "A"),
            ("P-2", "Иван Смирнов", "A"),
            ("P-9", "Other Team", "B"),
        ):
            registry.add_patient(s, patient_id=patient_id, display_name=name, phone="+79991234567")
            staff_admin.assign_patient(s, patient_id, team)
            registry.enrol_device(
                s,
                device_id=f"bp-{patient_id}",
                patient_id=patient_id,
                valid_from=NOW - timedelta(days=60),
                kind="blood_pressure",
            )
    engine.dispose()
    return tokens


def build_clinic(
    tmp_path: Path, template: tuple[Path, dict[str, str]] | None = None, **web: object
) -> Clinic:
    """The app on a seeded database (a copy of `template` when given: migrating and hashing is slow)."""
    path = tmp_path / "web.sqlite3"
    url = f"sqlite:///{path}"
    if template is None:
        tokens = seed_database(url)
    else:
        shutil.copyfile(template[0], path)
        tokens = template[1]
    settings = load_settings(data_dir=tmp_path, database={"url": url}, web={"secret_key": "x" * 40, **web})
    sessions = session_factory(make_engine(url))
    store = MemoryStore()
    clock = Clock()
    app = create_app(settings, store=store, clock=clock)
    app.config["TESTING"] = True
    return Clinic(app=app, sessions=sessions, store=store, clock=clock, settings=settings, tokens=tokens)


@pytest.fixture(scope="session")
def clinic_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A seeded SQLite file (and its login tokens), made once per test session and copied for each test."""
    path = tmp_path_factory.mktemp("clinic") / "template.sqlite3"
    return path, seed_database(f"sqlite:///{path}")


@pytest.fixture
def clinic(tmp_path: Path, clinic_template: tuple[Path, dict[str, str]]) -> Iterator[Clinic]:
    """The clinic with its app (a fresh copy of the database per test)."""
    built = build_clinic(tmp_path, clinic_template)
    yield built
    built.sessions.kw["bind"].dispose()


@pytest.fixture
def make_clinic(tmp_path: Path, clinic_template: tuple[Path, dict[str, str]]) -> Callable[..., Clinic]:
    """Build a clinic with other web settings."""
    return lambda **web: build_clinic(tmp_path, clinic_template, **web)
