"""Line protocol of stored readings: exact lines, escaping, the idempotent timestamp, decoding back."""

from __future__ import annotations

import calendar
import zlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import StorageRejected
from gateway.timeseries.base import StoredReading
from gateway.timeseries.lineprotocol import (
    UndecodableRow,
    UnencodableReading,
    decode,
    encode,
    encode_many,
    in_flight,
    measured_at_from_ns,
    query_bound_ns,
    timestamp_ns,
)
from gateway.wire import PULSE_PRESSURE_FLAG, BloodPressureReading, GlucoseReading, Reading

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BP_MSG = "0d2b6a9e-4a55-4f9e-9a51-7b1c0f3f2a10"
GL_MSG = "5c1e9f0a-1b2c-4d3e-8f40-5a6b7c8d9e0f"
# 2026-11-28T08:15:02+05:00 and 2026-11-28T07:40:00+05:00 in ns since the epoch, worked out by calendar.
BP_NS = calendar.timegm((2026, 11, 28, 3, 15, 2)) * 10**9
GL_NS = calendar.timegm((2026, 11, 28, 2, 40, 0)) * 10**9


def bp(**changes: Any) -> BloodPressureReading:
    """The DOMAIN.md blood-pressure example with `changes`."""
    fields: dict[str, Any] = {
        "v": 1,
        "msg_id": BP_MSG,
        "device_id": "bp-000123",
        "type": "blood_pressure",
        "measured_at": "2026-11-28T08:15:02+05:00",
        "systolic": 184,
        "diastolic": 112,
        "pulse": 88,
        "battery": 71,
    }
    return BloodPressureReading.model_validate({**fields, **changes})


def glucose(**changes: Any) -> GlucoseReading:
    """The DOMAIN.md glucose example with `changes` (a None value removes the field)."""
    fields: dict[str, Any] = {
        "v": 1,
        "msg_id": GL_MSG,
        "device_id": "gl-000042",
        "type": "glucose",
        "measured_at": "2026-11-28T07:40:00+05:00",
        "value": 2.9,
        "unit": "mmol/L",
        "meal": "fasting",
    }
    merged = {key: value for key, value in {**fields, **changes}.items() if value is not None}
    return GlucoseReading.model_validate(merged)


def crc(msg_id: str) -> int:
    return zlib.crc32(msg_id.encode()) % 1_000_000


EXACT_LINES = [
    pytest.param(
        StoredReading("p-1", bp()),
        "blood_pressure,device_id=bp-000123,patient_id=p-1 "
        f'msg_id="{BP_MSG}",systolic=184i,diastolic=112i,pulse=88i,battery=71i,flags="",quality="" '
        f"{BP_NS + 62121}",
        id="bp-full",
    ),
    pytest.param(
        StoredReading(
            "p-1",
            bp(pulse=None, battery=None, flags=["irregular_pulse", "movement"]),
            ("irregular_pulse", "movement", PULSE_PRESSURE_FLAG),
        ),
        "blood_pressure,device_id=bp-000123,patient_id=p-1 "
        f'msg_id="{BP_MSG}",systolic=184i,diastolic=112i,flags="irregular_pulse,movement",'
        f'quality="irregular_pulse,movement,pulse_pressure" {BP_NS + 62121}',
        id="bp-no-pulse-flags-quality",
    ),
    pytest.param(
        StoredReading("p-2", glucose()),
        "glucose,device_id=gl-000042,patient_id=p-2 "
        f'msg_id="{GL_MSG}",value_mmol=2.9,value=2.9,unit="mmol/L",meal="fasting",flags="",quality="" '
        f"{GL_NS + 529214}",
        id="glucose-mmol",
    ),
    pytest.param(
        StoredReading("p-2", glucose(value=97, unit="mg/dL", meal=None, battery=40)),
        "glucose,device_id=gl-000042,patient_id=p-2 "
        f'msg_id="{GL_MSG}",value_mmol=5.3841030195381885,value=97.0,unit="mg/dL",battery=40i,'
        f'flags="",quality="" {GL_NS + 529214}',
        id="glucose-mg-dl",
    ),
    pytest.param(
        StoredReading("p-2", glucose(msg_id="gl-lo-1", value=None, censored="LO")),
        'glucose,device_id=gl-000042,patient_id=p-2 msg_id="gl-lo-1",unit="mmol/L",censored="LO",'
        f'meal="fasting",flags="",quality="" {GL_NS + 95218}',
        id="glucose-censored-lo",
    ),
    pytest.param(
        StoredReading(
            "p-2",
            glucose(
                msg_id="gl-hi-1", value=None, unit="mg/dL", censored="HI", meal=None, flags=["low_battery"]
            ),
            ("low_battery",),
        ),
        'glucose,device_id=gl-000042,patient_id=p-2 msg_id="gl-hi-1",unit="mg/dL",censored="HI",'
        f'flags="low_battery",quality="low_battery" {GL_NS + 341015}',
        id="glucose-censored-hi",
    ),
    pytest.param(
        StoredReading("a b,c=d", bp(msg_id='a"b\\c', pulse=None, battery=None)),
        "blood_pressure,device_id=bp-000123,patient_id=a\\ b\\,c\\=d "
        'msg_id="a\\"b\\\\c",systolic=184i,diastolic=112i,flags="",quality="" '
        f"{BP_NS + crc(chr(97) + chr(34) + 'b' + chr(92) + 'c')}",
        id="escaping",
    ),
]


