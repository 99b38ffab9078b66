"""Simulated patients and their devices: BP monitors and glucometers that speak wire contract v1.

Everything is derived from the seed: the fleet (patients, profiles, devices) from one generator,
each device's readings and msg_ids from its own generator, so a device's stream does not depend
on how the runner interleaves devices.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from device_sim.profiles import (
    DEFAULT_MIX,
    Condition,
    PatientProfile,
    make_profile,
    sample_bp,
    sample_glucose,
)
from gateway.wire import MG_DL_PER_MMOL_L, RejectionReason

DeviceKind = Literal["blood_pressure", "glucose"]
Expected = Literal["stored", "rejected"]
Language = Literal["ru", "en"]

DEFAULT_TIMEZONE = "Asia/Yekaterinburg"
LOW_BATTERY_PERCENT = 15
_BP_FIRMWARE = ("1.4.2", "1.5.0", "2.0.3")
_GLUCOMETER_FIRMWARE = ("3.1.0", "3.2.1", "4.0.0")
# Most meters read 1.1-33.3 mmol/L (20-600 mg/dL); Russian "Satellite" meters read 0.6-35.0.
_METER_RANGES = ((1.1, 33.3), (0.6, 35.0))


@dataclass(frozen=True, slots=True)
class Patient:
    """A simulated patient: the identity enrolled in the database and the physiology behind it."""

    patient_id: str
    display_name: str
    phone: str
    language: Language
    timezone: str
    profile: PatientProfile


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One MQTT message to publish, with what the gateway must do with it.

    `expected` and `reason` say whether `gateway.wire.parse` accepts the payload (and if not, with
    which reason code); `duplicate` marks a resend of a msg_id already published, which must not
    create a second reading; `reconnect_first` asks the runner to reconnect before publishing it.
    """

    topic: str
    payload: bytes
    msg_id: str
    device_id: str
    patient_id: str
    type: DeviceKind
    expected: Expected = "stored"
    reason: RejectionReason | None = None
    duplicate: bool = False
    fault: str | None = None
    reconnect_first: bool = False

    def manifest_record(self) -> dict[str, Any]:
        """The manifest line (as a dict) for this message."""
        return {
            "msg_id": self.msg_id,
            "device_id": self.device_id,
            "patient_id": self.patient_id,
            "topic": self.topic,
            "type": self.type,
            "expected": self.expected,
            "reason": self.reason,
            "duplicate": self.duplicate,
            "fault": self.fault,
        }


def readings_topic(device_id: str) -> str:
    """The topic a device publishes its readings to."""
    return f"rpm/devices/{device_id}/readings"


def status_topic(device_id: str) -> str:
    """The (retained) topic a device publishes its online status, battery and firmware to."""
    return f"rpm/devices/{device_id}/status"


