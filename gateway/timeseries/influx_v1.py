"""`ReadingStore` over the InfluxDB 1.x HTTP API: `/ping`, `/write` (line protocol), `/query` (InfluxQL).

Plain `requests`, not influxdb-client: that library speaks only the 2.x API (against 1.x its writes get 404
and its `ping()` still says True). Queries pass every value as a bound parameter (`params=`), so a
patient id can never change a query's meaning.

Status codes: no answer, a timeout or 5xx -> StorageUnavailable (retry later). 401/403 (credentials) and
404 (database missing) -> StorageUnavailable too: the data is fine, the server's set-up is not, and
acknowledging nothing until an operator fixes it loses no reading. Any other 4xx (a line the server will
never accept, e.g. a field type conflict, which 1.x reports as a 400 "partial write") -> StorageRejected.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final

import requests

from gateway.errors import StorageRejected, StorageUnavailable
from gateway.timeseries.base import ReadingType, StoredReading, StoreSummary
from gateway.timeseries.lineprotocol import (
    MEASUREMENTS,
    decode,
    encode_many,
    in_flight,
    measured_at_from_ns,
    query_bound_ns,
)
from rpmgw.settings import InfluxSettings

MAX_LINES_PER_WRITE: Final = 5_000
QUERY_CHUNK_SIZE: Final = 10_000
# Patients per history query: long OR lists get slow in InfluxQL.
RECENT_PATIENTS_PER_QUERY: Final = 200
# Not retryable by sending the same data again, but not the data's fault either.
_SETUP_STATUSES: Final = frozenset({401, 403, 404})

Row = dict[str, Any]


def quote_identifier(name: str) -> str:
    """An InfluxQL double-quoted identifier (database, retention policy, measurement)."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    header = response.headers.get("X-Influxdb-Error")
    if header:
        return header
    return response.text.strip()[:500] or response.reason or "no error text"


class DatabaseMissing(StorageUnavailable):
    """The database does not exist (yet): `ensure_ready` creates it."""


