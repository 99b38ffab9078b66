"""InfluxDB line protocol for stored readings: `encode`, `encode_many`, and `decode` of query rows.

Both back ends (InfluxDB 1.x and 2.x) write exactly these lines.

Schema
------
Measurements ``blood_pressure`` and ``glucose``. Tags: ``device_id`` and ``patient_id`` only, so the
series cardinality is (devices x patients they were enrolled to); the per-message ``msg_id`` is a
*field*, never a tag. Fields:

- always: ``msg_id`` (string), ``flags`` (device flags, comma-joined, ``""`` when none), ``quality``
  (device flags plus the gateway's suspicion flags, comma-joined); ``battery`` (integer) when sent;
- blood_pressure: ``systolic``, ``diastolic`` and, when sent, ``pulse`` (integers);
- glucose: ``value_mmol`` and ``value`` (floats, ``value`` as sent; both absent when censored),
  ``unit`` (string), ``censored`` (``"LO"``/``"HI"``) and ``meal`` when present.

Integers carry the ``i`` suffix; floats are written with ``repr`` so that they read back bit for bit.

Idempotency: the timestamp
--------------------------
InfluxDB keeps one point per (measurement, tag set, timestamp): a second write with the same key
overwrites the first. The timestamp (ns) is therefore::

    measured_at floored to the millisecond  +  zlib.crc32(msg_id) % 1_000_000  nanoseconds

- A redelivered message (same msg_id, measured_at, device and patient) gives the same line, so it
  overwrites itself: MQTT at-least-once delivery never makes a second reading.
- Two *different* readings of one device within the same second (or millisecond) differ in msg_id, so
  their sub-millisecond offsets differ (a collision needs equal crc32 values modulo one million: about
  one chance in a million per pair measured in the same millisecond) and both are kept.
- Flooring the stored time to the millisecond gives measured_at back (in UTC) exactly for devices that
  report at most millisecond precision; finer digits are dropped.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from gateway.errors import StorageError, StorageRejected
from gateway.timeseries.base import ReadingType, StoredReading
from gateway.wire import Reading

MEASUREMENTS: Final[tuple[ReadingType, ...]] = ("blood_pressure", "glucose")
TAG_KEYS: Final = ("device_id", "patient_id")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_MS: Final = 1_000_000
_MICROSECOND: Final = timedelta(microseconds=1)
_MEASUREMENT_ESCAPES: Final = str.maketrans({",": "\\,", " ": "\\ "})
_TAG_ESCAPES: Final = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_FIELD_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"'})
_READING: Final = TypeAdapter[Reading](Reading)


class UnencodableReading(StorageRejected):
    """A reading whose tag values cannot be written as line protocol (empty, a line break, a backslash)."""


class UndecodableRow(StorageError):
    """A point read back from the store does not make a valid reading (written by something else?)."""


def escape_measurement(name: str) -> str:
    """Escape a measurement name (commas and spaces)."""
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_tag(text: str) -> str:
    """Escape a tag key or value (commas, equals signs, spaces)."""
    return text.translate(_TAG_ESCAPES)


def escape_string_field(text: str) -> str:
    """Escape the inside of a double-quoted string field value (backslashes, double quotes)."""
    # Fast path: almost no value needs escaping, and `in` is far cheaper than translate.
    if "\\" in text or '"' in text:
        return text.translate(_STRING_FIELD_ESCAPES)
    return text


def _checked_tag_value(name: str, value: str) -> str:
    # The line protocol has no escape for a backslash before a comma/space/equals sign or at the end of a
    # tag value, nor for line breaks; refuse rather than write a point under a different patient.
    if not value or "\\" in value or "\n" in value or "\r" in value:
        raise UnencodableReading(f"{name} {value!r} cannot be a line-protocol tag value")
    return escape_tag(value)


@lru_cache(maxsize=65_536)
def series_key(measurement: str, device_id: str, patient_id: str) -> str:
    """Measurement and tag set, tags sorted by key as InfluxDB prefers: the part before the fields."""
    return (
        f"{escape_measurement(measurement)},device_id={_checked_tag_value('device_id', device_id)}"
        f",patient_id={_checked_tag_value('patient_id', patient_id)}"
    )


def epoch_ns(moment: datetime) -> int:
    """Nanoseconds since the Unix epoch of an aware datetime, in exact integer arithmetic."""
    return (moment - _EPOCH) // _MICROSECOND * 1_000


def query_bound_ns(moment: datetime) -> int:
    """A time bound for queries: `moment` rounded *up* to the millisecond, in ns.

    A reading is stored at floor_ms(measured_at) + less than 1 ms, so `time >= bound(start) AND
    time < bound(end)` selects exactly the readings with start <= floor_ms(measured_at) < end.
    """
    ns = epoch_ns(moment)
    return -(-ns // _NS_PER_MS) * _NS_PER_MS


def timestamp_ns(reading: Reading) -> int:
    """The point's timestamp: measured_at floored to the millisecond plus crc32(msg_id) % 1e6 ns."""
    floored_ms = epoch_ns(reading.measured_at) // _NS_PER_MS
    return floored_ms * _NS_PER_MS + zlib.crc32(reading.msg_id.encode("utf-8")) % _NS_PER_MS


