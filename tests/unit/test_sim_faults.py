"""Injected faults: every message's expected outcome is exactly gateway.wire.parse's verdict."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from device_sim.devices import Outgoing, SimDevice, build_fleet
from device_sim.errors import FaultSpecError
from device_sim.faults import (
    MALFORMATION_REASONS,
    FaultInjector,
    FaultKind,
    Malformation,
    malform,
    parse_fault_spec,
)
from device_sim.profiles import Condition
from device_sim.run import SimConfig, Traffic
from gateway.wire import Rejection, WireLimits, parse

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def _verdict(message: Outgoing, now: datetime = NOW) -> tuple[str, str | None]:
    result = parse(message.topic, message.payload, now=now)
    if isinstance(result, Rejection):
        return "rejected", result.reason
    return "stored", None


def _device(kind: str) -> SimDevice:
    condition = Condition.CONTROLLED_HTN if kind == "blood_pressure" else Condition.T1D
    fleet = build_fleet(patients=1, seed=1, mix={condition: 1.0})
    return next(d for d in fleet.devices if d.kind == kind)


def _only(kind: FaultKind, seed: int = 1) -> FaultInjector:
    return FaultInjector(probabilities={kind: 1.0}, seed=seed)


@pytest.mark.parametrize("device_kind", ["blood_pressure", "glucose"])
@pytest.mark.parametrize("malformation", list(Malformation))
def test_each_malformation_is_rejected_with_its_reason(device_kind: str, malformation: Malformation) -> None:
    device = _device(device_kind)
    rng = random.Random(1)
    for minute in range(40):
        payload = device.measure(NOW - timedelta(minutes=minute), danger=0.2)
        message = Outgoing(
            topic=device.topic,
            payload=malform(payload, malformation, rng),
            msg_id=payload["msg_id"],
            device_id=device.device_id,
            patient_id=device.patient.patient_id,
            type=device.kind,
        )
        result = parse(message.topic, message.payload, now=NOW)
        assert isinstance(result, Rejection), (malformation, message.payload[:300])
        assert result.reason == MALFORMATION_REASONS[malformation], (result, message.payload[:300])


@pytest.mark.parametrize("device_kind", ["blood_pressure", "glucose"])
def test_malformed_fault_marks_messages_rejected_with_the_right_reason(device_kind: str) -> None:
    device = _device(device_kind)
    injector = _only(FaultKind.MALFORMED)
    faults: Counter[str] = Counter()
    for minute in range(400):
        [message] = injector.apply(device, device.measure(NOW - timedelta(minutes=minute), danger=0), NOW)
        assert message.expected == "rejected"
        assert _verdict(message) == (message.expected, message.reason)
        assert message.fault is not None
        faults[message.fault] += 1
    assert {f"malformed:{m.value}" for m in Malformation} == set(faults)


def test_skew_far_in_the_future_is_rejected_and_a_few_minutes_off_is_stored() -> None:
    device = _device("blood_pressure")
    injector = _only(FaultKind.SKEW)
    outcomes: Counter[str | None] = Counter()
    for minute in range(300):
        [message] = injector.apply(device, device.measure(NOW - timedelta(minutes=minute % 3), danger=0), NOW)
        assert _verdict(message) == (message.expected, message.reason), message.payload
        outcomes[message.fault] += 1
        measured_at = datetime.fromisoformat(json.loads(message.payload)["measured_at"])
        if message.fault == "skew:tolerated":
            assert measured_at != NOW
            assert NOW - timedelta(minutes=12) <= measured_at <= NOW + timedelta(minutes=3)
    assert outcomes["skew:future"] > 100 and outcomes["skew:tolerated"] > 100


def test_expected_outcomes_hold_when_the_gateway_sees_the_message_late() -> None:
    # Queued for an hour in the broker: "future" stays future enough, "tolerated" stays tolerated.
    device = _device("glucose")
    injector = _only(FaultKind.SKEW)
    for minute in range(200):
        [message] = injector.apply(device, device.measure(NOW - timedelta(minutes=minute), danger=0), NOW)
        for delay in (timedelta(0), timedelta(seconds=30), timedelta(minutes=50)):
            assert _verdict(message, NOW + delay) == (message.expected, message.reason)


def test_skew_future_is_rejected_even_with_a_tolerant_gateway() -> None:
    device = _device("blood_pressure")
    injector = _only(FaultKind.SKEW, seed=3)
    tolerant = WireLimits(max_future_skew=timedelta(minutes=30))
    messages = [injector.apply(device, device.measure(NOW, danger=0), NOW)[0] for _ in range(100)]
    future = [m for m in messages if m.fault == "skew:future"]
    assert len(future) > 20
    for message in future:
        result = parse(message.topic, message.payload, now=NOW, limits=tolerant)
        assert isinstance(result, Rejection) and result.reason == "future"


def test_duplicate_resends_the_same_bytes_after_a_reconnect() -> None:
    device = _device("glucose")
    original, resend = _only(FaultKind.DUPLICATE).apply(device, device.measure(NOW, danger=0), NOW)
    assert resend.payload == original.payload and resend.msg_id == original.msg_id
    assert (original.duplicate, resend.duplicate) == (False, True)
    assert (original.reconnect_first, resend.reconnect_first) == (False, True)
    assert original.expected == resend.expected == "stored"
    assert _verdict(original) == _verdict(resend) == ("stored", None)


def test_offline_device_publishes_its_buffer_in_a_burst_with_old_times() -> None:
    device = _device("blood_pressure")
    injector = FaultInjector(probabilities={FaultKind.OFFLINE: 1.0}, seed=2)
    silent = 0
    burst: list[Outgoing] = []
    minute = 0
    while not burst:
        burst = injector.apply(
            device, device.measure(NOW - timedelta(hours=5) + timedelta(minutes=minute), danger=0), NOW
        )
        silent += not burst
        minute += 10
    assert 3 <= len(burst) <= 12 and silent == len(burst) - 1
    assert burst[0].reconnect_first and not any(m.reconnect_first for m in burst[1:])
    times = [datetime.fromisoformat(json.loads(m.payload)["measured_at"]) for m in burst]
    assert times == sorted(times) and times[0] < NOW - timedelta(hours=4)
    for message in burst:
        assert message.fault == "offline" and _verdict(message) == ("stored", None)
    assert injector.pending() == 0


def test_censored_glucose_is_lo_or_hi_without_a_value() -> None:
    device = _device("glucose")
    injector = _only(FaultKind.CENSORED)
    seen: Counter[str] = Counter()
    for minute in range(100):
        [message] = injector.apply(device, device.measure(NOW - timedelta(minutes=minute), danger=0), NOW)
        document = json.loads(message.payload)
        assert "value" not in document and message.fault == "censored"
        seen[document["censored"]] += 1
        assert _verdict(message) == ("stored", None)
    assert seen["LO"] > 20 and seen["HI"] > 20


def test_censored_does_not_apply_to_blood_pressure() -> None:
    device = _device("blood_pressure")
    [message] = _only(FaultKind.CENSORED).apply(device, device.measure(NOW, danger=0), NOW)
    assert message.fault is None and _verdict(message) == ("stored", None)


def test_every_message_of_a_faulty_run_matches_the_gateway_verdict() -> None:
    config = SimConfig(
        patients=60,
        seed=11,
        start=NOW - timedelta(days=3),
        speed=2_000.0,
        faults={kind: 0.04 for kind in FaultKind},
    )
    traffic = Traffic(config, start=NOW - timedelta(days=3))
    faults: Counter[str] = Counter()
    stored_ids: set[tuple[str, str]] = set()
    for slot in range(6_000):
        for message in traffic.messages(slot, NOW):
            assert _verdict(message) == (message.expected, message.reason), (
                message.fault,
                message.payload[:300],
            )
            faults[(message.fault or "none").split(":")[0]] += 1
            key = (message.device_id, message.msg_id)
            if message.expected == "stored":
                # A duplicate repeats an earlier stored message; nothing else repeats a msg_id.
                assert (key in stored_ids) == message.duplicate
                stored_ids.add(key)
    assert set(faults) == {"none", *(kind.value for kind in FaultKind)}


def test_faults_are_reproducible() -> None:
    def run() -> list[tuple[bytes, str | None]]:
        config = SimConfig(patients=10, seed=5, start=NOW, faults={kind: 0.1 for kind in FaultKind})
        traffic = Traffic(config, start=NOW)
        return [(m.payload, m.fault) for slot in range(500) for m in traffic.messages(slot, NOW)]

    assert run() == run()


def test_manifest_record_has_the_documented_fields() -> None:
    device = _device("blood_pressure")
    [message] = _only(FaultKind.MALFORMED).apply(device, device.measure(NOW, danger=0), NOW)
    record = message.manifest_record()
    assert set(record) == {
        "msg_id",
        "device_id",
        "patient_id",
        "topic",
        "type",
        "expected",
        "reason",
        "duplicate",
        "fault",
    }
    assert record["expected"] == "rejected" and record["reason"] in {
        "schema",
        "not_json",
        "not_utf8",
        "too_large",
        "device_mismatch",
    }
    json.dumps(record)


def test_fault_spec_parses_probabilities() -> None:
    assert parse_fault_spec(" malformed=0.02, Duplicate=0.01,skew=0,offline=1e-3,censored=0.5") == {
        FaultKind.MALFORMED: 0.02,
        FaultKind.DUPLICATE: 0.01,
        FaultKind.SKEW: 0.0,
        FaultKind.OFFLINE: 0.001,
        FaultKind.CENSORED: 0.5,
    }
    assert parse_fault_spec("") == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("malformed", "must look like NAME=PROBABILITY"),
        ("malformed=", "must look like NAME=PROBABILITY"),
        ("=0.1", "must look like NAME=PROBABILITY"),
        ("malformed=0.1,", "must look like NAME=PROBABILITY"),
        (
            "garbled=0.1",
            r"unknown fault 'garbled'; known faults: offline, malformed, skew, duplicate, censored",
        ),
        ("skew=0.1,skew=0.2", "'skew' is given twice"),
        ("skew=often", "must be a number, got 'often'"),
        ("skew=1.5", "between 0 and 1, got 1.5"),
        ("skew=-0.1", "between 0 and 1"),
        ("skew=nan", "between 0 and 1"),
        ("skew=0.6,malformed=0.6", "add up to 1.2"),
    ],
)
def test_fault_spec_errors_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message):
        parse_fault_spec(spec)
