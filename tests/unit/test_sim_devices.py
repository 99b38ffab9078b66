"""Simulated devices: payloads exactly per wire contract v1, reproducible from the seed."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from device_sim.devices import build_fleet
from device_sim.profiles import Condition
from device_sim.run import SimConfig, Traffic
from gateway.wire import BloodPressureReading, GlucoseReading, Rejection, parse

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
START = NOW - timedelta(days=14)


def _traffic(seed: int = 1, **overrides: object) -> Traffic:
    options: dict[str, object] = {
        "patients": 30,
        "seed": seed,
        "start": START,
        "speed": 3600.0,
        "danger": 0.1,
    }
    options.update(overrides)
    config = SimConfig.model_validate(options)
    return Traffic(config, start=START)


def _payloads(traffic: Traffic, slots: int) -> list[bytes]:
    return [message.payload for slot in range(slots) for message in traffic.messages(slot, NOW)]


def test_same_seed_same_messages() -> None:
    assert _payloads(_traffic(seed=7), 600) == _payloads(_traffic(seed=7), 600)


def test_another_seed_other_messages() -> None:
    assert _payloads(_traffic(seed=7), 50) != _payloads(_traffic(seed=8), 50)


def test_same_seed_same_fleet() -> None:
    first = build_fleet(patients=40, seed=3)
    second = build_fleet(patients=40, seed=3)
    assert first.patients == second.patients
    assert [(d.device_id, d.patient.patient_id, d.unit, d.firmware) for d in first.devices] == [
        (d.device_id, d.patient.patient_id, d.unit, d.firmware) for d in second.devices
    ]


def test_every_plain_reading_is_accepted_by_the_gateway() -> None:
    traffic = _traffic()
    kinds: Counter[str] = Counter()
    for slot in range(3_000):
        for message in traffic.messages(slot, NOW):
            reading = parse(message.topic, message.payload, now=NOW)
            assert not isinstance(reading, Rejection), (reading, message.payload)
            assert message.expected == "stored" and message.reason is None and not message.duplicate
            assert reading.device_id == message.device_id and reading.msg_id == message.msg_id
            kinds[reading.type] += 1
    assert kinds["blood_pressure"] > 500 and kinds["glucose"] > 500


def test_payload_fields_follow_the_contract() -> None:
    traffic = _traffic()
    units: Counter[str] = Counter()
    censored: Counter[str] = Counter()
    for slot in range(4_000):
        for message in traffic.messages(slot, NOW):
            document = json.loads(message.payload)
            assert document["v"] == 1
            assert uuid.UUID(document["msg_id"]).version == 4
            # Tyumen local time with its offset, to the second.
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+05:00", document["measured_at"])
            assert message.topic == f"rpm/devices/{document['device_id']}/readings"
            if document["type"] == "glucose":
                units[document["unit"]] += 1
                assert document["meal"] in {"fasting", "before_meal", "after_meal", "bedtime", "random"}
                if "censored" in document:
                    censored[document["censored"]] += 1
                    assert "value" not in document
                elif document["unit"] == "mg/dL":
                    assert isinstance(document["value"], int)
            else:
                assert {"systolic", "diastolic", "pulse"} <= set(document)
    assert units["mmol/L"] > units["mg/dL"] > 0
    assert censored["LO"] > 0 and censored["HI"] > 0


def test_ids_and_patients() -> None:
    fleet = build_fleet(patients=25, seed=2)
    assert [p.patient_id for p in fleet.patients] == [f"P-{n:06d}" for n in range(1, 26)]
    for patient in fleet.patients:
        assert re.fullmatch(r"\+79\d{9}", patient.phone)
        assert patient.language in {"ru", "en"} and patient.display_name
        assert fleet.devices_of(patient.patient_id), patient
    bp = [d.device_id for d in fleet.devices if d.kind == "blood_pressure"]
    gl = [d.device_id for d in fleet.devices if d.kind == "glucose"]
    assert bp == [f"bp-{n:06d}" for n in range(1, len(bp) + 1)]
    assert gl == [f"gl-{n:06d}" for n in range(1, len(gl) + 1)]
    assert len({d.device_id for d in fleet.devices}) == len(fleet.devices)


def test_languages_are_mostly_russian() -> None:
    languages = Counter(p.language for p in build_fleet(patients=400, seed=5).patients)
    assert languages["ru"] > 3 * languages["en"] > 0


@pytest.mark.parametrize(
    ("mix", "kinds"),
    [
        ({Condition.HYPOTENSION: 1.0}, {"blood_pressure"}),
        ({Condition.T1D: 1.0}, {"glucose"}),
        ({Condition.T2D: 1.0}, {"glucose", "blood_pressure"}),
    ],
)
def test_mix_decides_the_devices(mix: dict[Condition, float], kinds: set[str]) -> None:
    fleet = build_fleet(patients=40, seed=1, mix=mix)
    assert {d.kind for d in fleet.devices} == kinds
    assert {p.profile.condition for p in fleet.patients} == set(mix)


def test_battery_drains_and_is_flagged_when_low() -> None:
    fleet = build_fleet(patients=1, seed=1, mix={Condition.CONTROLLED_HTN: 1.0})
    device = fleet.devices[0]
    device.reports_battery = True
    levels = []
    low_flagged = False
    for minute in range(1500):
        document = device.measure(NOW - timedelta(minutes=minute), danger=0)
        levels.append(document["battery"])
        low_flagged |= document["battery"] < 15 and "low_battery" in document["flags"]
        assert ("low_battery" in document["flags"]) == (document["battery"] < 15)
    assert levels[0] > levels[100]
    assert low_flagged
    assert 100 in levels  # batteries were changed once empty


def test_status_carries_battery_and_firmware() -> None:
    device = build_fleet(patients=1, seed=1).devices[0]
    online = device.status(online=True)
    assert online["online"] is True and 0 <= online["battery"] <= 100 and online["firmware"]
    assert device.status(online=False) == {"online": False}


def test_measured_at_never_passes_the_wall_clock() -> None:
    # A run started in the past at high speed catches up with now and then stays there.
    config = SimConfig(patients=5, seed=1, start=NOW - timedelta(hours=1), speed=10_000.0, interval=1.0)
    traffic = Traffic(config, start=NOW - timedelta(hours=1))
    latest = []
    for slot in range(200):
        for message in traffic.messages(slot, NOW):
            reading = parse(message.topic, message.payload, now=NOW)
            assert isinstance(reading, BloodPressureReading | GlucoseReading)
            assert reading.measured_at <= NOW
            latest.append(reading.measured_at)
    assert max(latest) > NOW - timedelta(seconds=60)


def test_high_speed_spreads_readings_over_the_day() -> None:
    traffic = _traffic(speed=86_400.0)
    hours = Counter(
        datetime.fromisoformat(json.loads(m.payload)["measured_at"]).hour
        for slot in range(2_000)
        for m in traffic.messages(slot, NOW)
    )
    assert len(hours) == 24
