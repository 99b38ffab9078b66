"""Wire contract v1 (devices -> gateway): topic and payload models, and `parse`.

`parse` never raises for bad input: it returns either a `Reading` or a `Rejection` with a reason code
and a text a device maker can act on. See DOMAIN.md, "Wire contract".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

MAX_PAYLOAD_BYTES = 4096
MG_DL_PER_MMOL_L = 18.016
TOPIC_RE = re.compile(r"^rpm/devices/([A-Za-z0-9_-]{3,64})/readings$")
RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{3,64}$"

DeviceFlag = Literal[
    "irregular_pulse", "movement", "cuff_loose", "position_error", "low_battery", "control_solution"
]
# Quality flag the gateway adds itself (heuristic, DOMAIN.md): pulse pressure outside its limits.
PULSE_PRESSURE_FLAG = "pulse_pressure"

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
MsgId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1]
    msg_id: MsgId
    device_id: DeviceId
    # Strict mode would refuse strings; RFC 3339 text with an offset is the contract.
    measured_at: Annotated[AwareDatetime, Field(strict=False)]
    flags: tuple[DeviceFlag, ...] = ()
    battery: Annotated[StrictInt, Field(ge=0, le=100)] | None = None

    @field_validator("flags", mode="before")
    @classmethod
    def _flags_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            return tuple(value)
        return value

    @field_validator("measured_at", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: Any) -> Any:
        if not isinstance(value, str) or not RFC3339_RE.match(value):
            raise ValueError("measured_at must be an RFC 3339 date-time with a time zone offset")
        return value


class BloodPressureReading(_Payload):
    """One blood-pressure measurement (mmHg), as the device sent it."""

    type: Literal["blood_pressure"]
    systolic: Annotated[StrictInt, Field(ge=60, le=280)]
    diastolic: Annotated[StrictInt, Field(ge=30, le=200)]
    pulse: Annotated[StrictInt, Field(ge=25, le=250)] | None = None

    @model_validator(mode="after")
    def _systolic_above_diastolic(self) -> BloodPressureReading:
        if self.systolic <= self.diastolic:
            raise ValueError(
                f"systolic ({self.systolic}) must be greater than diastolic ({self.diastolic})"
            )
        return self


class GlucoseReading(_Payload):
    """One glucometer measurement; `value` and `unit` are kept as sent, `value_mmol` is normalised."""

    type: Literal["glucose"]
    value: Annotated[float, Field(strict=False, gt=0)] | None = None
    unit: Literal["mmol/L", "mg/dL"]
    censored: Literal["LO", "HI"] | None = None
    meal: Literal["fasting", "before_meal", "after_meal", "bedtime", "random"] | None = None

    @field_validator("value", mode="before")
    @classmethod
    def _number_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("value must be a number")
        if not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return value

    @model_validator(mode="after")
    def _value_or_censored(self) -> GlucoseReading:
        if self.censored is None and self.value is None:
            raise ValueError("value is required unless censored is LO or HI")
        if self.censored is not None and self.value is not None:
            raise ValueError(f"value must be absent when censored is {self.censored}")
        if self.value is not None and self.value_mmol is not None and self.value_mmol > 100:
            raise ValueError(f"value {self.value} {self.unit} is beyond any glucometer's range")
        return self

    @property
    def value_mmol(self) -> float | None:
        """The value in mmol/L (None when censored)."""
        if self.value is None:
            return None
        if self.unit == "mg/dL":
            # Not rounded: a rounded 53.9 mg/dL would no longer be below the 3.0 mmol/L threshold.
            return self.value / MG_DL_PER_MMOL_L
        return self.value


Reading = Annotated[BloodPressureReading | GlucoseReading, Field(discriminator="type")]
_READING = TypeAdapter(Reading)

RejectionReason = Literal[
    "bad_topic", "too_large", "not_utf8", "not_json", "schema", "device_mismatch", "future"
]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload broke the contract; `reason` is a short code, `detail` the text for a person."""

    reason: RejectionReason
    detail: str
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class WireLimits:
    """The heuristic limits of the contract (configurable, DOMAIN.md)."""

    max_future_skew: timedelta = timedelta(minutes=5)
    pulse_pressure_min: int = 10
    pulse_pressure_max: int = 150


def device_from_topic(topic: str) -> str | None:
    """The device id in a readings topic, or None when the topic is not one."""
    match = TOPIC_RE.match(topic)
    return match.group(1) if match else None


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _schema_text(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"] if p not in ("blood_pressure", "glucose"))
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse(topic: str, payload: bytes, *, now: datetime, limits: WireLimits = WireLimits()) -> Reading | Rejection:
    """Decode and validate one MQTT message; never raises for bad input."""
    topic_device = device_from_topic(topic)
    if topic_device is None:
        return Rejection("bad_topic", f"topic {topic[:200]!r} is not rpm/devices/{{device_id}}/readings")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(
            "too_large", f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}", topic_device
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("not_utf8", f"payload is not UTF-8: {exc.reason} at byte {exc.start}", topic_device)
    try:
        document = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        return Rejection("not_json", f"payload is not JSON: {str(exc)[:300]}", topic_device)
    if not isinstance(document, dict):
        return Rejection("not_json", "payload must be a JSON object", topic_device)
    try:
        reading = _READING.validate_python(document)
    except ValidationError as exc:
        return Rejection("schema", _schema_text(exc)[:1000], topic_device)
    if reading.device_id != topic_device:
        return Rejection(
            "device_mismatch",
            f"payload device_id {reading.device_id!r} differs from the topic's {topic_device!r}",
            topic_device,
        )
    if reading.measured_at - now > limits.max_future_skew:
        return Rejection(
            "future",
            f"measured_at {reading.measured_at.isoformat()} is more than "
            f"{int(limits.max_future_skew.total_seconds())} s ahead of the gateway clock",
            topic_device,
        )
    return reading


def quality_flags(reading: Reading, limits: WireLimits = WireLimits()) -> tuple[str, ...]:
    """Device flags plus the gateway's own suspicion flags; non-empty means "needs re-measurement"."""
    flags = list(reading.flags)
    if isinstance(reading, BloodPressureReading):
        pulse_pressure = reading.systolic - reading.diastolic
        if not limits.pulse_pressure_min <= pulse_pressure <= limits.pulse_pressure_max:
            flags.append(PULSE_PRESSURE_FLAG)
    return tuple(flags)