@pytest.mark.parametrize(("stored", "line"), EXACT_LINES)
def test_encode_exact_line(stored: StoredReading, line: str) -> None:
    assert encode(stored) == line


def test_encode_many_joins_lines_with_newlines() -> None:
    first, second = StoredReading("p-1", bp()), StoredReading("p-2", glucose())
    assert encode_many([first, second]) == f"{encode(first)}\n{encode(second)}"
    assert encode_many([]) == ""


@pytest.mark.parametrize("patient_id", ["", "a\\b", "trailing\\", "two\nlines", "cr\rhere"])
def test_unrepresentable_tag_values_are_refused(patient_id: str) -> None:
    with pytest.raises(UnencodableReading, match="patient_id") as caught:
        encode(StoredReading(patient_id, bp()))
    assert isinstance(caught.value, StorageRejected)


def test_timestamp_is_floored_ms_plus_crc_of_msg_id() -> None:
    reading = bp(measured_at="2026-11-28T08:15:02.123987+05:00")
    assert timestamp_ns(reading) == BP_NS + 123_000_000 + crc(BP_MSG)


def test_same_msg_id_gives_the_same_line() -> None:
    # A redelivery is a new object parsed from the same payload.
    assert encode(StoredReading("p-1", bp())) == encode(StoredReading("p-1", bp()))


def test_different_msg_ids_in_one_second_get_different_timestamps() -> None:
    readings = [bp(msg_id=f"{i:08x}-4a55-4f9e-9a51-7b1c0f3f2a10") for i in range(100)]
    stamps = {timestamp_ns(reading) for reading in readings}
    assert len(stamps) == len(readings)
    assert all(BP_NS <= stamp < BP_NS + 1_000_000 for stamp in stamps)


def test_readings_in_different_milliseconds_keep_their_order() -> None:
    early = bp(msg_id="zzzz", measured_at="2026-11-28T08:15:02.001+05:00")
    late = bp(msg_id="aaaa", measured_at="2026-11-28T08:15:02.002+05:00")
    assert timestamp_ns(early) < timestamp_ns(late)


@pytest.mark.parametrize(
    ("moment", "bound"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), calendar.timegm((2026, 1, 1, 0, 0, 0)) * 10**9),
        (
            datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            calendar.timegm((2026, 1, 1, 0, 0, 0)) * 10**9 + 10**6,
        ),
        (
            datetime(2026, 1, 1, 0, 0, 0, 999, tzinfo=UTC),
            calendar.timegm((2026, 1, 1, 0, 0, 0)) * 10**9 + 10**6,
        ),
        (datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC), 0),
    ],
)
def test_query_bound_rounds_up_to_the_millisecond(moment: datetime, bound: int) -> None:
    assert query_bound_ns(moment) == bound


