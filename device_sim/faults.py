"""Device faults on request: broken payloads, resends, wrong clocks, offline buffering, LO/HI.

Each fault is drawn per reading with its own probability (at most one fault per reading, tried in
the order of `FaultKind`), and every message it produces says what the gateway must do with it:
`expected` ("stored" or "rejected") and the rejection `reason` code of `gateway.wire.parse`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from device_sim.devices import Outgoing, SimDevice, encode, format_time
from device_sim.errors import FaultSpecError
from gateway.wire import MAX_PAYLOAD_BYTES, RejectionReason


class FaultKind(StrEnum):
    """A kind of device misbehaviour the simulator can inject."""

    OFFLINE = "offline"  # buffer readings for a while, then publish them in a burst
    MALFORMED = "malformed"  # break the contract (see Malformation)
    SKEW = "skew"  # wrong device clock: far in the future (rejected) or a few minutes off (accepted)
    DUPLICATE = "duplicate"  # resend the same msg_id after a reconnect
    CENSORED = "censored"  # glucometer out of range: LO or HI instead of a value


class Malformation(StrEnum):
    """One way a payload breaks wire contract v1."""

    NOT_JSON = "not_json"
    NOT_UTF8 = "not_utf8"
    WRONG_TYPE = "wrong_type"
    SYSTOLIC_NOT_ABOVE_DIASTOLIC = "systolic_not_above_diastolic"
    OUT_OF_RANGE = "out_of_range"
    MISSING_TIMEZONE = "missing_timezone"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    DEVICE_MISMATCH = "device_mismatch"
    OVERSIZE = "oversize"


MALFORMATION_REASONS: Mapping[Malformation, RejectionReason] = MappingProxyType(
    {
        Malformation.NOT_JSON: "not_json",
        Malformation.NOT_UTF8: "not_utf8",
        Malformation.WRONG_TYPE: "schema",
        Malformation.SYSTOLIC_NOT_ABOVE_DIASTOLIC: "schema",
        Malformation.OUT_OF_RANGE: "schema",
        Malformation.MISSING_TIMEZONE: "schema",
        Malformation.MISSING_FIELD: "schema",
        Malformation.UNKNOWN_FIELD: "schema",
        Malformation.DEVICE_MISMATCH: "device_mismatch",
        Malformation.OVERSIZE: "too_large",
    }
)

# Far enough ahead that the gateway still rejects it after a long queueing delay.
FUTURE_SKEW = (timedelta(hours=1), timedelta(days=2))
# A few minutes off but inside the gateway's 5-minute tolerance.
TOLERATED_SKEW = (timedelta(minutes=-10), timedelta(minutes=3))
OFFLINE_READINGS = (3, 12)


def parse_fault_spec(spec: str) -> dict[FaultKind, float]:
    """Parse `malformed=0.02,duplicate=0.01,...` into probabilities; raises FaultSpecError on a bad spec."""
    probabilities: dict[FaultKind, float] = {}
    if not spec.strip():
        return probabilities
    known = ", ".join(kind.value for kind in FaultKind)
    for item in spec.split(","):
        name, sep, text = item.strip().partition("=")
        name = name.strip().lower()
        if not sep or not name or not text.strip():
            raise FaultSpecError(
                f"fault {item.strip()!r} must look like NAME=PROBABILITY, e.g. malformed=0.02"
            )
        try:
            kind = FaultKind(name)
        except ValueError:
            raise FaultSpecError(f"unknown fault {name!r}; known faults: {known}") from None
        if kind in probabilities:
            raise FaultSpecError(f"fault {name!r} is given twice")
        try:
            probability = float(text)
        except ValueError:
            raise FaultSpecError(f"probability of {name!r} must be a number, got {text.strip()!r}") from None
        if not 0.0 <= probability <= 1.0:
            raise FaultSpecError(f"probability of {name!r} must be between 0 and 1, got {text.strip()}")
        probabilities[kind] = probability
    total = sum(probabilities.values())
    if total > 1.0:
        raise FaultSpecError(
            f"fault probabilities add up to {total:g}; at most one fault per reading, so <= 1"
        )
    return probabilities


def malform(payload: Mapping[str, Any], kind: Malformation, rng: random.Random) -> bytes:
    """`payload` (a valid contract payload) broken in the way `kind` names."""
    document = dict(payload)
    reading_type = document["type"]
    if kind is Malformation.NOT_JSON:
        text = encode(document).decode("utf-8")
        if rng.random() < 0.5:
            # A truncated object is never valid JSON.
            return text[: rng.randrange(1, len(text) - 1)].encode("utf-8")
        return f"sys={document.get('systolic', 0)};dia={document.get('diastolic', 0)}".encode()
    if kind is Malformation.NOT_UTF8:
        return encode(document).replace(b'"v"', b'"\xff\xfe"', 1)
    if kind is Malformation.WRONG_TYPE:
        field_name = "systolic" if reading_type == "blood_pressure" else "value"
        document.pop("censored", None)
        document[field_name] = str(document.get(field_name, "5.5"))
    elif kind is Malformation.SYSTOLIC_NOT_ABOVE_DIASTOLIC:
        document = _bp_fields(document, rng)
        document["systolic"], document["diastolic"] = document["diastolic"], document["systolic"]
    elif kind is Malformation.OUT_OF_RANGE:
        document |= _out_of_range(reading_type, rng)
    elif kind is Malformation.MISSING_TIMEZONE:
        document["measured_at"] = document["measured_at"][:19]
    elif kind is Malformation.MISSING_FIELD:
        del document[rng.choice(["msg_id", "measured_at", "type", "v"])]
    elif kind is Malformation.UNKNOWN_FIELD:
        document[rng.choice(["temperature", "patient_id", "note"])] = rng.choice([36.6, "P-000001", "ok"])
    elif kind is Malformation.DEVICE_MISMATCH:
        document["device_id"] = document["device_id"] + "-x"
    elif kind is Malformation.OVERSIZE:
        document["debug"] = "x" * (MAX_PAYLOAD_BYTES + rng.randrange(1, 4096))
    return encode(document)


def _bp_fields(document: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    # A glucometer payload turned into a BP one, so every malformation applies to every device.
    if document["type"] == "blood_pressure":
        return document
    for name in ("value", "unit", "meal", "censored"):
        document.pop(name, None)
    return document | {
        "type": "blood_pressure",
        "systolic": rng.randint(120, 160),
        "diastolic": rng.randint(70, 95),
    }


def _out_of_range(reading_type: str, rng: random.Random) -> dict[str, Any]:
    if reading_type == "blood_pressure":
        return rng.choice([{"systolic": 300}, {"diastolic": 20}, {"pulse": 300}, {"battery": 150}])
    return rng.choice([{"value": -1.0}, {"battery": 101}, {"value": 0}])


@dataclass(slots=True)
class _DeviceFaultState:
    rng: random.Random
    offline_left: int = 0
    buffered: list[Outgoing] = field(default_factory=list)


@dataclass(slots=True)
class FaultInjector:
    """Applies faults to each device's readings; state (offline buffers) is kept per device."""

    probabilities: Mapping[FaultKind, float]
    seed: int
    malformations: tuple[Malformation, ...] = tuple(Malformation)
    _states: dict[str, _DeviceFaultState] = field(default_factory=dict)

    def apply(self, device: SimDevice, payload: dict[str, Any], wall_now: datetime) -> list[Outgoing]:
        """What `device` publishes now for this freshly measured `payload` (zero, one or more messages)."""
        state = self._state(device.device_id)
        if state.offline_left > 0:
            return self._buffer(state, _outgoing(device, payload, fault=FaultKind.OFFLINE.value))
        for kind in FaultKind:
            probability = self.probabilities.get(kind, 0.0)
            if probability > 0 and state.rng.random() < probability:
                result = self._inject(kind, device, payload, wall_now, state)
                if result is not None:
                    return result
        return [_outgoing(device, payload)]

    def pending(self) -> int:
        """Readings buffered by offline devices and not published yet."""
        return sum(len(state.buffered) for state in self._states.values())

    def _inject(
        self,
        kind: FaultKind,
        device: SimDevice,
        payload: dict[str, Any],
        wall_now: datetime,
        state: _DeviceFaultState,
    ) -> list[Outgoing] | None:
        rng = state.rng
        if kind is FaultKind.OFFLINE:
            state.offline_left = rng.randint(*OFFLINE_READINGS)
            return self._buffer(state, _outgoing(device, payload, fault=kind.value))
        if kind is FaultKind.MALFORMED:
            malformation = rng.choice(self.malformations)
            return [
                _outgoing(
                    device,
                    payload,
                    body=malform(payload, malformation, rng),
                    reason=MALFORMATION_REASONS[malformation],
                    fault=f"malformed:{malformation.value}",
                )
            ]
        if kind is FaultKind.SKEW:
            return [_skewed(device, payload, wall_now, rng)]
        if kind is FaultKind.DUPLICATE:
            original = _outgoing(device, payload)
            resend = replace(original, duplicate=True, fault=kind.value, reconnect_first=True)
            return [original, resend]
        if kind is FaultKind.CENSORED and device.kind == "glucose":
            censored = {k: v for k, v in payload.items() if k != "value"}
            censored["censored"] = rng.choice(["LO", "HI"])
            return [_outgoing(device, censored, fault=kind.value)]
        return None  # the fault does not apply to this device (censored BP)

    def _buffer(self, state: _DeviceFaultState, message: Outgoing) -> list[Outgoing]:
        state.buffered.append(message)
        state.offline_left -= 1
        if state.offline_left > 0:
            return []
        burst, state.buffered = state.buffered, []
        # Back online: the device reconnects and empties its buffer at once.
        return [replace(burst[0], reconnect_first=True), *burst[1:]]

    def _state(self, device_id: str) -> _DeviceFaultState:
        state = self._states.get(device_id)
        if state is None:
            state = _DeviceFaultState(rng=random.Random(f"{self.seed}/faults/{device_id}"))
            self._states[device_id] = state
        return state


