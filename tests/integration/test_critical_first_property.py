"""Critical readings first (gateway.ingest) changes when decisions are committed, never what they are.

The same random batches go through two pipelines with the real rule engine and lifecycle, each on its
own migrated SQLite database and in-memory store: one puts the patients with a critical reading first
(as the gateway does), the other processes every batch in one piece. The alerts, their events and the
texts queued must come out the same. Readings of four patients within three hours, values around the
thresholds, quality-flagged ones, repeats 5-15 minutes apart and redeliveries of a msg_id included.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from alerts.engine import AlertEngine
from alerts.history import RecentReadings
from alerts.notify.tables import OutboxMessage
from alerts.tables import Alert, AlertEvent
from alerts.thresholds import Thresholds
from gateway.ingest import IngestPipeline
from gateway.mqtt import InboundMessage
from gateway.quarantine import Quarantine
from gateway.registry import EnrolmentRegistry
from gateway.wire import Reading, WireLimits
from rpmgw.admin import add_patient, enrol_device
from rpmgw.db import make_engine, session_factory, upgrade
from rpmgw.settings import AlertsSettings
from tests.fakes.memory_store import MemoryStore

NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
BP_DEVICES = ("bp-first-1", "bp-first-2", "bp-first-3")
GLUCOSE_DEVICE = "gl-first-4"
DEVICES = (*BP_DEVICES, GLUCOSE_DEVICE)


class InOnePiece(AlertEngine):
    """The real engine, with nothing put first: every batch is processed in one piece."""

    def urgent(self, reading: Reading) -> bool:
        return False


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database with the four patients enrolled, copied for each side of each example."""
    path = tmp_path_factory.mktemp("critical-first") / "template.sqlite3"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = make_engine(url)
    with session_factory(engine).begin() as session:
        for i, device in enumerate(DEVICES):
            add_patient(session, patient_id=f"P-FIRST-{i}", display_name="First", phone=f"+7999000410{i}")
            enrol_device(
                session, device_id=device, patient_id=f"P-FIRST-{i}", valid_from=NOW - timedelta(days=30)
            )
    engine.dispose()
    return path


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    minutes = draw(st.integers(0, 180))
    device = draw(st.sampled_from(DEVICES))
    document: dict[str, Any] = {
        "v": 1,
        "msg_id": str(uuid.UUID(int=draw(st.integers(0, 2**64)))),
        "device_id": device,
        "measured_at": (NOW - timedelta(minutes=minutes)).isoformat(),
    }
    if device == GLUCOSE_DEVICE:
        censored = draw(st.sampled_from([None, None, None, "LO", "HI"]))
        document |= {"type": "glucose", "unit": "mmol/L"}
        if censored:
            document["censored"] = censored
        else:
            document["value"] = draw(st.sampled_from([2.5, 2.9, 3.0, 3.5, 5.5, 14.0, 33.3]))
    else:
        document |= {
            "type": "blood_pressure",
            "systolic": draw(st.sampled_from([85, 120, 135, 150, 165, 179, 180, 205])),
            "diastolic": draw(st.sampled_from([55, 75, 85, 95, 100, 119, 120])),
        }
        if document["diastolic"] >= document["systolic"]:
            document["diastolic"] = document["systolic"] - 30
        pulse = draw(st.sampled_from([None, 38, 70, 105, 115]))
        if pulse is not None:
            document["pulse"] = pulse
    if draw(st.integers(0, 9)) == 0:
        document["flags"] = ["cuff_error"] if device != GLUCOSE_DEVICE else ["control_solution"]
    return document


@st.composite
def batches(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    documents = draw(st.lists(readings(), min_size=1, max_size=30))
    redelivered = draw(st.lists(st.sampled_from(documents), max_size=3))  # the same msg_id again
    documents = documents + redelivered
    cut = draw(st.integers(0, len(documents)))
    return [part for part in (documents[:cut], documents[cut:]) if part]


def _pipeline(url: str, engine_class: type[AlertEngine]) -> tuple[IngestPipeline, sessionmaker[Session]]:
    sessions = session_factory(make_engine(url))
    store = MemoryStore()
    rules = engine_class(
        sessions=sessions,
        history=RecentReadings(store, days=8, max_patients=100),
        clinic=Thresholds(),
        settings=AlertsSettings(),
        clock=lambda: NOW,
    )
    pipeline = IngestPipeline(
        store=store,
        registry=EnrolmentRegistry(sessions, cache_size=10, ttl=0),
        quarantine=Quarantine(sessions),
        limits=WireLimits(),
        clock=lambda: NOW,
        rules=rules,
    )
    return pipeline, sessions


def _outcome(sessions: sessionmaker[Session]) -> tuple[Counter[tuple[Any, ...]], ...]:
    """Alerts, events and texts, without ids (the two sides number their alerts in different orders)."""
    with sessions() as session:
        alerts = {a.id: a for a in session.scalars(select(Alert))}
        alert_rows = Counter(
            (
                a.patient_id,
                a.family,
                a.rule,
                a.severity,
                a.reading_count,
                a.worst_value_text,
                a.last_value_text,
                a.confirmation,
                a.cleared_at is not None,
                a.late,
                a.next_escalation_at,
            )
            for a in alerts.values()
        )
        events = Counter(
            (alerts[e.alert_id].patient_id, alerts[e.alert_id].family, e.kind, e.msg_id, e.detail)
            for e in session.scalars(select(AlertEvent))
        )
        texts = Counter(
            (m.recipient_kind, m.phone, m.template, m.purpose, m.critical)
            for m in session.scalars(select(OutboxMessage))
        )
    return alert_rows, events, texts


def _message(document: dict[str, Any], mid: int) -> InboundMessage:
    topic = f"rpm/devices/{document['device_id']}/readings"
    return InboundMessage(topic, json.dumps(document).encode(), mid, 1, 1, NOW)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=batches())
def test_critical_first_decides_what_one_piece_decides(
    template: Path, tmp_path_factory: pytest.TempPathFactory, parts: list[list[dict[str, Any]]]
) -> None:
    directory = tmp_path_factory.mktemp("example")
    outcomes = []
    for name, engine_class in (("first", AlertEngine), ("one-piece", InOnePiece)):
        path = directory / f"{name}.sqlite3"
        shutil.copy(template, path)
        pipeline, sessions = _pipeline(f"sqlite:///{path}", engine_class)
        try:
            stored = 0
            for part in parts:
                result = pipeline.process([_message(doc, n) for n, doc in enumerate(part, start=1)])
                stored += len(result.stored)
            outcomes.append((stored, _outcome(sessions)))
        finally:
            pipeline.close()
    (stored_first, first), (stored_whole, whole) = outcomes
    assert stored_first == stored_whole
    assert first == whole