# -- a small line-protocol reader (the subset we write), to check what a server would see ---------------


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ", =":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, i = [], [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if text[i] == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def _field_value(text: str) -> object:
    if text.startswith('"'):
        assert text.endswith('"')
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if text.endswith("i"):
        return int(text[:-1])
    return float(text)


def read_line(line: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """(measurement, tags, fields, timestamp) of one line we wrote (our strings never hold spaces)."""
    key, fields_text, stamp = _split_unescaped(line, " ")
    measurement, *tag_texts = _split_unescaped(key, ",")
    tags = {}
    for tag in tag_texts:
        name, value = _split_unescaped(tag, "=")
        tags[_unescape(name)] = _unescape(value)
    fields = {}
    for field in _split_fields(fields_text):
        name, _, value = field.partition("=")
        fields[name] = _field_value(value)
    return _unescape(measurement), tags, fields, int(stamp)


def _split_fields(text: str) -> list[str]:
    fields, current, quoted, i = [], [], False, 0
    while i < len(text):
        char = text[i]
        if quoted and char == "\\":
            current.append(text[i : i + 2])
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    fields.append("".join(current))
    return fields


# -- properties ------------------------------------------------------------------------------------------

offsets = st.integers(min_value=-12 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets)
msg_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=128)
device_ids = st.from_regex(r"\A[A-Za-z0-9_-]{3,64}\Z")
patient_ids = st.text(
    st.characters(exclude_characters="\\\n\r", exclude_categories=["Cs"]), min_size=1, max_size=40
)
device_flags = st.lists(
    st.sampled_from(
        ["irregular_pulse", "movement", "cuff_loose", "position_error", "low_battery", "control_solution"]
    ),
    unique=True,
    max_size=3,
)
batteries = st.none() | st.integers(min_value=0, max_value=100)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat()


@st.composite
def blood_pressures(draw: st.DrawFn) -> Reading:
    diastolic = draw(st.integers(min_value=30, max_value=200))
    return BloodPressureReading.model_validate(
        {
            "v": 1,
            "msg_id": draw(msg_ids),
            "device_id": draw(device_ids),
            "type": "blood_pressure",
            "measured_at": _rfc3339(draw(moments)),
            "systolic": draw(st.integers(min_value=max(60, diastolic + 1), max_value=280)),
            "diastolic": diastolic,
            "pulse": draw(st.none() | st.integers(min_value=25, max_value=250)),
            "flags": draw(device_flags),
            "battery": draw(batteries),
        }
    )


@st.composite
def glucoses(draw: st.DrawFn) -> Reading:
    unit = draw(st.sampled_from(["mmol/L", "mg/dL"]))
    censored = draw(st.none() | st.sampled_from(["LO", "HI"]))
    document: dict[str, Any] = {
        "v": 1,
        "msg_id": draw(msg_ids),
        "device_id": draw(device_ids),
        "type": "glucose",
        "measured_at": _rfc3339(draw(moments)),
        "unit": unit,
        "flags": draw(device_flags),
        "battery": draw(batteries),
        "meal": draw(
            st.none() | st.sampled_from(["fasting", "before_meal", "after_meal", "bedtime", "random"])
        ),
    }
    if censored is None:
        top = 100.0 if unit == "mmol/L" else 1800.0
        document["value"] = draw(
            st.floats(min_value=0.01, max_value=top, allow_nan=False, allow_infinity=False)
        )
    else:
        document["censored"] = censored
    return GlucoseReading.model_validate({k: v for k, v in document.items() if v is not None})


stored_readings = st.builds(
    StoredReading,
    patient_id=patient_ids,
    reading=blood_pressures() | glucoses(),
    quality=st.lists(st.sampled_from(["movement", PULSE_PRESSURE_FLAG, "cuff_loose"]), max_size=2).map(tuple),
)


def _floored(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@PROPERTY
@given(stored_readings)
def test_line_reads_back_to_the_same_reading_floored_to_the_ms(stored: StoredReading) -> None:
    line = encode(stored)
    assert "\n" not in line
    measurement, tags, fields, stamp = read_line(line)
    assert measurement == stored.reading.type
    assert tags == {"device_id": stored.reading.device_id, "patient_id": stored.patient_id}
    assert fields["msg_id"] == stored.reading.msg_id
    row = {**tags, **fields}
    decoded = decode(measurement, stamp, row)
    reading = stored.reading
    expected = StoredReading(
        stored.patient_id,
        reading.model_copy(update={"measured_at": _floored(reading.measured_at)}),
        stored.quality,
    )
    assert decoded == expected
    assert decoded.reading.measured_at.utcoffset() == timedelta(0)


@PROPERTY
@given(stored_readings)
def test_timestamp_floors_to_measured_at_and_is_deterministic(stored: StoredReading) -> None:
    reading = stored.reading
    stamp = timestamp_ns(reading)
    assert measured_at_from_ns(stamp) == _floored(reading.measured_at)
    assert stamp % 1_000_000 == crc(reading.msg_id)
    copy = type(reading).model_validate(reading.model_dump(mode="json"))
    assert encode(StoredReading(stored.patient_id, copy, stored.quality)) == encode(stored)


@PROPERTY
@given(blood_pressures(), msg_ids)
def test_another_msg_id_moves_only_the_sub_millisecond_part(reading: Reading, other: str) -> None:
    moved = timestamp_ns(reading.model_copy(update={"msg_id": other}))
    assert moved // 1_000_000 == timestamp_ns(reading) // 1_000_000
    if crc(other) != crc(reading.msg_id):
        assert moved != timestamp_ns(reading)


@pytest.mark.parametrize(
    ("measurement", "row", "problem"),
    [
        ("heart_rate", {"msg_id": "m"}, "unknown measurement"),
        (
            "blood_pressure",
            {"msg_id": "m", "device_id": "bp-1", "patient_id": "p", "systolic": 120},
            "diastolic",
        ),
        (
            "blood_pressure",
            {"msg_id": "m", "device_id": "bp-1", "systolic": 120, "diastolic": 80},
            "no patient_id",
        ),
        ("glucose", {"msg_id": "m", "device_id": "gl-1", "patient_id": "p", "unit": "mmol/L"}, "value"),
    ],
)
def test_decode_refuses_rows_that_are_not_readings(
    measurement: str, row: dict[str, Any], problem: str
) -> None:
    with pytest.raises(UndecodableRow, match=problem):
        decode(measurement, BP_NS, row)


def test_decode_accepts_a_whole_float_that_came_back_as_an_integer() -> None:
    row = {"msg_id": "m", "device_id": "gl-000042", "patient_id": "p", "unit": "mg/dL", "value": 97}
    decoded = decode("glucose", GL_NS + 5, row)
    assert isinstance(decoded.reading, GlucoseReading)
    assert decoded.reading.value == 97.0
    assert decoded.reading.measured_at == datetime(2026, 11, 28, 2, 40, tzinfo=UTC)
    assert decoded.reading.v == 1
    assert decoded.quality == ()


@pytest.mark.parametrize(
    ("measurement", "row", "expected"),
    [
        ("blood_pressure", {"msg_id": "m", "systolic": 120, "diastolic": 80}, False),
        ("blood_pressure", {"msg_id": "m", "systolic": 120, "diastolic": None}, True),
        ("blood_pressure", {"systolic": 120, "diastolic": 80}, True),
        ("glucose", {"msg_id": "m", "unit": "mmol/L", "value": 5.5}, False),
        ("glucose", {"msg_id": "m", "unit": "mmol/L", "censored": "LO"}, False),
        ("glucose", {"msg_id": "m", "unit": "mmol/L"}, True),
        ("glucose", {"msg_id": "m", "value": 5.5}, True),
        ("weight", {}, False),  # not ours to judge: decode names the unknown measurement
    ],
)
def test_in_flight_names_rows_missing_a_field_every_point_is_written_with(
    measurement: str, row: dict[str, object], expected: bool
) -> None:
    assert in_flight(measurement, row) is expected
