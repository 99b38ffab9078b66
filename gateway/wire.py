"""Wire contract v1 (devices -> gateway): topic and payload models, and `parse`.

`parse` never raises for bad input: it returns either a `Reading` or a `Rejection` with a reason code
and a text a device maker can act on. See DOMAIN.md, "Wire contract".
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import jiter
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

MAX_PAYLOAD_BYTES = 4096
MG_DL_PER_MMOL_L = 18.016
# fullmatch, ASCII classes: `$` and `\d` would let "...readings\n" and non-ASCII digits through.
TOPIC_RE = re.compile(r"rpm/devices/([A-Za-z0-9_-]{3,64})/readings")
RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{3,64}$"
MSG_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"
# A clock that says earlier than this was never set; the stores cannot hold such times either.
EARLIEST_MEASURED_AT: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Far beyond any glucometer (they read up to ~33.3 mmol/L, then "HI"): a unit or encoding bug.
MAX_GLUCOSE_MMOL_L = 100.0

DeviceFlag = Literal[
    "irregular_pulse", "movement", "cuff_loose", "position_error", "low_battery", "control_solution"
]
# Quality flag the gateway adds itself (heuristic, DOMAIN.md): pulse pressure outside its limits.
PULSE_PRESSURE_FLAG = "pulse_pressure"

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
MsgId = Annotated[str, Field(pattern=MSG_ID_PATTERN)]


class _Payload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1]
    msg_id: MsgId
    device_id: DeviceId
    # Strict mode would refuse strings; RFC 3339 text with an offset is the contract.
    measured_at: Annotated[AwareDatetime, Field(strict=False, ge=EARLIEST_MEASURED_AT)]
    flags: tuple[DeviceFlag, ...] = ()
    battery: Annotated[StrictInt, Field(ge=0, le=100)] | None = None

    @field_validator("flags", mode="before")
    @classmethod
    def _flags_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, list):
            return tuple(value)
        return value

    @field_validator("measured_at", mode="before")
    @classmethod
    def _rfc3339_text(cls, value: Any) -> Any:
        if not isinstance(value, str) or not RFC3339_RE.fullmatch(value):
            raise ValueError(
                "must be an RFC 3339 date-time text with a time zone offset, e.g. 2026-11-28T08:15:02+05:00"
            )
        return _stdlib_datetime(value)


def _stdlib_datetime(text: str) -> datetime | str:
    """The RFC 3339 `text` as a datetime with a `datetime.timezone`, or `text` itself for pydantic to
    parse (and to word its error) when the standard library does not take it or it is before 1970.

    Pydantic's own parse gives the same instant with its `TzInfo`, whose `utcoffset` is a call into Rust
    of 0.4 µs: every comparison and subtraction with a time of another zone object (the clock, the
    history's bounds, the enrolments) paid it twice, several times per reading. A test holds the two
    parses to the same result.
    """
    try:
        moment = datetime.fromisoformat(text)
        return moment if moment >= EARLIEST_MEASURED_AT else text
    except (ValueError, OverflowError):
        return text


class BloodPressureReading(_Payload):
    """One blood-pressure measurement (mmHg), as the device sent it."""

    type: Literal["blood_pressure"]
    systolic: Annotated[StrictInt, Field(ge=60, le=280)]
    diastolic: Annotated[StrictInt, Field(ge=30, le=200)]
    pulse: Annotated[StrictInt, Field(ge=25, le=250)] | None = None

    @model_validator(mode="after")
    def _systolic_above_diastolic(self) -> BloodPressureReading:
        if self.systolic <= self.diastolic:
            raise ValueError(f"systolic ({self.systolic}) must be greater than diastolic ({self.diastolic})")
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
    def _finite_number(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a JSON number")
        try:
            number = float(value)
        except OverflowError:  # a JSON integer of hundreds of digits
            raise ValueError("is too large") from None
        if not math.isfinite(number):
            raise ValueError("must be a finite number")
        return number

    @model_validator(mode="after")
    def _value_or_censored(self) -> GlucoseReading:
        if self.censored is None and self.value is None:
            raise ValueError('value is required unless censored is "LO" or "HI"')
        if self.censored is not None and self.value is not None:
            raise ValueError(f'value must be absent when censored is "{self.censored}"')
        value_mmol = self.value_mmol
        if value_mmol is not None and value_mmol > MAX_GLUCOSE_MMOL_L:
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
# Dispatch on `type` ourselves: cheaper than a union, and the error names the field plainly.
_MODELS: Final[dict[str, type[BloodPressureReading] | type[GlucoseReading]]] = {
    "blood_pressure": BloodPressureReading,
    "glucose": GlucoseReading,
}
_TYPES_TEXT: Final = " or ".join(f'"{name}"' for name in _MODELS)

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

    def __post_init__(self) -> None:
        if self.max_future_skew < timedelta(0):
            raise ValueError(f"max_future_skew must not be negative, got {self.max_future_skew}")
        if self.pulse_pressure_min > self.pulse_pressure_max:
            raise ValueError(
                f"pulse_pressure_min ({self.pulse_pressure_min}) must not exceed "
                f"pulse_pressure_max ({self.pulse_pressure_max})"
            )


def device_from_topic(topic: str) -> str | None:
    """The device id in a readings topic, or None when the topic is not one."""
    match = TOPIC_RE.fullmatch(topic)
    return match.group(1) if match else None


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {json.dumps(key)}")
            seen.add(key)
    return result


# Built once: json.loads(text, **hooks) would build a new decoder per message (twice the cost).
_JSON: Final = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)


def _fast_json(payload: bytes) -> Any | None:
    """The payload's JSON value by jiter (Rust, about 3 µs less per reading than `_JSON`), or None when
    jiter refuses it: then `_JSON` decides, so what is accepted and each error's text stay as they were.

    jiter takes no more than `_JSON` does: NaN and Infinity and duplicate keys are refused here too, it
    refuses lone surrogate escapes (`_JSON` takes them, and the schema then refuses them in its words)
    and nesting deeper than about 200 (`_JSON` takes some), and what both take comes out the same (a
    property test holds both).
    """
    try:
        return jiter.from_json(payload, allow_inf_nan=False, catch_duplicate_keys=True, cache_mode="keys")
    except ValueError:
        return None


def _shown(value: Any, limit: int = 60) -> str:
    """A JSON value as a device maker would write it, shortened; containers only by kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _where(loc: tuple[int | str, ...]) -> str:
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            name = part if _PLAIN_NAME.fullmatch(part) else _shown(part)
            parts.append(f".{name}" if parts else name)
    return "".join(parts)


# Pydantic's wording where it is not what a device maker would understand.
_TEXT_BY_ERROR: Final = {
    "int_type": "must be a JSON integer (no quotes, no decimal point)",
    "string_type": "must be a JSON string",
    "tuple_type": "must be a JSON list of flag names",
    "string_unicode": "must be valid Unicode text (a lone \\uD800-\\uDFFF escape is not)",
}
_TEXT_BY_PATTERN: Final = {
    "device_id": "must be 3-64 characters, each a letter A-Z/a-z, a digit, '_' or '-'",
    "msg_id": "must be 1-128 printable ASCII characters without spaces (a UUID or ULID)",
}


def _error_text(err: ErrorDetails, reading_type: str) -> str:
    where = _where(err["loc"])
    kind = err["type"]
    if kind == "missing":
        return f"{where}: required field is missing"
    if kind == "extra_forbidden":
        return f'{where}: unknown field: not in contract v1 for type "{reading_type}"'
    if not where:
        if kind == "string_unicode":  # pydantic reports a broken field name without a location
            return f"field name {_shown(err['input'])} must be valid Unicode text"
        return err["msg"].removeprefix("Value error, ")  # a rule across fields: its text names them
    if kind == "string_pattern_mismatch" and where in _TEXT_BY_PATTERN:
        message = _TEXT_BY_PATTERN[where]
    elif where == "measured_at" and kind == "greater_than_equal":
        message = "is before 1970-01-01T00:00:00Z: the device clock is not set"
    else:
        message = _TEXT_BY_ERROR.get(kind) or err["msg"].removeprefix("Value error, ").replace(
            "Input should be", "must be", 1
        )
    return f"{where}: {message} (got {_shown(err['input'])})"


def _schema_text(exc: ValidationError, reading_type: str) -> str:
    errors = exc.errors(include_url=False, include_context=False)
    return "; ".join(_error_text(err, reading_type) for err in errors)


def _schema(detail: str, device_id: str) -> Rejection:
    return Rejection("schema", detail[:1000], device_id)


def parse(
    topic: str, payload: bytes, *, now: datetime, limits: WireLimits = WireLimits()
) -> Reading | Rejection:
    """Decode and validate one MQTT message; never raises for bad input.

    `now` is the gateway clock (timezone-aware), used for the future-skew rule. Checks run from the
    envelope inwards, so the first broken layer is the one reported.
    """
    topic_device = device_from_topic(topic)
    if topic_device is None:
        return Rejection("bad_topic", f"topic {_shown(topic, 200)} is not rpm/devices/{{device_id}}/readings")
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(
            "too_large", f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}", topic_device
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("not_utf8", f"payload is not UTF-8: {exc.reason} at byte {exc.start}", topic_device)
    try:
        document = _fast_json(payload)
        if document is None:  # not taken by the fast parser: the standard one decides, in its words
            document = _JSON.decode(text)
    except RecursionError:
        return Rejection(
            "not_json", "payload is not JSON the gateway accepts: nested too deeply", topic_device
        )
    except ValueError as exc:
        return Rejection("not_json", f"payload is not JSON: {str(exc)[:300]}", topic_device)
    if not isinstance(document, dict):
        return Rejection("not_json", f"payload must be a JSON object, got {_shown(document)}", topic_device)
    return _validate(document, topic_device, now, limits)


def _validate(
    document: dict[str, Any], topic_device: str, now: datetime, limits: WireLimits
) -> Reading | Rejection:
    version = document.get("v")
    # `type() is int`: JSON true and 1.0 compare equal to 1 but are not the version number 1.
    if type(version) is not int or version != 1:
        if "v" not in document:
            return _schema("v: required field is missing (the payload version, 1)", topic_device)
        return _schema(
            f"v: unsupported payload version {_shown(version)}; this gateway accepts the integer 1",
            topic_device,
        )
    payload_device = document.get("device_id")
    if isinstance(payload_device, str) and payload_device != topic_device:
        return Rejection(
            "device_mismatch",
            f"payload device_id {_shown(payload_device, 80)} differs from the topic's {topic_device!r}",
            topic_device,
        )
    reading_type = document.get("type")
    model = _MODELS.get(reading_type) if isinstance(reading_type, str) else None
    if model is None:
        if "type" not in document:
            return _schema(f"type: required field is missing; must be {_TYPES_TEXT}", topic_device)
        return _schema(
            f"type: unknown reading type {_shown(reading_type)}; must be {_TYPES_TEXT}", topic_device
        )
    try:
        # The model's validator itself: `model_validate` adds 0.8 µs of argument checks per reading.
        reading: Reading = model.__pydantic_validator__.validate_python(document)
    except ValidationError as exc:
        return _schema(_schema_text(exc, document["type"]), topic_device)
    if reading.measured_at - now > limits.max_future_skew:
        return Rejection(
            "future",
            f"measured_at {reading.measured_at.isoformat()} is more than "
            f"{int(limits.max_future_skew.total_seconds())} s ahead of the gateway clock "
            f"({now.isoformat()}): check the device clock",
            topic_device,
        )
    return reading


def quality_flags(reading: Reading, limits: WireLimits = WireLimits()) -> tuple[str, ...]:
    """Device flags plus the gateway's own suspicion flags; non-empty means "needs re-measurement"."""
    flags: list[str] = list(dict.fromkeys(reading.flags)) if reading.flags else []
    if isinstance(reading, BloodPressureReading):
        pulse_pressure = reading.systolic - reading.diastolic
        if not limits.pulse_pressure_min <= pulse_pressure <= limits.pulse_pressure_max:
            flags.append(PULSE_PRESSURE_FLAG)
    return tuple(flags)