def measured_at_from_ns(time_ns: int) -> datetime:
    """The stored timestamp floored to the millisecond, as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=time_ns // _NS_PER_MS)


def encode(stored: StoredReading) -> str:
    """One line of line protocol (no trailing newline) for one stored reading."""
    r = stored.reading
    key = series_key(r.type, r.device_id, stored.patient_id)
    flags = escape_string_field(",".join(r.flags))
    quality = escape_string_field(",".join(stored.quality))
    tail = f'flags="{flags}",quality="{quality}" {timestamp_ns(r)}'
    battery = "" if r.battery is None else f"battery={r.battery}i,"
    msg_id = escape_string_field(r.msg_id)
    if r.type == "blood_pressure":
        pulse = "" if r.pulse is None else f"pulse={r.pulse}i,"
        return (
            f'{key} msg_id="{msg_id}",systolic={r.systolic}i,diastolic={r.diastolic}i,{pulse}{battery}{tail}'
        )
    value = "" if r.value is None else f"value_mmol={r.value_mmol!r},value={r.value!r},"
    censored = "" if r.censored is None else f'censored="{r.censored}",'
    meal = "" if r.meal is None else f'meal="{r.meal}",'
    return f'{key} msg_id="{msg_id}",{value}unit="{r.unit}",{censored}{meal}{battery}{tail}'


def encode_many(readings: Iterable[StoredReading]) -> str:
    """Lines for many readings, joined by newlines (the body of one write request)."""
    return "\n".join(map(encode, readings))


def _split_flags(text: object) -> tuple[str, ...]:
    if not text:
        return ()
    return tuple(str(text).split(","))


# The fields every point of a measurement is written with (tags come with the series, always whole).
_WRITTEN_ALWAYS: Final[dict[str, tuple[str, ...]]] = {
    "blood_pressure": ("msg_id", "systolic", "diastolic"),
    "glucose": ("msg_id", "unit"),
}


def in_flight(measurement: str, row: Mapping[str, Any]) -> bool:
    """Whether a query row lacks a field its point is always written with: a point being written.

    InfluxDB 1.x stores each field apart, and a query that runs alongside a write can see some fields
    of a point and not yet the others (seen while the gateway's history was read during a write). Such
    a row is not a reading yet: callers skip it, and it is whole on the next read.
    """
    required = _WRITTEN_ALWAYS.get(measurement)
    if required is None:
        return False
    if measurement == "glucose" and row.get("value") is None and row.get("censored") is None:
        return True
    return any(row.get(name) is None for name in required)


def decode(measurement: str, time_ns: int, row: Mapping[str, Any]) -> StoredReading:
    """A stored reading from one query row (tags and fields by name; absent fields missing or None).

    measured_at comes back in UTC, floored to the millisecond; `v` is 1 and `type` is the measurement.
    Raises UndecodableRow when the row does not make a valid reading.
    """
    document: dict[str, Any] = {
        "v": 1,
        "type": measurement,
        "msg_id": row.get("msg_id"),
        "device_id": row.get("device_id"),
        "measured_at": measured_at_from_ns(time_ns).isoformat(),
        "flags": _split_flags(row.get("flags")),
    }
    optional: tuple[str, ...]
    if measurement == "blood_pressure":
        document["systolic"] = row.get("systolic")
        document["diastolic"] = row.get("diastolic")
        optional = ("pulse", "battery")
    elif measurement == "glucose":
        document["unit"] = row.get("unit")
        value = row.get("value")
        # JSON has one number type: a stored 5.0 may come back as the integer 5.
        if value is not None:
            document["value"] = float(value)
        optional = ("censored", "meal", "battery")
    else:
        raise UndecodableRow(f"unknown measurement {measurement!r}")
    for name in optional:
        if row.get(name) is not None:
            document[name] = row[name]
    try:
        reading = _READING.validate_python(document)
    except ValidationError as exc:
        raise UndecodableRow(
            f"stored {measurement} point msg_id={row.get('msg_id')!r} at {time_ns} ns is not a valid "
            f"reading: {exc.errors(include_url=False)}"
        ) from exc
    patient_id = row.get("patient_id")
    if not isinstance(patient_id, str) or not patient_id:
        raise UndecodableRow(f"stored {measurement} point msg_id={row.get('msg_id')!r} has no patient_id")
    return StoredReading(patient_id=patient_id, reading=reading, quality=_split_flags(row.get("quality")))


__all__ = [
    "MEASUREMENTS",
    "UndecodableRow",
    "UnencodableReading",
    "decode",
    "encode",
    "encode_many",
    "epoch_ns",
    "escape_measurement",
    "escape_string_field",
    "escape_tag",
    "in_flight",
    "measured_at_from_ns",
    "query_bound_ns",
    "series_key",
    "timestamp_ns",
]