def _skewed(device: SimDevice, payload: dict[str, Any], wall_now: datetime, rng: random.Random) -> Outgoing:
    skewed = dict(payload)
    if rng.random() < 0.5:
        ahead = _uniform_delta(rng, *FUTURE_SKEW)
        skewed["measured_at"] = format_time(wall_now + ahead, device.zone)
        return _outgoing(device, skewed, reason="future", fault="skew:future")
    measured_at = datetime.fromisoformat(payload["measured_at"])
    shifted = min(measured_at + _uniform_delta(rng, *TOLERATED_SKEW), wall_now + TOLERATED_SKEW[1])
    skewed["measured_at"] = format_time(shifted, device.zone)
    return _outgoing(device, skewed, fault="skew:tolerated")


def _uniform_delta(rng: random.Random, low: timedelta, high: timedelta) -> timedelta:
    return timedelta(seconds=rng.uniform(low.total_seconds(), high.total_seconds()))


def _outgoing(
    device: SimDevice,
    payload: Mapping[str, Any],
    *,
    body: bytes | None = None,
    reason: RejectionReason | None = None,
    fault: str | None = None,
) -> Outgoing:
    return Outgoing(
        topic=device.topic,
        payload=encode(payload) if body is None else body,
        msg_id=str(payload["msg_id"]),
        device_id=device.device_id,
        patient_id=device.patient.patient_id,
        type=device.kind,
        expected="stored" if reason is None else "rejected",
        reason=reason,
        fault=fault,
    )
