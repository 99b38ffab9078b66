"""Fuzzing `wire.parse`: whatever arrives, exactly one Reading or one Rejection, and never an exception.

A Reading that comes back is re-checked against the contract here, independently of the models.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import wire
from gateway.wire import (
    BloodPressureReading,
    GlucoseReading,
    Rejection,
    WireLimits,
    device_from_topic,
    parse,
)

NOW = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)
LIMITS = WireLimits()
# Small enough to keep the whole file within a few seconds; CI may raise it with a hypothesis profile.
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(FUZZ, max_examples=120)

DEVICE_FLAGS = {
    "irregular_pulse",
    "movement",
    "cuff_loose",
    "position_error",
    "low_battery",
    "control_solution",
}
MEALS = {"fasting", "before_meal", "after_meal", "bedtime", "random"}
COMMON_FIELDS = {"v", "msg_id", "device_id", "type", "measured_at", "flags", "battery"}
FIELDS = {
    "blood_pressure": COMMON_FIELDS | {"systolic", "diastolic", "pulse"},
    "glucose": COMMON_FIELDS | {"value", "unit", "censored", "meal"},
}
ALL_FIELDS = FIELDS["blood_pressure"] | FIELDS["glucose"]
REASONS = {"bad_topic", "too_large", "not_utf8", "not_json", "schema", "device_mismatch", "future"}
DEVICE_RE = re.compile(r"[A-Za-z0-9_-]{3,64}")
RFC3339_RE = re.compile(
    r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", re.ASCII | re.IGNORECASE
)

# ------------------------------------------------------------------------------------ valid payloads

device_ids = st.text(alphabet="ABCXYZabcxyz0123456789_-", min_size=3, max_size=64)
offsets = st.sampled_from(["Z", "+05:00", "-03:30", "+00:00", "+14:00", "-12:00"])


@st.composite
def measured_ats(draw: st.DrawFn) -> str:
    """RFC 3339 text from 30 days before NOW to the edge of the allowed skew."""
    instant = NOW + timedelta(seconds=draw(st.integers(-30 * 86400, 300)))
    offset = draw(offsets)
    zone = UTC if offset == "Z" else datetime.fromisoformat(f"2000-01-01T00:00:00{offset}").tzinfo
    text = instant.astimezone(zone).isoformat()
    return text.replace("+00:00", "Z") if offset == "Z" else text


@st.composite
def common(draw: st.DrawFn, device: str) -> dict[str, Any]:
    document: dict[str, Any] = {
        "v": 1,
        "msg_id": draw(st.uuids()).hex if draw(st.booleans()) else str(draw(st.uuids())),
        "device_id": device,
        "measured_at": draw(measured_ats()),
    }
    if draw(st.booleans()):
        document["flags"] = draw(st.lists(st.sampled_from(sorted(DEVICE_FLAGS)), max_size=6))
    if draw(st.booleans()):
        document["battery"] = draw(st.integers(0, 100))
    return document


@st.composite
def blood_pressure(draw: st.DrawFn, device: str) -> dict[str, Any]:
    document = draw(common(device))
    diastolic = draw(st.integers(30, 200))
    document |= {
        "type": "blood_pressure",
        "systolic": draw(st.integers(max(60, diastolic + 1), 280)),
        "diastolic": diastolic,
    }
    if draw(st.booleans()):
        document["pulse"] = draw(st.integers(25, 250))
    return document


@st.composite
def glucose(draw: st.DrawFn, device: str) -> dict[str, Any]:
    document = draw(common(device))
    unit = draw(st.sampled_from(["mmol/L", "mg/dL"]))
    document |= {"type": "glucose", "unit": unit}
    censored = draw(st.sampled_from([None, "LO", "HI"]))
    if censored:
        document["censored"] = censored
    else:
        top = 33.3 if unit == "mmol/L" else 600
        document["value"] = draw(
            st.floats(0.1, top) | st.integers(1, int(top)) | st.just(53.9 if unit == "mg/dL" else 2.9)
        )
    if draw(st.booleans()):
        document["meal"] = draw(st.sampled_from(sorted(MEALS)))
    return document


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    device = draw(device_ids)
    document = draw(st.one_of(blood_pressure(device), glucose(device)))
    return f"rpm/devices/{device}/readings", document


# --------------------------------------------------------------------------------------- mutations

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**400), 10**400),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "1", "120", "LO", "HI", "mg/dL", "mmol/L", "glucose", "blood_pressure", "movement"]),
)
# Values a sloppy firmware sends for a number: each equal to, or near, something valid.
TRICKY = [True, False, 1.0, "1", 0, -1, 120.0, 10**400, -(10**400), 1e308, -0.0, 5e-324, "", [], {}, [1]]
json_values = st.sampled_from(TRICKY) | st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
RAW_NUMBERS = [
    "1e400",
    "-1e400",
    str(10**400),
    str(-(10**400)),
    "NaN",
    "Infinity",
    "-Infinity",
    "1e-400",
    "-0",
]


@st.composite
def mutated_payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    topic, document = draw(valid_messages())
    document = dict(document)
    placeholders: dict[str, str] = {}
    for _ in range(draw(st.integers(1, 3))):
        # Mostly the fields the payload has (so a glucose value is hit), sometimes any field.
        field = draw(st.sampled_from(sorted(document)) | st.sampled_from(sorted(ALL_FIELDS | {"x"})))
        action = draw(st.sampled_from(["tricky", "tricky", "set", "delete", "raw", "raw", "nest", "unknown"]))
        if action == "tricky":
            document[field] = draw(st.sampled_from(TRICKY))
        elif action == "set":
            document[field] = draw(json_values)
        elif action == "delete":
            document.pop(field, None)
        elif action == "raw":
            placeholders[field] = draw(st.sampled_from(RAW_NUMBERS))
            document[field] = f"@{field}@"
        elif action == "nest":
            depth = draw(st.sampled_from([1, 10, 100, 900, 1000, 1900]))
            placeholders[field] = "[" * depth + "]" * depth
            document[field] = f"@{field}@"
        else:
            document[draw(st.text(min_size=1, max_size=10))] = draw(json_values)
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    for field, literal in placeholders.items():
        text = text.replace(json.dumps(f"@{field}@"), literal)
    body = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        body = draw(_byte_mutation(body))
    if draw(st.integers(0, 9)) == 0:  # now and then the topic is wrong or someone else's
        topic = draw(topics)
    return topic, body


@st.composite
def _byte_mutation(draw: st.DrawFn, body: bytes) -> bytes:
    kind = draw(st.sampled_from(["duplicate", "bad_byte", "pad", "truncate", "wrap", "none"]))
    at = draw(st.integers(0, len(body)))
    if kind == "duplicate" and body.startswith(b"{"):
        key = draw(st.sampled_from([b'"v":1,', b'"type":"glucose",', b'"systolic":120,', b'"value":1,']))
        return b"{" + key + body[1:]
    if kind == "bad_byte":
        return (
            body[:at]
            + draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82"]))
            + body[at:]
        )
    if kind == "pad" and body.endswith(b"}"):
        size = draw(st.integers(4090, 4100))
        return body[:-1] + b" " * max(0, size - len(body)) + b"}"
    if kind == "truncate":
        return body[:at]
    if kind == "wrap":
        return b"[" + body + b"]"
    return body


NEAR_MISS_TOPICS = [
    "rpm/devices/bp-000123/readings\n",
    "rpm/devices/bp-000123/readings/",
    "/rpm/devices/bp-000123/readings",
    "rpm/devices/bp-000123/readings ",
    "rpm/devices/ab/readings",
    f"rpm/devices/{'d' * 65}/readings",
    "rpm/devices/bp-٠٠٠١٢٣/readings",
    "rpm/devices/+/readings",
    "rpm/devices/bp-000123/status",
]
topics = st.one_of(
    st.just("rpm/devices/bp-000123/readings"),
    st.sampled_from(NEAR_MISS_TOPICS),
    device_ids.map(lambda device: f"rpm/devices/{device}/readings"),
    st.text(max_size=80),
    st.text(max_size=70).map(lambda device: f"rpm/devices/{device}/readings"),
)


# ------------------------------------------------------------------------------- the contract check


def strict_json(body: bytes) -> dict[str, Any]:
    """Parse the way the contract demands, with no help from gateway.wire."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in items]
        assert len(keys) == len(set(keys)), f"duplicate keys accepted: {keys}"
        return dict(items)

    def constant(token: str) -> Any:
        raise AssertionError(f"{token} accepted")

    document = json.loads(body.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    assert isinstance(document, dict)
    return document


def is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def assert_outcome(topic: str, body: bytes, now: datetime = NOW, limits: WireLimits = LIMITS) -> None:
    """parse returns exactly one Reading or one Rejection; a Reading keeps every rule of the contract."""
    result = parse(topic, body, now=now, limits=limits)
    assert isinstance(result, BloodPressureReading | GlucoseReading | Rejection), type(result)
    if isinstance(result, Rejection):
        assert result.reason in REASONS
        assert isinstance(result.detail, str) and 0 < len(result.detail) <= 1000
        assert result.detail.isprintable()
        result.detail.encode("utf-8")  # storable: no lone surrogates
        assert result.device_id == device_from_topic(topic)
        return
    assert_reading_keeps_contract(topic, body, result, now, limits)


def assert_reading_keeps_contract(
    topic: str, body: bytes, reading: BloodPressureReading | GlucoseReading, now: datetime, limits: WireLimits
) -> None:
    assert len(body) <= 4096
    document = strict_json(body)
    match = re.fullmatch(r"rpm/devices/([A-Za-z0-9_-]{3,64})/readings", topic, re.ASCII)
    assert match is not None, topic
    assert document["v"] == 1 and type(document["v"]) is int
    assert isinstance(document["msg_id"], str) and document["msg_id"] and reading.msg_id == document["msg_id"]
    assert document["device_id"] == match.group(1) == reading.device_id
    assert DEVICE_RE.fullmatch(reading.device_id)
    assert document["type"] == reading.type
    assert set(document) <= FIELDS[reading.type], set(document) - FIELDS[reading.type]

    text = document["measured_at"]
    assert isinstance(text, str) and RFC3339_RE.fullmatch(text), text
    assert reading.measured_at.tzinfo is not None and reading.measured_at.utcoffset() is not None
    assert reading.measured_at - now <= limits.max_future_skew
    assert reading.measured_at.year >= 1970

    flags = document.get("flags") or []
    assert isinstance(flags, list) and set(flags) <= DEVICE_FLAGS
    assert list(reading.flags) == flags
    battery = document.get("battery")
    assert battery is None or is_int(battery, 0, 100)
    assert reading.battery == battery

    if isinstance(reading, BloodPressureReading):
        assert is_int(document["systolic"], 60, 280) and reading.systolic == document["systolic"]
        assert is_int(document["diastolic"], 30, 200) and reading.diastolic == document["diastolic"]
        assert reading.systolic > reading.diastolic
        pulse = document.get("pulse")
        assert pulse is None or is_int(pulse, 25, 250)
        assert reading.pulse == pulse
    else:
        assert document["unit"] in ("mmol/L", "mg/dL") and reading.unit == document["unit"]
        value, censored = document.get("value"), document.get("censored")
        assert censored in (None, "LO", "HI") and reading.censored == censored
        assert (value is None) != (censored is None), "exactly one of value and censored"
        if value is None:
            assert reading.value is None and reading.value_mmol is None
        else:
            assert type(value) in (int, float) and math.isfinite(value) and value > 0
            assert reading.value == value
            # 1 mmol/L = 18.016 mg/dL, not rounded (DOMAIN.md).
            assert reading.value_mmol == (value / 18.016 if reading.unit == "mg/dL" else value)
        meal = document.get("meal")
        assert meal is None or meal in MEALS
        assert reading.meal == meal


# ------------------------------------------------------------------- exhaustive one-field changes

DROP = object()
SWEEP_BASES = [
    {
        "v": 1, "msg_id": "m-1", "device_id": "bp-000123", "type": "blood_pressure",
        "measured_at": "2026-11-28T08:15:02+05:00", "systolic": 184, "diastolic": 112, "pulse": 88,
        "flags": ["movement"], "battery": 71,
    },
    {
        "v": 1, "msg_id": "m-2", "device_id": "bp-000123", "type": "glucose",
        "measured_at": "2026-11-28T03:15:02Z", "value": 53.9, "unit": "mg/dL", "meal": "fasting",
    },
    {
        "v": 1, "msg_id": "m-3", "device_id": "bp-000123", "type": "glucose",
        "measured_at": "2026-11-28T03:15:02Z", "censored": "LO", "unit": "mmol/L",
    },
]  # fmt: skip
SWEEP_VALUES: list[Any] = [*TRICKY, DROP, None, "NaN", "LO", "glucose", "blood_pressure", "bp-000123"]


def test_every_single_field_change() -> None:
    """Each field of three valid payloads replaced by each tricky value (raw JSON numbers too)."""
    checked = 0
    for base in SWEEP_BASES:
        for field in sorted(ALL_FIELDS | {"x"}):
            for value in SWEEP_VALUES:
                document = {k: v for k, v in base.items() if k != field}
                if value is not DROP:
                    document[field] = value
                assert_outcome("rpm/devices/bp-000123/readings", json.dumps(document).encode())
                checked += 1
            for literal in RAW_NUMBERS:
                document = {**base, field: "@raw@"}
                body = json.dumps(document).replace('"@raw@"', literal).encode()
                assert_outcome("rpm/devices/bp-000123/readings", body)
                checked += 1
    assert checked > 1000


def test_near_miss_topics() -> None:
    body = json.dumps(SWEEP_BASES[0]).encode()
    for topic in NEAR_MISS_TOPICS:
        assert_outcome(topic, body)
        assert_outcome(topic, json.dumps({**SWEEP_BASES[0], "device_id": device_from_topic(topic)}).encode())


# ------------------------------------------------------------------------------------------ the fuzz


@FUZZ
@given(topic=topics, body=st.binary(max_size=5000))
def test_arbitrary_bytes(topic: str, body: bytes) -> None:
    assert_outcome(topic, body)


@FUZZ
@given(topic=topics, text=st.text(max_size=300))
def test_arbitrary_text(topic: str, text: str) -> None:
    assert_outcome(topic, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(message=mutated_payloads())
def test_mutated_valid_payloads(message: tuple[str, bytes]) -> None:
    assert_outcome(*message)


@FUZZ_SLOW
@given(message=valid_messages(), pretty=st.booleans())
def test_valid_payloads_are_accepted(message: tuple[str, dict[str, Any]], pretty: bool) -> None:
    topic, document = message
    body = json.dumps(document, indent=2 if pretty else None).encode()
    result = parse(topic, body, now=NOW)
    assert not isinstance(result, Rejection), f"valid payload refused: {result}\n{body!r}"
    assert_reading_keeps_contract(topic, body, result, NOW, LIMITS)


@FUZZ_SLOW
@given(message=valid_messages(), skew=st.integers(0, 3600), ahead=st.integers(-86400, 7200))
def test_future_rule_under_any_limit(message: tuple[str, dict[str, Any]], skew: int, ahead: int) -> None:
    topic, document = message
    limits = WireLimits(max_future_skew=timedelta(seconds=skew))
    now = datetime.fromisoformat(document["measured_at"].replace("Z", "+00:00")) - timedelta(seconds=ahead)
    result = parse(topic, json.dumps(document).encode(), now=now, limits=limits)
    if ahead > skew:
        assert isinstance(result, Rejection) and result.reason == "future", result
    else:
        assert not isinstance(result, Rejection), result
        assert_reading_keeps_contract(topic, json.dumps(document).encode(), result, now, limits)


# ------------------------------------------------------------------------- the parser's fast paths
# `parse` decodes JSON with jiter and measured_at with the standard library, falling back to the
# standard JSON decoder and to pydantic's date parser when those refuse (gateway.wire: `_fast_json`,
# `_stdlib_datetime`). Whatever arrives, the outcome must be the one the slow paths alone give.


def parse_slowly(
    topic: str, body: bytes, now: datetime = NOW
) -> BloodPressureReading | GlucoseReading | Rejection:
    """`parse` with both fast paths turned off."""
    with (
        patch.object(wire, "_fast_json", return_value=None),
        patch.object(wire, "_stdlib_datetime", side_effect=lambda text: text),
    ):
        return parse(topic, body, now=now, limits=LIMITS)


def assert_same_as_slow(topic: str, body: bytes, now: datetime = NOW) -> None:
    fast, slow = parse(topic, body, now=now, limits=LIMITS), parse_slowly(topic, body, now)
    assert type(fast) is type(slow), (fast, slow, body)
    assert fast == slow, body
    if not isinstance(fast, Rejection):
        assert not isinstance(slow, Rejection)
        # Equal datetimes may differ in their offset: the text keeps the device's own.
        assert fast.measured_at.isoformat() == slow.measured_at.isoformat(), body
        assert fast.model_dump() == slow.model_dump(), body


@st.composite
def rfc3339_like(draw: st.DrawFn) -> str:
    """Texts the contract's pattern admits, dates and times out of range included (day 31 of
    February, hour 24, second 60, year 0), some too far ahead or before 1970."""
    year = draw(st.sampled_from([0, 1, 1969, 1970, 2024, 2026, 2027, 9999]) | st.integers(0, 9999))
    month, day = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    hour, minute, second = draw(st.integers(0, 25)), draw(st.integers(0, 60)), draw(st.integers(0, 61))
    fraction = draw(st.sampled_from(["", "."]))
    if fraction:
        fraction += draw(st.text(alphabet="0123456789", min_size=1, max_size=9))
    separator = draw(st.sampled_from(["T", "t", " "]))
    offset = draw(
        st.sampled_from(["Z", "z"])
        | st.builds(
            lambda sign, hours, minutes: f"{sign}{hours:02d}:{minutes:02d}",
            st.sampled_from(["+", "-"]),
            st.integers(0, 23),
            st.integers(0, 59),
        )
    )
    text = (
        f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}{fraction}{offset}"
    )
    assert wire.RFC3339_RE.fullmatch(text)
    return text


@FUZZ
@given(message=mutated_payloads())
def test_fast_paths_change_nothing_for_mutated_payloads(message: tuple[str, bytes]) -> None:
    assert_same_as_slow(*message)


@FUZZ
@given(topic=topics, text=st.text(max_size=300))
def test_fast_paths_change_nothing_for_arbitrary_text(topic: str, text: str) -> None:
    assert_same_as_slow(topic, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(message=valid_messages(), pretty=st.booleans(), ascii_only=st.booleans())
def test_fast_paths_change_nothing_for_valid_payloads(
    message: tuple[str, dict[str, Any]], pretty: bool, ascii_only: bool
) -> None:
    topic, document = message
    assert_same_as_slow(
        topic, json.dumps(document, indent=2 if pretty else None, ensure_ascii=ascii_only).encode()
    )


@FUZZ
@given(measured_at=rfc3339_like(), now=st.sampled_from([NOW, datetime(9999, 12, 31, 23, 59, tzinfo=UTC)]))
def test_measured_at_parses_as_pydantic_parses_it(measured_at: str, now: datetime) -> None:
    """Every text the pattern admits: the same instant, offset and fraction, or the same error."""
    document = {**SWEEP_BASES[0], "measured_at": measured_at}
    assert_same_as_slow("rpm/devices/bp-000123/readings", json.dumps(document).encode(), now)


def test_fast_paths_are_taken() -> None:
    """The fast paths are what a valid payload goes through (were they bypassed, nothing would fail
    but the gateway's speed): a standard-library time zone, and jiter's decoding."""
    for offset, zone in [("Z", UTC), ("+05:00", timezone(timedelta(hours=5)))]:
        document = {**SWEEP_BASES[0], "measured_at": f"2026-11-28T03:15:02{offset}"}
        body = json.dumps(document).encode()
        reading = parse("rpm/devices/bp-000123/readings", body, now=NOW)
        assert isinstance(reading, BloodPressureReading)
        assert type(reading.measured_at.tzinfo) is timezone and reading.measured_at.tzinfo == zone
        assert wire._fast_json(body) == document


def _with_raw(field: str, literal: str) -> bytes:
    """A valid payload with `field` set to the raw JSON `literal`."""
    return json.dumps({**SWEEP_BASES[0], field: "@raw@"}).replace('"@raw@"', literal).encode()


@pytest.mark.parametrize(
    ("body", "reason", "words"),
    [
        (b'{"v":1,"v":1}', "not_json", "duplicate key"),
        (b'{"v":1,"flags":[{"a":1,"a":2}]}', "not_json", "duplicate key"),
        (b'{"v":NaN}', "not_json", "NaN"),
        (b'{"v":-Infinity}', "not_json", "-Infinity"),
        (_with_raw("msg_id", '"\\ud800"'), "schema", "msg_id: must be valid Unicode"),
        (_with_raw("x", "[" * 300 + "]" * 300), "schema", "x: unknown field"),
    ],
    ids=["duplicate", "nested duplicate", "NaN", "-Infinity", "lone surrogate", "nested 300 deep"],
)
def test_what_jiter_refuses_the_standard_decoder_words(body: bytes, reason: str, words: str) -> None:
    """jiter refuses these; the standard decoder then decides, as before: its verdict and its words."""
    assert wire._fast_json(body) is None
    result = parse("rpm/devices/bp-000123/readings", body, now=NOW)
    assert isinstance(result, Rejection) and result.reason == reason and words in result.detail, result
