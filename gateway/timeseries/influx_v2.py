"""`ReadingStore` over the InfluxDB 2.x API through influxdb-client.

Writes are synchronous and send the very lines of `lineprotocol` (ns precision), so both back ends store
identical points. Queries are Flux with every value passed as a parameter (`params=`: the library sends
them as `option p_name = <literal>` statements in the request's `extern` AST, never as query text), so no
patient id can change a query's meaning.

Errors map as in `influx_v1`: no answer, timeouts, 5xx, 401/403 (token) and 404 (bucket or org missing)
-> StorageUnavailable; any other 4xx -> StorageRejected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, cast

import urllib3.exceptions
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from gateway.errors import StorageRejected, StorageUnavailable
from gateway.timeseries.base import ReadingType, StoredReading, StoreSummary
from gateway.timeseries.lineprotocol import (
    MEASUREMENTS,
    decode,
    encode_many,
    epoch_ns,
    in_flight,
    measured_at_from_ns,
    query_bound_ns,
)
from rpmgw.settings import InfluxSettings

MAX_LINES_PER_WRITE: Final = 5_000
_SETUP_STATUSES: Final = frozenset({401, 403, 404})
# The library declares WritePrecision.NS as a plain str but annotates `write()` with the class.
_NS: Final = cast(WritePrecision, WritePrecision.NS)
# Flux `range` needs bounds; readings are never before 1970 and never after this.
_ALL_TIME_START: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ALL_TIME_STOP: Final = datetime(2262, 1, 1, tzinfo=UTC)

_READINGS_FLUX: Final = """\
from(bucket: p_bucket)
  |> range(start: p_start, stop: p_stop)
  |> filter(fn: (r) => r.patient_id == p_patient_id)
  |> filter(fn: (r) => contains(value: r._measurement, set: p_measurements))
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> sort(columns: ["_time"])
"""
_RECENT_FLUX: Final = """\
from(bucket: p_bucket)
  |> range(start: p_start, stop: p_stop)
  |> filter(fn: (r) => contains(value: r.patient_id, set: p_patients))
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> sort(columns: ["_time"])
"""
_COUNT_FLUX: Final = """\
from(bucket: p_bucket)
  |> range(start: p_start, stop: p_stop)
  |> filter(fn: (r) => r._field == "msg_id")
  |> group(columns: ["_measurement"])
  |> count()
"""
_NEWEST_FLUX: Final = """\
from(bucket: p_bucket)
  |> range(start: p_start, stop: p_stop)
  |> filter(fn: (r) => r._field == "msg_id")
  |> last()
  |> group()
  |> sort(columns: ["_time"], desc: true)
  |> limit(n: 1)
"""
_MSG_IDS_FLUX: Final = """\
from(bucket: p_bucket)
  |> range(start: p_start, stop: p_stop)
  |> filter(fn: (r) => r._measurement == p_measurement and r._field == "msg_id")