def encode(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as a device sends it."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def format_time(moment: datetime, zone: ZoneInfo) -> str:
    """RFC 3339 with the device's local offset, to the second (e.g. 2026-11-28T08:15:02+05:00)."""
    return moment.astimezone(zone).isoformat(timespec="seconds")


@dataclass(slots=True)
class SimDevice:
    """One home device: measures its patient, drains its battery, numbers its messages."""

    device_id: str
    kind: DeviceKind
    patient: Patient
    firmware: str
    rng: random.Random
    battery: float
    unit: Literal["mmol/L", "mg/dL"] = "mmol/L"
    meter_range: tuple[float, float] = _METER_RANGES[0]
    reports_battery: bool = True
    zone: ZoneInfo = field(default_factory=lambda: ZoneInfo(DEFAULT_TIMEZONE))

    @property
    def topic(self) -> str:
        """Where this device publishes readings."""
        return readings_topic(self.device_id)

    def new_msg_id(self) -> str:
        """A UUID drawn from the device's seeded generator, so a rerun repeats it."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def measure(self, measured_at: datetime, *, danger: float) -> dict[str, Any]:
        """Take one measurement at `measured_at` and return its contract payload."""
        self._drain_battery()
        payload: dict[str, Any] = {
            "v": 1,
            "msg_id": self.new_msg_id(),
            "device_id": self.device_id,
            "type": self.kind,
            "measured_at": format_time(measured_at, self.zone),
        }
        local = measured_at.astimezone(self.zone)
        flags: list[str]
        if self.kind == "blood_pressure":
            assert self.patient.profile.bp is not None  # built that way by build_fleet
            bp = sample_bp(self.patient.profile.bp, local, self.rng, danger=danger)
            payload |= {"systolic": bp.systolic, "diastolic": bp.diastolic, "pulse": bp.pulse}
            flags = list(bp.flags)
        else:
            assert self.patient.profile.glucose is not None
            glucose = sample_glucose(self.patient.profile.glucose, local, self.rng, danger=danger)
            payload |= self._glucose_value(glucose.mmol)
            payload["meal"] = glucose.meal
            flags = list(glucose.flags)
        if self.battery < LOW_BATTERY_PERCENT:
            flags.append("low_battery")
        payload["flags"] = flags
        if self.reports_battery:
            payload["battery"] = int(self.battery)
        return payload

    def status(self, *, online: bool) -> dict[str, Any]:
        """The retained status payload: online flag, battery and firmware."""
        if not online:
            return {"online": False}
        return {"online": True, "battery": int(self.battery), "firmware": self.firmware, "type": self.kind}

    def _glucose_value(self, mmol: float) -> dict[str, Any]:
        low, high = self.meter_range
        if mmol < low:
            return {"censored": "LO", "unit": self.unit}
        if mmol > high:
            return {"censored": "HI", "unit": self.unit}
        if self.unit == "mg/dL":
            return {"value": round(mmol * MG_DL_PER_MMOL_L), "unit": self.unit}
        return {"value": round(mmol, 1), "unit": self.unit}

    def _drain_battery(self) -> None:
        self.battery -= self.rng.uniform(0.02, 0.3)
        if self.battery < 1:
            # The patient finally changed the batteries.
            self.battery = 100.0


@dataclass(frozen=True, slots=True)
class Fleet:
    """The simulated patients and their devices, in a stable order."""

    patients: tuple[Patient, ...]
    devices: tuple[SimDevice, ...]

    def devices_of(self, patient_id: str) -> list[SimDevice]:
        """The devices handed to one patient."""
        return [device for device in self.devices if device.patient.patient_id == patient_id]


def build_fleet(
    *,
    patients: int,
    seed: int,
    mix: Mapping[Condition, float] = DEFAULT_MIX,
    mg_dl_share: float = 0.2,
    timezone: str = DEFAULT_TIMEZONE,
) -> Fleet:
    """Create `patients` patients (conditions drawn from `mix`) with a BP monitor and/or a glucometer each.

    Hypertension and hypotension get a BP monitor, diabetes a glucometer, and about half of the
    type 2 diabetics also a BP monitor. `mg_dl_share` of the glucometers report mg/dL.
    """
    rng = random.Random(f"{seed}/fleet")
    zone = ZoneInfo(timezone)
    conditions = [condition for condition, weight in mix.items() if weight > 0]
    weights = [mix[condition] for condition in conditions]
    people: list[Patient] = []
    devices: list[SimDevice] = []
    counters = {"blood_pressure": 0, "glucose": 0}
    for number in range(1, patients + 1):
        condition = rng.choices(conditions, weights)[0]
        patient = _patient(number, condition, rng, timezone)
        people.append(patient)
        kinds: list[DeviceKind] = []
        if patient.profile.bp is not None:
            kinds.append("blood_pressure")
        if patient.profile.glucose is not None:
            kinds.append("glucose")
        for kind in kinds:
            counters[kind] += 1
            devices.append(_device(kind, counters[kind], patient, seed, rng, mg_dl_share, zone))
    return Fleet(patients=tuple(people), devices=tuple(devices))


def _device(
    kind: DeviceKind,
    number: int,
    patient: Patient,
    seed: int,
    rng: random.Random,
    mg_dl_share: float,
    zone: ZoneInfo,
) -> SimDevice:
    prefix = "bp" if kind == "blood_pressure" else "gl"
    device_id = f"{prefix}-{number:06d}"
    glucometer = kind == "glucose"
    mg_dl = glucometer and rng.random() < mg_dl_share
    return SimDevice(
        device_id=device_id,
        kind=kind,
        patient=patient,
        firmware=rng.choice(_GLUCOMETER_FIRMWARE if glucometer else _BP_FIRMWARE),
        rng=random.Random(f"{seed}/device/{device_id}"),
        battery=rng.uniform(40, 100),
        unit="mg/dL" if mg_dl else "mmol/L",
        meter_range=_METER_RANGES[0] if mg_dl else rng.choices(_METER_RANGES, (0.7, 0.3))[0],
        # Some cheap devices never report their battery.
        reports_battery=rng.random() > 0.1,
        zone=zone,
    )


def _patient(number: int, condition: Condition, rng: random.Random, timezone: str) -> Patient:
    language: Language = "ru" if rng.random() < 0.85 else "en"
    return Patient(
        patient_id=f"P-{number:06d}",
        display_name=_display_name(language, rng),
        phone=f"+79{rng.randrange(10**9):09d}",
        language=language,
        timezone=timezone,
        profile=make_profile(condition, rng),
    )


_RU_MALE = (
    "Александр",
    "Сергей",
    "Владимир",
    "Николай",
    "Иван",
    "Михаил",
    "Андрей",
    "Виктор",
    "Юрий",
    "Пётр",
)
_RU_FEMALE = (
    "Елена",
    "Ольга",
    "Татьяна",
    "Наталья",
    "Галина",
    "Людмила",
    "Анна",
    "Мария",
    "Нина",
    "Валентина",
)
_RU_SURNAMES = (
    "Иванов",
    "Смирнов",
    "Кузнецов",
    "Попов",
    "Васильев",
    "Петров",
    "Соколов",
    "Михайлов",
    "Фёдоров",
)
_RU_PATRONYMICS = ("Александров", "Сергеев", "Иванов", "Николаев", "Петров", "Викторов", "Михайлов")
_EN_FIRST = ("John", "Mary", "Robert", "Linda", "David", "Susan", "James", "Karen", "Thomas", "Helen")
_EN_SURNAMES = ("Smith", "Brown", "Taylor", "Wilson", "Clark", "Walker", "Wright", "Green", "Baker")


def _display_name(language: Language, rng: random.Random) -> str:
    if language == "en":
        return f"{rng.choice(_EN_FIRST)} {rng.choice(_EN_SURNAMES)}"
    if rng.random() < 0.55:
        return f"{rng.choice(_RU_SURNAMES)}а {rng.choice(_RU_FEMALE)} {rng.choice(_RU_PATRONYMICS)}на"
    return f"{rng.choice(_RU_SURNAMES)} {rng.choice(_RU_MALE)} {rng.choice(_RU_PATRONYMICS)}ич"
