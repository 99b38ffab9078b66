"""InfluxV2Store against a small fake of the InfluxDB 2.x HTTP API (no 2.x server on this machine).

The fake is honest at the transport seam: influxdb-client talks real HTTP to it, and the tests check what
went over the wire (paths, query parameters, headers, bodies) and how answers and failures come back.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.errors import StorageRejected, StorageUnavailable
from gateway.timeseries import StoredReading, UnknownInfluxVersion, open_store
from gateway.timeseries.influx_v1 import InfluxV1Store
from gateway.timeseries.influx_v2 import InfluxV2Store
from gateway.timeseries.lineprotocol import encode_many, timestamp_ns
from gateway.wire import BloodPressureReading, GlucoseReading
from rpmgw.servers import free_port
from rpmgw.settings import InfluxSettings

TOKEN = "s3cret-token"
ORG_ID = "0123456789abcdef"
T0 = datetime(2026, 11, 28, 3, 15, 2, tzinfo=UTC)


@dataclass(frozen=True)
class Request:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeInflux2:
    """Enough of InfluxDB 2.x: /ping, /api/v2/orgs, /api/v2/buckets (GET, POST), /api/v2/write, /api/v2/query."""

    version_header: str | None = "v2.7.4"
    org_name: str = "rpm"
    buckets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Queued (status, message) answers for the next write requests; then 204 again.
    write_failures: deque[tuple[int, str]] = field(default_factory=deque)
    # Annotated CSV answers for the next queries, in order.
    query_answers: deque[str] = field(default_factory=deque)
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeInflux2:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads `fake.requests` instead."""

            def do_GET(self) -> None:
                fake._handle(self)

            def do_POST(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll interval: shutdown() waits for the serving loop to notice.
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def paths(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        request = Request(
            handler.command,
            parts.path,
            parse_qs(parts.query),
            {k.lower(): v for k, v in handler.headers.items()},
            handler.rfile.read(length),
        )
        self.requests.append(request)
        status, content_type, body, headers = self._answer(request)
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        if body:
            handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _answer(self, request: Request) -> tuple[int, str, bytes, dict[str, str]]:
        route = (request.method, request.path)
        if route == ("GET", "/ping"):
            headers = {"X-Influxdb-Build": "OSS"}
            if self.version_header is not None:
                headers["X-Influxdb-Version"] = self.version_header
            return 204, "", b"", headers
        if request.headers.get("authorization") != f"Token {TOKEN}":
            return self._json(401, {"code": "unauthorized", "message": "unauthorized access"})
        if route == ("GET", "/api/v2/orgs"):
            wanted = request.query.get("org", [self.org_name])[0]
            orgs = [{"id": ORG_ID, "name": self.org_name}] if wanted == self.org_name else []
            return self._json(200, {"orgs": orgs})
        if route == ("GET", "/api/v2/buckets"):
            name = request.query.get("name", [None])[0]
            found = [b for b in self.buckets.values() if name is None or b["name"] == name]
            return self._json(200, {"buckets": found})
        if route == ("POST", "/api/v2/buckets"):
            document = json.loads(request.body)
            bucket = {
                "id": f"{len(self.buckets) + 1:016x}",
                "name": document["name"],
                "orgID": document["orgID"],
                "type": "user",
                "retentionRules": document.get("retentionRules", []),
            }
            self.buckets[bucket["name"]] = bucket
            return self._json(201, bucket)
        if route == ("POST", "/api/v2/write"):
            if self.write_failures:
                status, message = self.write_failures.popleft()
                return self._json(status, {"code": "error", "message": message})
            return 204, "", b"", {}
        if route == ("POST", "/api/v2/query"):
            return 200, "text/csv; charset=utf-8", self.query_answers.popleft().encode(), {}
        return self._json(404, {"code": "not found", "message": f"path {request.path} not found"})

    @staticmethod
    def _json(status: int, document: dict[str, Any]) -> tuple[int, str, bytes, dict[str, str]]:
        return status, "application/json; charset=utf-8", json.dumps(document).encode(), {}


@pytest.fixture
def fake() -> Iterator[FakeInflux2]:
    server = FakeInflux2().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(fake: FakeInflux2) -> InfluxSettings:
    return InfluxSettings(url=fake.url, version="2", bucket="readings", org="rpm", token=TOKEN, timeout=5)


@pytest.fixture
def store(settings: InfluxSettings) -> Iterator[InfluxV2Store]:
    with InfluxV2Store(settings, max_lines_per_write=5) as opened:
        yield opened


def bp(msg_id: str, at: datetime = T0, **changes: Any) -> BloodPressureReading:
    document = {
        "v": 1,
        "msg_id": msg_id,
        "device_id": "bp-000123",
        "type": "blood_pressure",
        "measured_at": at.isoformat(),
        "systolic": 184,
        "diastolic": 112,
        "pulse": 88,
        **changes,
    }
    return BloodPressureReading.model_validate({k: v for k, v in document.items() if v is not None})


def glucose(msg_id: str, at: datetime = T0, **changes: Any) -> GlucoseReading:
    document = {
        "v": 1,
        "msg_id": msg_id,
        "device_id": "gl-000042",
        "type": "glucose",
        "measured_at": at.isoformat(),
        "value": 97,
        "unit": "mg/dL",
        **changes,
    }
    return GlucoseReading.model_validate({k: v for k, v in document.items() if v is not None})


# -- buckets ---------------------------------------------------------------------------------------------


def test_ensure_ready_creates_the_missing_bucket_in_the_org(fake: FakeInflux2, store: InfluxV2Store) -> None:
    store.ensure_ready()

    assert fake.buckets["readings"]["orgID"] == ORG_ID
    assert fake.paths() == [("GET", "/api/v2/buckets"), ("GET", "/api/v2/orgs"), ("POST", "/api/v2/buckets")]
    assert fake.requests[0].query == {"name": ["readings"], "org": ["rpm"]}
    assert all(r.headers["authorization"] == f"Token {TOKEN}" for r in fake.requests)

    fake.requests.clear()
    store.ensure_ready()
    assert fake.paths() == [("GET", "/api/v2/buckets")]


def test_unknown_org_is_unavailable_naming_the_setting(fake: FakeInflux2, settings: InfluxSettings) -> None:
    with (
        InfluxV2Store(settings.model_copy(update={"org": "elsewhere"})) as store,
        pytest.raises(StorageUnavailable, match="RPMGW_INFLUX__ORG"),
    ):
        store.ensure_ready()


# -- writes ----------------------------------------------------------------------------------------------


def test_write_sends_the_line_protocol_with_token_org_bucket_and_ns(
    fake: FakeInflux2, store: InfluxV2Store
) -> None:
    batch = [StoredReading("p 1", bp("m-1")), StoredReading("p-2", glucose("g-1", censored="LO", value=None))]
    store.write(batch)

    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/api/v2/write")
    assert request.query == {"org": ["rpm"], "bucket": ["readings"], "precision": ["ns"]}
    assert request.headers["authorization"] == f"Token {TOKEN}"
    assert request.headers["content-type"].startswith("text/plain")
    assert request.body.decode() == (
        "blood_pressure,device_id=bp-000123,patient_id=p\\ 1 "
        f'msg_id="m-1",systolic=184i,diastolic=112i,pulse=88i,flags="",quality="" {timestamp_ns(bp("m-1"))}\n'
        'glucose,device_id=gl-000042,patient_id=p-2 msg_id="g-1",unit="mg/dL",censored="LO",flags="",quality="" '
        f"{timestamp_ns(glucose('g-1'))}"
    )
    assert request.body.decode() == encode_many(batch)


def test_write_goes_in_chunks(fake: FakeInflux2, store: InfluxV2Store) -> None:
    batch = [StoredReading("p-1", bp(f"m-{i}", T0 + timedelta(seconds=i))) for i in range(12)]
    store.write(batch)

    bodies = [r.body.decode() for r in fake.requests]
    assert [body.count("\n") + 1 for body in bodies] == [5, 5, 2]
    assert "\n".join(bodies) == encode_many(batch)


FAILURES = [
    (503, "service unavailable: too many requests", StorageUnavailable),
    (500, "internal error", StorageUnavailable),
    (400, 'partial write: field type conflict: "value" is type float', StorageRejected),
    (422, "unprocessable entity: bad timestamp", StorageRejected),
    (404, 'bucket "readings" not found', StorageUnavailable),
]


@pytest.mark.parametrize(("status", "message", "error"), FAILURES)
def test_write_failures_map_to_storage_errors(
    fake: FakeInflux2, store: InfluxV2Store, status: int, message: str, error: type[Exception]
) -> None:
    fake.write_failures.append((status, message))
    with pytest.raises(error) as caught:
        store.write([StoredReading("p-1", bp("m-1"))])
    assert str(status) in str(caught.value)
    assert message in str(caught.value)
    assert fake.url in str(caught.value)
    if error is StorageRejected:
        assert not isinstance(caught.value, StorageUnavailable)


def test_wrong_token_is_unavailable_naming_the_setting(fake: FakeInflux2, settings: InfluxSettings) -> None:
    with (
        InfluxV2Store(settings.model_copy(update={"token": "wrong"})) as store,
        pytest.raises(StorageUnavailable, match=r"401.*RPMGW_INFLUX__TOKEN"),
    ):
        store.write([StoredReading("p-1", bp("m-1"))])


def test_nothing_listening_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    settings = InfluxSettings(url=url, version="2", token=TOKEN, timeout=2)
    with InfluxV2Store(settings) as store:
        for call in (store.ensure_ready, lambda: store.write([StoredReading("p-1", bp("m-1"))])):
            with pytest.raises(StorageUnavailable, match=url):
                call()


# -- queries ---------------------------------------------------------------------------------------------

COLUMNS = [
    ("result", "string"),
    ("table", "long"),
    ("_start", "dateTime:RFC3339"),
    ("_stop", "dateTime:RFC3339"),
    ("_time", "dateTime:RFC3339"),
    ("_measurement", "string"),
    ("device_id", "string"),
    ("patient_id", "string"),
    ("msg_id", "string"),
    ("systolic", "long"),
    ("diastolic", "long"),
    ("pulse", "long"),
    ("battery", "long"),
    ("value_mmol", "double"),
    ("value", "double"),
    ("unit", "string"),
    ("censored", "string"),
    ("meal", "string"),
    ("flags", "string"),
    ("quality", "string"),
]


def rfc3339_ns(time_ns: int) -> str:
    seconds, fraction = divmod(time_ns, 10**9)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:09d}Z"


def annotated_csv(columns: Sequence[tuple[str, str]], rows: Sequence[dict[str, object]]) -> str:
    """Flux's annotated CSV, as a 2.x server answers /api/v2/query."""

    def cell(value: object) -> str:
        text = "" if value is None else str(value)
        return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text

    lines = [
        "#datatype," + ",".join(kind for _, kind in columns),
        "#group," + ",".join("false" for _ in columns),
        "#default,_result" + "," * (len(columns) - 1),
        "," + ",".join(name for name, _ in columns),
    ]
    lines += ["," + ",".join(cell(row.get(name)) for name, _ in columns) for row in rows]
    return "\r\n".join(lines) + "\r\n\r\n"


def pivoted_row(stored: StoredReading) -> dict[str, object]:
    """The row the readings query's pivot makes of one stored point."""
    r = stored.reading
    row: dict[str, object] = {
        "table": 0,
        "_start": "2000-01-01T00:00:00Z",
        "_stop": "2100-01-01T00:00:00Z",
        "_time": rfc3339_ns(timestamp_ns(r)),
        "_measurement": r.type,
        "device_id": r.device_id,
        "patient_id": stored.patient_id,
        "msg_id": r.msg_id,
        "battery": r.battery,
        "flags": ",".join(r.flags),
        "quality": ",".join(stored.quality),
    }
    if isinstance(r, BloodPressureReading):
        row |= {"systolic": r.systolic, "diastolic": r.diastolic, "pulse": r.pulse}
    else:
        row |= {
            "value_mmol": r.value_mmol,
            "value": r.value,
            "unit": r.unit,
            "censored": r.censored,
            "meal": r.meal,
        }
    return row


def test_readings_pass_values_as_parameters_and_decode_the_pivot(
    fake: FakeInflux2, store: InfluxV2Store
) -> None:
    patient = 'x" or true //${evil}'
    stored = [
        StoredReading(
            patient, bp("m-1", T0 + timedelta(milliseconds=250), flags=["movement"]), ("movement",)
        ),
        StoredReading(patient, glucose("g-1", T0 + timedelta(minutes=1), meal="fasting", battery=50)),
        StoredReading(patient, glucose("g-hi", T0 + timedelta(minutes=2), censored="HI", value=None)),
    ]
    fake.query_answers.append(annotated_csv(COLUMNS, [pivoted_row(s) for s in reversed(stored)]))

    found = store.readings(patient, T0, T0 + timedelta(hours=1, microseconds=1), "glucose")

    assert found == stored  # oldest first, whatever order the server answered in
    (request,) = fake.requests
    assert (request.method, request.path, request.query) == ("POST", "/api/v2/query", {"org": ["rpm"]})
    assert request.headers["authorization"] == f"Token {TOKEN}"
    body = json.loads(request.body)
    assert patient not in body["query"]
    assert "pivot(" in body["query"]
    options = {
        statement["assignment"]["id"]["name"]: statement["assignment"]["init"]
        for statement in body["extern"]["body"]
        if statement["type"] == "OptionStatement"
    }
    assert options == {
        "p_bucket": {"type": "StringLiteral", "value": "readings"},
        "p_patient_id": {"type": "StringLiteral", "value": patient},
        "p_start": {"type": "DateTimeLiteral", "value": "2026-11-28T03:15:02.000000000Z"},
        # The end bound is rounded up to the next millisecond.
        "p_stop": {"type": "DateTimeLiteral", "value": "2026-11-28T04:15:02.001000000Z"},
        "p_measurements": {
            "type": "ArrayExpression",
            "elements": [{"type": "StringLiteral", "value": "glucose"}],
        },
    }
    assert all(
        f"p_{name}" in body["query"] for name in ("bucket", "patient_id", "start", "stop", "measurements")
    )


def test_summary_counts_per_measurement_and_newest(fake: FakeInflux2, store: InfluxV2Store) -> None:
    count_columns = [("result", "string"), ("table", "long"), ("_measurement", "string"), ("_value", "long")]
    fake.query_answers.append(
        annotated_csv(
            count_columns,
            [
                {"table": 0, "_measurement": "blood_pressure", "_value": 12},
                {"table": 1, "_measurement": "glucose", "_value": 3},
            ],
        )
    )
    newest_columns = [
        ("result", "string"),
        ("table", "long"),
        ("_time", "dateTime:RFC3339"),
        ("_value", "string"),
    ]
    fake.query_answers.append(
        annotated_csv(
            newest_columns, [{"table": 0, "_time": rfc3339_ns(timestamp_ns(bp("m-9"))), "_value": "m-9"}]
        )
    )

    summary = store.summary()

    assert summary.counts == {"blood_pressure": 12, "glucose": 3}
    assert summary.last_measured_at == T0
    assert [r.path for r in fake.requests] == ["/api/v2/query", "/api/v2/query"]


def test_summary_of_an_empty_bucket(fake: FakeInflux2, store: InfluxV2Store) -> None:
    fake.query_answers.extend(["\r\n", "\r\n"])
    summary = store.summary()
    assert summary.counts == {"blood_pressure": 0, "glucose": 0}
    assert summary.last_measured_at is None


# -- open_store ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["v2.7.4", "2.7.1", "OSS v2.1.0"])
def test_open_store_detects_2x(fake: FakeInflux2, settings: InfluxSettings, header: str) -> None:
    fake.version_header = header
    store = open_store(settings.model_copy(update={"version": "auto"}))
    try:
        assert isinstance(store, InfluxV2Store)
        store.ensure_ready()
        assert "readings" in fake.buckets
    finally:
        store.close()


@pytest.mark.parametrize("header", ["1.8.10", "v1.6.7~rc0"])
def test_open_store_detects_1x(fake: FakeInflux2, settings: InfluxSettings, header: str) -> None:
    fake.version_header = header
    store = open_store(settings.model_copy(update={"version": "auto"}))
    try:
        assert isinstance(store, InfluxV1Store)
    finally:
        store.close()


@pytest.mark.parametrize("header", ["3.0.0", "", None])
def test_open_store_refuses_an_unknown_version(
    fake: FakeInflux2, settings: InfluxSettings, header: str | None
) -> None:
    fake.version_header = header
    with pytest.raises(UnknownInfluxVersion, match="RPMGW_INFLUX__VERSION"):
        open_store(settings.model_copy(update={"version": "auto"}))
