"""Contract tests for the wire payload v1 (DOMAIN.md, "Wire contract"), table by table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.wire import (
    MAX_PAYLOAD_BYTES,
    MG_DL_PER_MMOL_L,
    PULSE_PRESSURE_FLAG,
    BloodPressureReading,
    GlucoseReading,
    Reading,
    Rejection,
    WireLimits,
    device_from_topic,
    parse,
    quality_flags,
)

NOW = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)
DEVICE = "bp-000123"
TOPIC = f"rpm/devices/{DEVICE}/readings"
DEVICE_FLAGS = [
    "irregular_pulse",
    "movement",
    "cuff_loose",
    "position_error",
    "low_battery",
    "control_solution",
]
MEALS = ["fasting", "before_meal", "after_meal", "bedtime", "random"]
DROP = object()  # a change that removes the field


def bp(**changes: Any) -> dict[str, Any]:
    """The DOMAIN.md blood-pressure example (measured 15 min before NOW) with `changes` applied."""
    document = {
        "v": 1,
        "msg_id": "0d2b6a9e-4a55-4f9e-9a51-7b1c0f3f2a10",
        "device_id": DEVICE,
        "type": "blood_pressure",
        "measured_at": "2026-11-28T08:15:02+05:00",
        "systolic": 184,
        "diastolic": 112,
        "pulse": 88,
        "flags": [],
        "battery": 71,
    }
    return _apply(document, changes)


def glucose(**changes: Any) -> dict[str, Any]:
    """The DOMAIN.md glucose example with `changes` applied."""
    document = {
        "v": 1,
        "msg_id": "5c1e9f0a-1b2c-4d3e-8f40-5a6b7c8d9e0f",
        "device_id": DEVICE,
        "type": "glucose",
        "measured_at": "2026-11-28T07:40:00+05:00",
        "value": 2.9,
        "unit": "mmol/L",
        "meal": "fasting",
    }
    return _apply(document, changes)


def _apply(document: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    document.update(changes)
    return {key: value for key, value in document.items() if value is not DROP}


def encode(document: dict[str, Any], **raw: str) -> bytes:
    """JSON bytes of `document`; `raw` fields are written as the given JSON text (e.g. 1e400)."""
    for key in raw:
        document = {**document, key: f"@raw:{key}@"}
    text = json.dumps(document)
    for key, literal in raw.items():
        text = text.replace(json.dumps(f"@raw:{key}@"), literal)
    return text.encode()


def run(payload: dict[str, Any] | bytes, *, topic: str = TOPIC, **kwargs: Any) -> Reading | Rejection:
    body = payload if isinstance(payload, bytes) else encode(payload)
    return parse(topic, body, now=kwargs.pop("now", NOW), **kwargs)


def accepted(payload: dict[str, Any] | bytes, **kwargs: Any) -> Reading:
    result = run(payload, **kwargs)
    assert not isinstance(result, Rejection), f"refused a valid payload: {result}"
    return result


def rejected(
    payload: dict[str, Any] | bytes, reason: str, *words: str, topic: str = TOPIC, **kwargs: Any
) -> Rejection:
    """Assert the payload is refused for `reason`, and that the detail names `words` for a person."""
    result = run(payload, topic=topic, **kwargs)
    assert isinstance(result, Rejection), f"accepted an invalid payload: {result!r}"
    assert result.reason == reason, result
    for word in words:
        assert word in result.detail, f"{word!r} not in detail {result.detail!r}"
    assert result.device_id == device_from_topic(topic)
    assert result.detail.isprintable()
    return result


# ---------------------------------------------------------------------------------- accepted payloads

ACCEPTED_BP = {
    "domain example": {},
    "systolic 60 (device minimum)": {"systolic": 60, "diastolic": 30},
    "systolic 280 (device maximum)": {"systolic": 280},
    "diastolic 30 (device minimum)": {"diastolic": 30},
    "diastolic 200 (device maximum)": {"systolic": 210, "diastolic": 200},
    "systolic just above diastolic": {"systolic": 121, "diastolic": 120},
    "pulse 25": {"pulse": 25},
    "pulse 250": {"pulse": 250},
    "pulse absent": {"pulse": DROP},
    "pulse null": {"pulse": None},
    "flags absent": {"flags": DROP},
    "all six device flags": {"flags": DEVICE_FLAGS},
    "battery 0": {"battery": 0},
    "battery 100": {"battery": 100},
    "battery absent": {"battery": DROP},
    "battery null": {"battery": None},
    "flags null": {"flags": None},
    "only required fields": {"pulse": DROP, "flags": DROP, "battery": DROP},
    "msg_id of 1 character": {"msg_id": "x"},
    "msg_id of 128 characters": {"msg_id": "m" * 128},
    "measured_at in UTC (Z)": {"measured_at": "2026-11-28T03:15:02Z"},
    "measured_at lower-case z and t": {"measured_at": "2026-11-28t03:15:02z"},
    "measured_at +05:00": {"measured_at": "2026-11-28T08:15:02+05:00"},
    "measured_at -03:30": {"measured_at": "2026-11-27T23:45:02-03:30"},
    "measured_at fractional seconds": {"measured_at": "2026-11-28T03:15:02.123456Z"},
    "measured_at nanoseconds": {"measured_at": "2026-11-28T03:15:02.123456789+00:00"},
    "measured_at days old (buffered offline)": {"measured_at": "2026-11-19T08:15:02+05:00"},
    "measured_at years old": {"measured_at": "2019-01-01T00:00:00Z"},
    "measured_at exactly 300 s ahead": {"measured_at": "2026-11-28T03:35:00Z"},
    "measured_at 299.999 s ahead": {"measured_at": "2026-11-28T03:34:59.999Z"},
}


@pytest.mark.parametrize("changes", ACCEPTED_BP.values(), ids=ACCEPTED_BP.keys())
def test_blood_pressure_accepted(changes: dict[str, Any]) -> None:
    document = bp(**changes)
    reading = accepted(document)
    assert isinstance(reading, BloodPressureReading)
    assert (reading.systolic, reading.diastolic) == (document["systolic"], document["diastolic"])
    assert reading.pulse == document.get("pulse")
    assert reading.battery == document.get("battery")
    assert reading.flags == tuple(document.get("flags") or ())
    assert reading.msg_id == document["msg_id"]
    assert reading.measured_at == datetime.fromisoformat(document["measured_at"].upper())


def test_measured_at_keeps_the_device_offset() -> None:
    reading = accepted(bp(measured_at="2026-11-28T08:15:02+05:00"))
    assert reading.measured_at.utcoffset() == timedelta(hours=5)
    assert reading.measured_at == datetime(2026, 11, 28, 3, 15, 2, tzinfo=UTC)


@pytest.mark.parametrize("length", [3, 64])
def test_device_id_length_limits_accepted(length: int) -> None:
    device = "d" * length
    reading = accepted(bp(device_id=device), topic=f"rpm/devices/{device}/readings")
    assert reading.device_id == device


@pytest.mark.parametrize("device", ["ABC", "a_b", "a-b", "0-9", "Tyumen_BP-01"])
def test_device_id_characters_accepted(device: str) -> None:
    assert accepted(bp(device_id=device), topic=f"rpm/devices/{device}/readings").device_id == device


ACCEPTED_GLUCOSE = {
    "domain example": {},
    "integer value": {"value": 5},
    "mg/dL": {"value": 100, "unit": "mg/dL"},
    "censored LO without value": {"value": DROP, "censored": "LO"},
    "censored HI without value": {"value": DROP, "censored": "HI"},
    "censored LO, value null": {"value": None, "censored": "LO"},
    "censored null with a value": {"censored": None},
    "meal absent": {"meal": DROP},
    **{f"meal {meal}": {"meal": meal} for meal in MEALS},
    "control solution flag": {"flags": ["control_solution"]},
    "battery 0": {"battery": 0},
    "tiny positive value": {"value": 0.1},
}


@pytest.mark.parametrize("changes", ACCEPTED_GLUCOSE.values(), ids=ACCEPTED_GLUCOSE.keys())
def test_glucose_accepted(changes: dict[str, Any]) -> None:
    document = glucose(**changes)
    reading = accepted(document)
    assert isinstance(reading, GlucoseReading)
    assert reading.value == document.get("value")
    assert reading.unit == document["unit"]
    assert reading.censored == document.get("censored")
    assert reading.meal == document.get("meal")


@pytest.mark.parametrize("censored", ["LO", "HI"])
def test_censored_reading_is_kept_without_a_value(censored: str) -> None:
    reading = accepted(glucose(value=DROP, censored=censored))
    assert isinstance(reading, GlucoseReading)
    assert reading.censored == censored
    assert reading.value is None
    assert reading.value_mmol is None


# (value, unit, exact mmol/L, bounds the clinical thresholds depend on)
CONVERSIONS = [
    (54, "mg/dL", 54 / 18.016, (2.997, 2.998)),
    (70, "mg/dL", 70 / 18.016, (3.885, 3.886)),
    (250, "mg/dL", 250 / 18.016, (13.876, 13.877)),
    (600, "mg/dL", 600 / 18.016, (33.303, 33.304)),
    (18.016, "mg/dL", 1.0, (1.0, 1.0)),
    (2.9, "mmol/L", 2.9, (2.9, 2.9)),
]


@pytest.mark.parametrize(("value", "unit", "mmol", "bounds"), CONVERSIONS)
def test_glucose_conversion_to_mmol_is_exact(
    value: float, unit: str, mmol: float, bounds: tuple[float, float]
) -> None:
    reading = accepted(glucose(value=value, unit=unit))
    assert isinstance(reading, GlucoseReading)
    assert reading.value == value
    assert reading.unit == unit  # kept as sent
    assert reading.value_mmol == mmol
    assert bounds[0] <= reading.value_mmol <= bounds[1]


def test_mg_dl_factor() -> None:
    assert MG_DL_PER_MMOL_L == 18.016


def test_value_mmol_is_not_rounded_across_the_level_2_threshold() -> None:
    reading = accepted(glucose(value=53.9, unit="mg/dL"))
    assert isinstance(reading, GlucoseReading)
    assert reading.value_mmol is not None
    assert round(reading.value_mmol, 1) == 3.0  # why rounding would be wrong
    assert reading.value_mmol < 3.0


def test_reading_is_frozen() -> None:
    reading = accepted(bp())
    assert isinstance(reading, BloodPressureReading)
    with pytest.raises(ValidationError):
        reading.systolic = 120  # type: ignore[misc]


# ---------------------------------------------------------------------------------- rejected payloads

# name: (changes, words the detail must contain)
REJECTED_BP_SCHEMA: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    # v
    "v 0": ({"v": 0}, ("v:", "version 0", "1")),
    "v 2": ({"v": 2}, ("v:", "version 2", "1")),
    "v string": ({"v": "1"}, ("v:", '"1"')),
    "v true": ({"v": True}, ("v:", "true")),
    "v 1.0": ({"v": 1.0}, ("v:", "1.0")),
    "v null": ({"v": None}, ("v:",)),
    "v missing": ({"v": DROP}, ("v:", "missing")),
    # msg_id
    "msg_id missing": ({"msg_id": DROP}, ("msg_id", "missing")),
    "msg_id empty": ({"msg_id": ""}, ("msg_id", "1-128")),
    "msg_id null": ({"msg_id": None}, ("msg_id", "string")),
    "msg_id number": ({"msg_id": 42}, ("msg_id", "string", "42")),
    "msg_id with a space": ({"msg_id": "a b"}, ("msg_id", "without spaces")),
    "msg_id 129 characters": ({"msg_id": "m" * 129}, ("msg_id", "1-128")),
    "msg_id control character": ({"msg_id": "a\nb"}, ("msg_id",)),
    # device_id in the payload (format is also enforced by the topic, see below)
    "device_id missing": ({"device_id": DROP}, ("device_id", "missing")),
    "device_id number": ({"device_id": 123}, ("device_id", "string")),
    "device_id null": ({"device_id": None}, ("device_id",)),
    # type
    "type unknown": (
        {"type": "blood-pressure"},
        ("type", '"blood-pressure"', '"blood_pressure" or "glucose"'),
    ),
    "type upper case": ({"type": "BLOOD_PRESSURE"}, ("type", "unknown reading type")),
    "type number": ({"type": 1}, ("type", "unknown reading type")),
    "type list": ({"type": ["glucose"]}, ("type", "list")),
    "type null": ({"type": None}, ("type", "null")),
    "type missing": ({"type": DROP}, ("type", "missing", '"blood_pressure" or "glucose"')),
    "type glucose with BP fields": ({"type": "glucose"}, ("systolic", "unknown field", "unit", "missing")),
    # measured_at
    "measured_at without zone": ({"measured_at": "2026-11-28T08:15:02"}, ("measured_at", "time zone")),
    "measured_at unix number": ({"measured_at": 1764299702}, ("measured_at", "RFC 3339", "1764299702")),
    "measured_at unix ms": ({"measured_at": 1764299702000}, ("measured_at", "RFC 3339")),
    "measured_at garbage": ({"measured_at": "yesterday"}, ("measured_at", "RFC 3339", "yesterday")),
    "measured_at empty": ({"measured_at": ""}, ("measured_at", "RFC 3339")),
    "measured_at date only": ({"measured_at": "2026-11-28"}, ("measured_at", "RFC 3339")),
    "measured_at no seconds": ({"measured_at": "2026-11-28T08:15+05:00"}, ("measured_at",)),
    "measured_at offset without colon": ({"measured_at": "2026-11-28T08:15:02+0500"}, ("measured_at",)),
    "measured_at offset 24:00": ({"measured_at": "2026-11-28T08:15:02+24:00"}, ("measured_at",)),
    "measured_at Russian format": ({"measured_at": "28.11.2026 08:15:02"}, ("measured_at",)),
    "measured_at month 13": ({"measured_at": "2026-13-01T00:00:00Z"}, ("measured_at",)),
    "measured_at 30 February": ({"measured_at": "2026-02-30T00:00:00Z"}, ("measured_at",)),
    "measured_at hour 25": ({"measured_at": "2026-11-28T25:00:00Z"}, ("measured_at",)),
    "measured_at trailing newline": ({"measured_at": "2026-11-28T03:15:02Z\n"}, ("measured_at",)),
    "measured_at non-ASCII digits": ({"measured_at": "٢٠٢٦-11-28T03:15:02Z"}, ("measured_at",)),
    "measured_at null": ({"measured_at": None}, ("measured_at",)),
    "measured_at missing": ({"measured_at": DROP}, ("measured_at", "missing")),
    "measured_at before 1970 (clock not set)": (
        {"measured_at": "1969-12-31T23:59:59Z"},
        ("measured_at", "clock is not set"),
    ),
    "measured_at year 1": ({"measured_at": "0001-01-01T00:00:00+05:00"}, ("measured_at", "clock")),
    # systolic / diastolic / pulse ranges
    "systolic 59": ({"systolic": 59, "diastolic": 30}, ("systolic", "60", "got 59")),
    "systolic 281": ({"systolic": 281}, ("systolic", "280", "got 281")),
    "diastolic 29": ({"diastolic": 29}, ("diastolic", "30", "got 29")),
    "diastolic 201": ({"systolic": 210, "diastolic": 201}, ("diastolic", "200", "got 201")),
    "systolic equals diastolic": ({"systolic": 120, "diastolic": 120}, ("systolic (120)", "diastolic (120)")),
    "systolic below diastolic": ({"systolic": 100, "diastolic": 120}, ("greater than diastolic",)),
    "pulse 24": ({"pulse": 24}, ("pulse", "25", "got 24")),
    "pulse 251": ({"pulse": 251}, ("pulse", "250", "got 251")),
    "systolic missing": ({"systolic": DROP}, ("systolic", "missing")),
    "systolic null": ({"systolic": None}, ("systolic", "integer", "null")),
    "diastolic null": ({"diastolic": None}, ("diastolic", "integer", "null")),
    "diastolic missing": ({"diastolic": DROP}, ("diastolic", "missing")),
    # battery
    "battery -1": ({"battery": -1}, ("battery", "0", "got -1")),
    "battery 101": ({"battery": 101}, ("battery", "100", "got 101")),
    # flags
    "flag unknown": ({"flags": ["dizzy"]}, ("flags[0]", "dizzy", "movement")),
    "flag unknown after a known one": ({"flags": ["movement", "Movement"]}, ("flags[1]", "Movement")),
    "flags a string": ({"flags": "movement"}, ("flags", "list")),
    "flags an object": ({"flags": {"movement": True}}, ("flags", "list")),
    "flag a number": ({"flags": [1]}, ("flags[0]",)),
    # unknown fields
    "unknown field": ({"temperature": 36.6}, ("temperature", "unknown field")),
    "patient from the device": ({"patient_id": "p-1"}, ("patient_id", "unknown field")),
    "glucose field in BP": ({"value": 5.5}, ("value", "unknown field")),
    "odd field name": ({"a b\u0000": 1}, ("unknown field",)),
    "field name with lone surrogate": ({"\ud800": 1}, ("field name", "Unicode")),
    "msg_id with lone surrogate": ({"msg_id": "a\udc00"}, ("msg_id", "Unicode")),
}

# Integers are strict: booleans, floats (even 120.0), strings and null are refused.
STRICT_INTEGERS = {
    f"{field} {label}": ({field: value}, (field, "integer"))
    for field in ("systolic", "diastolic", "pulse", "battery")
    for label, value in [
        ("true", True),
        ("false", False),
        ("float", 120.0),
        ("fraction", 120.5),
        ("string", "120"),
    ]
} | {f"{field} list": ({field: [120]}, (field, "integer", "list")) for field in ("systolic", "diastolic")}


@pytest.mark.parametrize(
    ("changes", "words"),
    [*REJECTED_BP_SCHEMA.values(), *STRICT_INTEGERS.values()],
    ids=[*REJECTED_BP_SCHEMA.keys(), *STRICT_INTEGERS.keys()],
)
def test_blood_pressure_schema_rejected(changes: dict[str, Any], words: tuple[str, ...]) -> None:
    rejected(bp(**changes), "schema", *words)


REJECTED_GLUCOSE_SCHEMA: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "value missing, not censored": ({"value": DROP}, ("value is required", "censored")),
    "value null, not censored": ({"value": None}, ("value is required",)),
    "censored LO with a value": ({"censored": "LO", "value": 1.0}, ("value must be absent", '"LO"')),
    "censored HI with a value": ({"censored": "HI", "value": 35.0}, ("value must be absent", '"HI"')),
    "censored unknown": ({"value": DROP, "censored": "LOW"}, ("censored", "LOW")),
    "censored lower case": ({"value": DROP, "censored": "lo"}, ("censored",)),
    "value zero": ({"value": 0}, ("value", "greater than 0")),
    "value zero float": ({"value": 0.0}, ("value", "greater than 0")),
    "value negative zero": ({"value": -0.0}, ("value", "greater than 0")),
    "value negative": ({"value": -1.5}, ("value", "greater than 0", "-1.5")),
    "value string": ({"value": "5.6"}, ("value", "number", '"5.6"')),
    "value true": ({"value": True}, ("value", "number")),
    "value list": ({"value": [5.6]}, ("value", "number")),
    "value beyond any meter": ({"value": 2000}, ("value", "range")),
    "value beyond any meter in mg/dL": ({"value": 20000, "unit": "mg/dL"}, ("value", "range")),
    "unit missing": ({"unit": DROP}, ("unit", "missing")),
    "unit lower case": ({"unit": "mmol/l"}, ("unit", "mmol/L", "mg/dL")),
    "unit mg/dl": ({"unit": "mg/dl"}, ("unit",)),
    "unit mmol": ({"unit": "mmol"}, ("unit",)),
    "unit null": ({"unit": None}, ("unit",)),
    "meal unknown": ({"meal": "lunch"}, ("meal", "lunch", "fasting")),
    "meal number": ({"meal": 1}, ("meal",)),
    "BP field in glucose": ({"systolic": 120}, ("systolic", "unknown field", '"glucose"')),
    "battery 101": ({"battery": 101}, ("battery",)),
    "flag unknown": ({"flags": ["ketones"]}, ("flags[0]", "ketones")),
}


@pytest.mark.parametrize(
    ("changes", "words"), REJECTED_GLUCOSE_SCHEMA.values(), ids=REJECTED_GLUCOSE_SCHEMA.keys()
)
def test_glucose_schema_rejected(changes: dict[str, Any], words: tuple[str, ...]) -> None:
    rejected(glucose(**changes), "schema", *words)


# JSON numbers that are not finite, written as raw text: (literal, reason, words)
NON_FINITE_VALUES = {
    "1e400 (overflows to infinity)": ("1e400", "schema", ("value", "finite")),
    "-1e400": ("-1e400", "schema", ("value",)),
    "10**400 (huge integer)": (str(10**400), "schema", ("value", "too large")),
    "-10**400": (str(-(10**400)), "schema", ("value",)),
    "1e-400 (underflows to zero)": ("1e-400", "schema", ("value", "greater than 0")),
    "NaN": ("NaN", "not_json", ("NaN",)),
    "Infinity": ("Infinity", "not_json", ("Infinity",)),
    "-Infinity": ("-Infinity", "not_json", ("Infinity",)),
}


@pytest.mark.parametrize(
    ("literal", "reason", "words"), NON_FINITE_VALUES.values(), ids=NON_FINITE_VALUES.keys()
)
def test_glucose_value_not_finite(literal: str, reason: str, words: tuple[str, ...]) -> None:
    rejected(encode(glucose(), value=literal), reason, *words)


@pytest.mark.parametrize("field", ["systolic", "diastolic", "pulse", "battery"])
@pytest.mark.parametrize("literal", ["1e400", str(10**400), str(-(10**400)), "NaN"])
def test_huge_and_non_finite_integers(field: str, literal: str) -> None:
    result = run(encode(bp(), **{field: literal}))
    assert isinstance(result, Rejection)
    assert result.reason in ("schema", "not_json")
    assert field in result.detail or "NaN" in result.detail
    assert len(result.detail) <= 1000


# ------------------------------------------------------------------------------------ future skew


@pytest.mark.parametrize(
    ("ahead", "accepted_"),
    [
        (timedelta(0), True),
        (timedelta(seconds=299), True),
        (timedelta(seconds=300), True),
        (timedelta(seconds=300, microseconds=1), False),
        (timedelta(seconds=301), False),
        (timedelta(days=365), False),
        (-timedelta(days=7), True),
    ],
    ids=str,
)
def test_future_skew(ahead: timedelta, accepted_: bool) -> None:
    document = bp(measured_at=(NOW + ahead).astimezone(timezone(timedelta(hours=5))).isoformat())
    if accepted_:
        accepted(document)
    else:
        rejected(document, "future", "measured_at", "300 s ahead", "clock")


def test_future_skew_is_configurable() -> None:
    strict = WireLimits(max_future_skew=timedelta(0))
    accepted(bp(measured_at=NOW.isoformat()), limits=strict)
    rejected(bp(measured_at=(NOW + timedelta(seconds=1)).isoformat()), "future", "0 s", limits=strict)
    lenient = WireLimits(max_future_skew=timedelta(hours=1))
    accepted(bp(measured_at=(NOW + timedelta(minutes=59)).isoformat()), limits=lenient)


def test_future_compares_instants_not_wall_clock_text() -> None:
    # 08:34:00+05:00 is 03:34Z: 4 minutes ahead, although its wall-clock text is hours "later".
    accepted(bp(measured_at="2026-11-28T08:34:00+05:00"))
    # 23:00-05:00 the day before is 04:00Z: 30 minutes ahead.
    rejected(bp(measured_at="2026-11-27T23:00:00-05:00"), "future")


# --------------------------------------------------------------------------- topic and device id

BAD_TOPICS = {
    "empty": "",
    "device id 2 characters": "rpm/devices/ab/readings",
    "device id 65 characters": f"rpm/devices/{'d' * 65}/readings",
    "device id empty": "rpm/devices//readings",
    "device id with space": "rpm/devices/bp 1/readings",
    "device id with dot": "rpm/devices/bp.001/readings",
    "device id with slash": "rpm/devices/bp/001/readings",
    "device id non-ASCII": "rpm/devices/тонометр-1/readings",
    "device id non-ASCII digits": "rpm/devices/bp-١٢٣/readings",
    "wildcard +": "rpm/devices/+/readings",
    "wildcard #": "rpm/devices/#",
    "status topic": f"rpm/devices/{DEVICE}/status",
    "extra level": f"rpm/devices/{DEVICE}/readings/extra",
    "leading slash": f"/rpm/devices/{DEVICE}/readings",
    "upper case prefix": f"RPM/devices/{DEVICE}/readings",
    "trailing newline": f"rpm/devices/{DEVICE}/readings\n",
    "trailing slash": f"rpm/devices/{DEVICE}/readings/",
    "NUL": f"rpm/devices/{DEVICE}\x00/readings",
}


@pytest.mark.parametrize("topic", BAD_TOPICS.values(), ids=BAD_TOPICS.keys())
def test_bad_topic(topic: str) -> None:
    assert device_from_topic(topic) is None
    rejection = rejected(bp(), "bad_topic", "topic", "rpm/devices/{device_id}/readings", topic=topic)
    assert rejection.device_id is None


def test_bad_topic_detail_is_bounded() -> None:
    rejection = rejected(bp(), "bad_topic", "topic", topic="x" * 100_000)
    assert len(rejection.detail) < 400


def test_device_from_topic() -> None:
    assert device_from_topic(TOPIC) == DEVICE
    assert device_from_topic(f"rpm/devices/{'d' * 64}/readings") == "d" * 64


@pytest.mark.parametrize(
    "payload_device",
    ["bp-000124", "BP-000123", "bp-000123 ", "ab", "d" * 65, "bp 1", ""],
)
def test_device_mismatch_is_spoofing(payload_device: str) -> None:
    rejection = rejected(bp(device_id=payload_device), "device_mismatch", "device_id", DEVICE)
    assert json.dumps(payload_device) in rejection.detail


def test_device_mismatch_wins_over_other_errors() -> None:
    # A spoofing attempt is reported as such even when the rest of the payload is broken too.
    rejected(bp(device_id="someone-else", systolic=999), "device_mismatch", "someone-else")


# ----------------------------------------------------------------------------- envelope: bytes/JSON


def padded(document: dict[str, Any], size: int) -> bytes:
    """The payload padded with insignificant whitespace to exactly `size` bytes."""
    body = encode(document)
    assert len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + b"}"


@pytest.mark.parametrize("make", [bp, glucose])
def test_payload_of_exactly_4_kib_is_accepted(make: Any) -> None:
    body = padded(make(), MAX_PAYLOAD_BYTES)
    assert len(body) == 4096
    accepted(body)


@pytest.mark.parametrize("size", [4097, 10_000, 1_000_000])
def test_payload_over_4_kib_is_too_large(size: int) -> None:
    rejected(padded(bp(), size), "too_large", f"{size} bytes", "4096")


def test_size_is_checked_before_decoding() -> None:
    rejected(b"\xff" * 4097, "too_large", "4097")


NOT_UTF8 = {
    "lone 0xff": b"\xff",
    "latin-1 in a string": encode(bp()).replace(b"0d2b", b"0d\xe9b"),
    "overlong slash": b'{"v":1,"msg_id":"\xc0\xaf"}',
    "encoded surrogate": b'{"v":1,"msg_id":"\xed\xa0\x80"}',
    "truncated sequence": encode(bp())[:-1] + b"\xd0",
    "UTF-16": json.dumps(bp()).encode("utf-16"),
}


@pytest.mark.parametrize("payload", NOT_UTF8.values(), ids=NOT_UTF8.keys())
def test_not_utf8(payload: bytes) -> None:
    rejected(payload, "not_utf8", "UTF-8", "byte")


NOT_JSON = {
    "empty": (b"", ()),
    "text": (b"sys=120 dia=80", ()),
    "truncated": (encode(bp())[:-1], ()),
    "trailing comma": (encode(bp())[:-1] + b",}", ()),
    "single quotes": (b"{'v': 1}", ()),
    "two documents": (encode(bp()) + encode(bp()), ()),
    "byte order mark": (b"\xef\xbb\xbf" + encode(bp()), ()),
    "array": (b"[1, 2]", ("JSON object", "a list")),
    "array of the payload": (b"[" + encode(bp()) + b"]", ("JSON object",)),
    "string": (b'"hello"', ("JSON object",)),
    "number": (b"120", ("JSON object",)),
    "null": (b"null", ("JSON object",)),
    "true": (b"true", ("JSON object",)),
    "NaN value": (encode(bp(), systolic="NaN"), ("NaN",)),
    "Infinity value": (encode(glucose(), value="Infinity"), ("Infinity",)),
    "duplicate key v": (b'{"v":1,' + encode(bp())[1:], ("duplicate key", '"v"')),
    "duplicate key value": (encode(glucose())[:-1] + b',"value":9.9}', ("duplicate key", '"value"')),
    "duplicate key nested": (encode(bp(), flags='[{"a":1,"a":2}]'), ("duplicate key", '"a"')),
    "deep nesting": (b"[" * 2000 + b"]" * 2000, ()),
    "deep nesting in a field": (encode(bp(), extra="[" * 1900 + "]" * 1900), ()),
}


@pytest.mark.parametrize(("payload", "words"), NOT_JSON.values(), ids=NOT_JSON.keys())
def test_not_json(payload: bytes, words: tuple[str, ...]) -> None:
    rejected(payload, "not_json", "JSON", *words)


@pytest.mark.parametrize("depth", [10, 100, 500, 900])
def test_nesting_below_the_parser_limit_is_a_schema_error(depth: int) -> None:
    result = run(encode(bp(), extra="[" * depth + "]" * depth))
    assert isinstance(result, Rejection)
    # Near Python's recursion limit the JSON parser may give up first; either way nothing crashes.
    assert result.reason in ("schema", "not_json")
    if result.reason == "schema":
        assert "extra" in result.detail
        assert "unknown field" in result.detail


def test_every_error_is_reported_in_one_detail() -> None:
    rejection = rejected(bp(systolic=300, pulse=True, colour="red"), "schema", "systolic", "pulse", "colour")
    assert rejection.detail.count(";") == 2


def test_detail_is_bounded() -> None:
    document = bp(**{f"field_{n:03d}": n for n in range(200)})
    rejection = rejected(padded(document, MAX_PAYLOAD_BYTES), "schema", "field_000")
    assert len(rejection.detail) <= 1000


# -------------------------------------------------------------------------------------- quality


@pytest.mark.parametrize(
    ("systolic", "diastolic", "suspicious"),
    [
        (90, 80, False),  # pulse pressure 10
        (89, 80, True),  # 9
        (230, 80, False),  # 150
        (231, 80, True),  # 151
        (61, 60, True),  # 1
        (280, 30, True),  # 250
        (120, 80, False),
    ],
)
def test_pulse_pressure_flag(systolic: int, diastolic: int, suspicious: bool) -> None:
    reading = accepted(bp(systolic=systolic, diastolic=diastolic))
    assert (PULSE_PRESSURE_FLAG in quality_flags(reading)) is suspicious
    assert quality_flags(reading) == ((PULSE_PRESSURE_FLAG,) if suspicious else ())


@pytest.mark.parametrize(
    ("pulse_pressure", "suspicious"), [(19, True), (20, False), (100, False), (101, True)]
)
def test_pulse_pressure_limits_are_configurable(pulse_pressure: int, suspicious: bool) -> None:
    limits = WireLimits(pulse_pressure_min=20, pulse_pressure_max=100)
    reading = accepted(bp(systolic=80 + pulse_pressure, diastolic=80), limits=limits)
    assert (PULSE_PRESSURE_FLAG in quality_flags(reading, limits)) is suspicious
    assert (PULSE_PRESSURE_FLAG in quality_flags(reading)) is not (10 <= pulse_pressure <= 150)


@pytest.mark.parametrize("flag", DEVICE_FLAGS)
def test_device_flags_pass_through(flag: str) -> None:
    assert quality_flags(accepted(bp(flags=[flag]))) == (flag,)
    assert quality_flags(accepted(glucose(flags=[flag]))) == (flag,)


def test_device_and_gateway_flags_together_in_order_without_repeats() -> None:
    reading = accepted(bp(systolic=89, diastolic=80, flags=["movement", "cuff_loose", "movement"]))
    assert quality_flags(reading) == ("movement", "cuff_loose", PULSE_PRESSURE_FLAG)


def test_glucose_never_gets_the_pulse_pressure_flag() -> None:
    assert quality_flags(accepted(glucose())) == ()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pulse_pressure_min": 151, "pulse_pressure_max": 150},
        {"max_future_skew": timedelta(seconds=-1)},
    ],
)
def test_inconsistent_limits_fail_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"pulse_pressure|max_future_skew"):
        WireLimits(**kwargs)