"""


def _api_message(exc: ApiException) -> str:
    return f"{exc.status} {exc.message}" if exc.status is not None else str(exc.message)


class InfluxV2Store:
    """Readings in an InfluxDB 2.x bucket (`settings.bucket` of `settings.org`, token auth)."""

    def __init__(
        self,
        settings: InfluxSettings,
        client: InfluxDBClient | None = None,
        *,
        max_lines_per_write: int = MAX_LINES_PER_WRITE,
    ) -> None:
        if max_lines_per_write < 1:
            raise ValueError("max_lines_per_write must be at least 1")
        self._url = settings.url
        self._bucket = settings.bucket
        self._org = settings.org
        self._max_lines = max_lines_per_write
        self._owns_client = client is None
        self._client = (
            client
            if client is not None
            else InfluxDBClient(
                url=settings.url,
                token=settings.token or "",
                org=settings.org,
                timeout=int(settings.timeout * 1000),
            )
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        self._query_api = self._client.query_api()

    @contextmanager
    def _mapped_errors(self, action: str) -> Iterator[None]:
        """The library's exceptions become StorageUnavailable / StorageRejected naming the server."""
        where = f"InfluxDB at {self._url} ({action})"
        try:
            yield
        except ApiException as exc:
            message = f"{where} answered {_api_message(exc)}"
            if exc.status is None or exc.status >= 500 or exc.status in _SETUP_STATUSES:
                if exc.status in (401, 403):
                    message += " (check RPMGW_INFLUX__TOKEN)"
                raise StorageUnavailable(message) from exc
            raise StorageRejected(message) from exc
        except InfluxDBError as exc:
            # Raised without an HTTP answer, e.g. when the org name cannot be resolved to an id.
            raise StorageUnavailable(f"{where}: {exc.message} (RPMGW_INFLUX__ORG)") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageUnavailable(f"{where} did not answer: {exc}") from exc

    def _query(self, flux: str, params: Mapping[str, object]) -> list[Mapping[str, Any]]:
        with self._mapped_errors("query"):
            tables = self._query_api.query(flux, org=self._org, params={"p_bucket": self._bucket, **params})
            return [record.values for table in tables for record in table.records]

    # -- ReadingStore ----------------------------------------------------------------------------------

    def ensure_ready(self) -> None:
        """Check the server answers and create the bucket in the org when it is missing."""
        with self._mapped_errors("buckets"):
            buckets_api = self._client.buckets_api()
            answer = buckets_api.find_buckets(name=self._bucket, org=self._org)  # type: ignore[no-untyped-call]
            found = answer.buckets or []
            if not any(bucket.name == self._bucket for bucket in found):
                buckets_api.create_bucket(bucket_name=self._bucket, org=self._org)

    def write(self, readings: Sequence[StoredReading]) -> None:
        """Write in chunks of at most `max_lines_per_write` lines; idempotent for redelivered readings."""
        for start in range(0, len(readings), self._max_lines):
            body = encode_many(readings[start : start + self._max_lines])
            with self._mapped_errors("write"):
                self._write_api.write(bucket=self._bucket, org=self._org, record=body, write_precision=_NS)

    def readings(
        self, patient_id: str, start: datetime, end: datetime, type: ReadingType | None = None
    ) -> list[StoredReading]:
        """A patient's readings with start <= measured_at < end (measured_at floored to ms), oldest first."""
        low, high = query_bound_ns(start), query_bound_ns(end)
        if low >= high:
            return []
        rows = self._query(
            _READINGS_FLUX,
            {
                "p_start": measured_at_from_ns(low),
                "p_stop": measured_at_from_ns(high),
                "p_patient_id": patient_id,
                "p_measurements": [type] if type is not None else list(MEASUREMENTS),
            },
        )
        found = [(epoch_ns(row["_time"]), row) for row in rows]
        found.sort(key=lambda pair: pair[0])
        return [
            decode(row["_measurement"], time_ns, row)
            for time_ns, row in found
            if not in_flight(row["_measurement"], row)
        ]

    def recent(self, patient_ids: Sequence[str], since: datetime) -> dict[str, list[StoredReading]]:
        """Readings of many patients measured at or after `since`, oldest first per patient."""
        unique = list(dict.fromkeys(patient_ids))
        result: dict[str, list[StoredReading]] = {patient: [] for patient in unique}
        if not unique:
            return result
        rows = self._query(
            _RECENT_FLUX,
            {
                "p_start": measured_at_from_ns(query_bound_ns(since)),
                "p_stop": _ALL_TIME_STOP,
                "p_patients": unique,
            },
        )
        found = sorted(((epoch_ns(row["_time"]), row) for row in rows), key=lambda pair: pair[0])
        for time_ns, row in found:
            if in_flight(row["_measurement"], row):
                continue  # being written by another gateway: whole on the next read
            reading = decode(row["_measurement"], time_ns, row)
            result.setdefault(reading.patient_id, []).append(reading)
        return result

    def summary(self) -> StoreSummary:
        """Points per measurement (count of msg_id) and the newest measured_at of any reading."""
        window = {"p_start": _ALL_TIME_START, "p_stop": _ALL_TIME_STOP}
        counts: dict[str, int] = dict.fromkeys(MEASUREMENTS, 0)
        for row in self._query(_COUNT_FLUX, window):
            counts[str(row["_measurement"])] = int(row["_value"])
        newest = self._query(_NEWEST_FLUX, window)
        last = measured_at_from_ns(epoch_ns(newest[0]["_time"])) if newest else None
        return StoreSummary(counts=counts, last_measured_at=last)

    def msg_id_counts(self, type: ReadingType) -> dict[str, int]:
        """How many points each msg_id has in one measurement (a redelivery must leave exactly one)."""
        rows = self._query(
            _MSG_IDS_FLUX, {"p_start": _ALL_TIME_START, "p_stop": _ALL_TIME_STOP, "p_measurement": type}
        )
        return dict(Counter(str(row["_value"]) for row in rows))

    def close(self) -> None:
        """Close the write API and (when this store created it) the client."""
        self._write_api.close()  # type: ignore[no-untyped-call]
        if self._owns_client:
            self._client.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> InfluxV2Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