class InfluxV1Store:
    """Readings in an InfluxDB 1.x database (`settings.database`, `settings.retention_policy`)."""

    def __init__(
        self,
        settings: InfluxSettings,
        session: requests.Session | None = None,
        *,
        max_lines_per_write: int = MAX_LINES_PER_WRITE,
    ) -> None:
        if max_lines_per_write < 1:
            raise ValueError("max_lines_per_write must be at least 1")
        self._url = settings.url
        self._database = settings.database
        self._retention_policy = settings.retention_policy
        self._timeout = settings.timeout
        self._max_lines = max_lines_per_write
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        if settings.username is not None:
            self._session.auth = (settings.username, settings.password or "")

    # -- HTTP ------------------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, params: Mapping[str, str], data: bytes | Mapping[str, str] | None
    ) -> requests.Response:
        url = f"{self._url}{path}"
        try:
            response = self._session.request(method, url, params=params, data=data, timeout=self._timeout)
        except requests.RequestException as exc:
            raise StorageUnavailable(f"InfluxDB at {self._url} did not answer {path}: {exc}") from exc
        if response.status_code < 400:
            return response
        text = _error_text(response)
        message = f"InfluxDB at {self._url} answered {response.status_code} to {path}: {text}"
        if response.status_code == 404 and text.startswith("database not found"):
            raise DatabaseMissing(message)
        if response.status_code >= 500 or response.status_code in _SETUP_STATUSES:
            if response.status_code in (401, 403):
                message += " (check RPMGW_INFLUX__USERNAME and RPMGW_INFLUX__PASSWORD)"
            raise StorageUnavailable(message)
        raise StorageRejected(message)

    def _query(self, statement: str, bind: Mapping[str, object] | None = None) -> list[list[Row]]:
        """Run InfluxQL; per statement, its series as ``{"name", "columns", "values"}`` dicts.

        Chunked answers (one JSON document per line) are merged, so no row limit truncates a result.
        """
        form = {
            "q": statement,
            "db": self._database,
            "epoch": "ns",
            "chunked": "true",
            "chunk_size": str(QUERY_CHUNK_SIZE),
        }
        if bind:
            form["params"] = json.dumps(bind)
        response = self._request("POST", "/query", params={}, data=form)
        results: dict[int, list[Row]] = {}
        for line in response.text.splitlines():
            if not line.strip():
                continue
            try:
                document = json.loads(line)
            except ValueError as exc:
                raise StorageUnavailable(
                    f"InfluxDB at {self._url} answered /query with something that is not JSON: {line[:200]!r}"
                ) from exc
            if "error" in document:
                self._raise_query_error(str(document["error"]), statement)
            for result in document.get("results", []):
                if "error" in result:
                    self._raise_query_error(str(result["error"]), statement)
                results.setdefault(int(result.get("statement_id", 0)), []).extend(result.get("series", []))
        return [results[key] for key in sorted(results)]

    def _raise_query_error(self, text: str, statement: str) -> None:
        message = f"InfluxDB at {self._url} refused {statement[:200]!r}: {text}"
        if text.startswith("database not found"):
            raise DatabaseMissing(message)
        raise StorageRejected(message)

    def _source(self, measurement: str) -> str:
        return (
            f"{quote_identifier(self._database)}.{quote_identifier(self._retention_policy)}"
            f".{quote_identifier(measurement)}"
            if self._retention_policy
            else f"{quote_identifier(self._database)}..{quote_identifier(measurement)}"
        )

    # -- ReadingStore ----------------------------------------------------------------------------------

    def ensure_ready(self) -> None:
        """Ping, create the database when missing (idempotent) and check the retention policy exists."""
        self._request("GET", "/ping", params={}, data=None)
        show = f"SHOW RETENTION POLICIES ON {quote_identifier(self._database)}"
        try:
            policies = self._single(self._query(show))
        except DatabaseMissing:
            # Checked first so that a user without admin rights can use a database that exists.
            self._query(f"CREATE DATABASE {quote_identifier(self._database)}")
            policies = self._single(self._query(show))
        if not self._retention_policy:
            return
        names = {
            values[serie["columns"].index("name")] for serie in policies for values in serie.get("values", [])
        }
        if self._retention_policy not in names:
            raise StorageRejected(
                f"retention policy {self._retention_policy!r} does not exist on database {self._database!r} "
                f"at {self._url} (has: {', '.join(sorted(names)) or 'none'}; RPMGW_INFLUX__RETENTION_POLICY)"
            )

    def write(self, readings: Sequence[StoredReading]) -> None:
        """Write in chunks of at most `max_lines_per_write` lines; idempotent for redelivered readings."""
        params = {"db": self._database, "precision": "ns"}
        if self._retention_policy:
            params["rp"] = self._retention_policy
        for start in range(0, len(readings), self._max_lines):
            body = encode_many(readings[start : start + self._max_lines]).encode("utf-8")
            self._request("POST", "/write", params=params, data=body)

    def readings(
        self, patient_id: str, start: datetime, end: datetime, type: ReadingType | None = None
    ) -> list[StoredReading]:
        """A patient's readings with start <= measured_at < end (measured_at floored to ms), oldest first."""
        low, high = query_bound_ns(start), query_bound_ns(end)
        if low >= high:
            return []
        measurements = (type,) if type is not None else MEASUREMENTS
        sources = ", ".join(self._source(m) for m in measurements)
        statement = (
            f"SELECT * FROM {sources} WHERE patient_id = $patient_id AND time >= $start AND time < $end"
        )
        found: list[tuple[int, StoredReading]] = []
        for serie in self._single(
            self._query(statement, {"patient_id": patient_id, "start": low, "end": high})
        ):
            columns = serie["columns"]
            for values in serie.get("values", []):
                row = dict(zip(columns, values, strict=True))
                if not in_flight(serie["name"], row):
                    found.append((row["time"], decode(serie["name"], row["time"], row)))
        found.sort(key=lambda pair: pair[0])
        return [reading for _, reading in found]

    def recent(self, patient_ids: Sequence[str], since: datetime) -> dict[str, list[StoredReading]]:
        """Readings of many patients measured at or after `since`, oldest first per patient."""
        found: dict[str, list[tuple[int, StoredReading]]] = {}
        sources = ", ".join(self._source(m) for m in MEASUREMENTS)
        unique = list(dict.fromkeys(patient_ids))
        for start in range(0, len(unique), RECENT_PATIENTS_PER_QUERY):
            chunk = unique[start : start + RECENT_PATIENTS_PER_QUERY]
            bind: dict[str, object] = {f"p{i}": patient for i, patient in enumerate(chunk)}
            bind["since"] = query_bound_ns(since)
            wanted = " OR ".join(f"patient_id = $p{i}" for i in range(len(chunk)))
            statement = f"SELECT * FROM {sources} WHERE ({wanted}) AND time >= $since"
            for serie in self._single(self._query(statement, bind)):
                columns = serie["columns"]
                for values in serie.get("values", []):
                    row = dict(zip(columns, values, strict=True))
                    if in_flight(serie["name"], row):
                        continue  # being written by another gateway: whole on the next read
                    reading = decode(serie["name"], row["time"], row)
                    found.setdefault(reading.patient_id, []).append((row["time"], reading))
        result: dict[str, list[StoredReading]] = {patient: [] for patient in unique}
        for patient, pairs in found.items():
            pairs.sort(key=lambda pair: pair[0])
            result[patient] = [reading for _, reading in pairs]
        return result

    def summary(self) -> StoreSummary:
        """Points per measurement (count of msg_id) and the newest measured_at of any reading."""
        sources = ", ".join(self._source(m) for m in MEASUREMENTS)
        statements = self._query(f"SELECT count(msg_id) FROM {sources}; SELECT last(msg_id) FROM {sources}")
        counted, newest = self._single(statements), self._single(statements[1:])
        counts: dict[str, int] = dict.fromkeys(MEASUREMENTS, 0)
        for serie in counted:
            counts[serie["name"]] = int(serie["values"][0][1])
        times = [int(serie["values"][0][0]) for serie in newest if serie.get("values")]
        return StoreSummary(
            counts=counts, last_measured_at=measured_at_from_ns(max(times)) if times else None
        )

    def msg_id_counts(self, type: ReadingType) -> dict[str, int]:
        """How many points each msg_id has in one measurement (a redelivery must leave exactly one)."""
        series = self._single(self._query(f"SELECT msg_id FROM {self._source(type)}"))
        return dict(Counter(values[1] for serie in series for values in serie.get("values", [])))

    def close(self) -> None:
        """Close the HTTP session (only when this store created it)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> InfluxV1Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def _single(statements: list[list[Row]]) -> list[Row]:
        return statements[0] if statements else []
