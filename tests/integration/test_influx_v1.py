"""InfluxV1Store and InfluxServer against a real influxd 1.x (Debian's 1.6.7 here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.errors import StorageRejected, StorageUnavailable
from gateway.timeseries import StoredReading, open_store
from gateway.timeseries.base import ReadingType
from gateway.timeseries.influx_v1 import DatabaseMissing, InfluxV1Store
from gateway.wire import BloodPressureReading, GlucoseReading, Reading
from rpmgw.errors import ServerStartError
from rpmgw.servers import free_port
from rpmgw.servers.influxdb import InfluxServer
from rpmgw.settings import InfluxSettings

T0 = datetime(2026, 11, 28, 3, 15, 2, tzinfo=UTC)
FAR_PAST = datetime(2000, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


def bp(msg_id: str, at: datetime = T0, device_id: str = "bp-000123", **changes: Any) -> BloodPressureReading:
    document = {
        "v": 1,
        "msg_id": msg_id,
        "device_id": device_id,
        "type": "blood_pressure",
        "measured_at": at.isoformat(),
        "systolic": 184,
        "diastolic": 112,
        "pulse": 88,
        "battery": 71,
        **changes,
    }
    return BloodPressureReading.model_validate({k: v for k, v in document.items() if v is not None})


def glucose(msg_id: str, at: datetime = T0, device_id: str = "gl-000042", **changes: Any) -> GlucoseReading:
    document = {
        "v": 1,
        "msg_id": msg_id,
        "device_id": device_id,
        "type": "glucose",
        "measured_at": at.isoformat(),
        "value": 2.9,
        "unit": "mmol/L",
        **changes,
    }
    return GlucoseReading.model_validate({k: v for k, v in document.items() if v is not None})


def floored(reading: Reading) -> Reading:
    moment = reading.measured_at
    return reading.model_copy(
        update={"measured_at": moment.replace(microsecond=moment.microsecond // 1000 * 1000)}
    )


def all_of(store: InfluxV1Store, patient_id: str, type: ReadingType | None = None) -> list[StoredReading]:
    return store.readings(patient_id, FAR_PAST, FAR_FUTURE, type)


# -- round trip and idempotency ---------------------------------------------------------------------------


def test_round_trip_of_both_types_oldest_first(influx_store: InfluxV1Store) -> None:
    patient = "patient 7, ward=3"  # spaces, commas and equals signs must survive as a tag value
    written = [
        StoredReading(
            patient, bp('m-"quoted"\\slash', T0 + timedelta(minutes=3), flags=["movement"]), ("movement",)
        ),
        StoredReading(patient, glucose("g-1", T0 + timedelta(milliseconds=1500, microseconds=700))),
        StoredReading(
            patient, glucose("g-2", T0 + timedelta(minutes=1), value=97, unit="mg/dL", meal="fasting")
        ),
        StoredReading(
            patient, glucose("g-lo", T0 + timedelta(minutes=2), value=None, censored="LO", battery=3)
        ),
        StoredReading(
            patient, glucose("g-hi", T0 + timedelta(minutes=4), value=None, censored="HI", unit="mg/dL")
        ),
        StoredReading(
            patient, bp("b-1", T0, pulse=None, battery=None, systolic=150, diastolic=140), ("pulse_pressure",)
        ),
    ]
    influx_store.write(written)

    expected = sorted(
        (StoredReading(s.patient_id, floored(s.reading), s.quality) for s in written),
        key=lambda s: s.reading.measured_at,
    )
    assert all_of(influx_store, patient) == expected
    assert all_of(influx_store, patient, "glucose") == [s for s in expected if s.reading.type == "glucose"]
    assert all_of(influx_store, patient, "blood_pressure") == [
        s for s in expected if s.reading.type == "blood_pressure"
    ]


def test_redelivered_reading_stays_one_point(influx_store: InfluxV1Store) -> None:
    batch = [StoredReading("p-1", bp(f"m-{i}", T0 + timedelta(seconds=i))) for i in range(50)]
    influx_store.write(batch)
    # Redelivery after a gateway restart: new objects parsed from the same payloads, some twice in a batch.
    redelivered = [StoredReading("p-1", bp(f"m-{i}", T0 + timedelta(seconds=i))) for i in (0, 0, 7, 49)]
    influx_store.write(redelivered)
    influx_store.write(batch)

    assert influx_store.msg_id_counts("blood_pressure") == {f"m-{i}": 1 for i in range(50)}
    assert influx_store.summary().counts == {"blood_pressure": 50, "glucose": 0}


def test_two_readings_of_one_device_in_the_same_second_stay_two(influx_store: InfluxV1Store) -> None:
    first = StoredReading("p-1", bp("first", T0, systolic=184))
    second = StoredReading("p-1", bp("second", T0, systolic=150))
    influx_store.write([first, second])

    assert influx_store.msg_id_counts("blood_pressure") == {"first": 1, "second": 1}
    assert sorted(
        s.reading.systolic for s in all_of(influx_store, "p-1") if isinstance(s.reading, BloodPressureReading)
    ) == [
        150,
        184,
    ]


def test_large_batches_go_in_chunks_and_all_arrive(influx_settings: InfluxSettings) -> None:
    session = RecordingSession()
    with InfluxV1Store(influx_settings, session, max_lines_per_write=5_000) as store:
        store.ensure_ready()
        batch = [
            StoredReading(
                f"p-{i % 40}", glucose(f"g-{i}", T0 + timedelta(seconds=i), value=4.0 + i % 50 / 10)
            )
            for i in range(12_001)
        ]
        store.write(batch)
        counts = store.msg_id_counts("glucose")

    assert session.write_lines == [5_000, 5_000, 2_001]
    assert len(counts) == 12_001
    assert set(counts.values()) == {1}


def test_readings_of_more_than_100000_devices_are_all_stored(influx_settings: InfluxSettings) -> None:
    # InfluxDB 1.x's default max-values-per-tag (100,000) would refuse the devices and patients past it:
    # a region's 100,001st patient stored nothing. The project's server lifts that limit.
    devices = 100_001
    first = bp("seed", T0, device_id="bp-0")
    with InfluxV1Store(influx_settings) as store:
        store.ensure_ready()
        batch = [
            StoredReading(
                f"p-{i}",
                first.model_copy(
                    update={
                        "msg_id": f"m-{i}",
                        "device_id": f"bp-{i}",
                        "measured_at": T0 + timedelta(milliseconds=i),
                    }
                ),
            )
            for i in range(devices)
        ]
        store.write(batch)
        counts = store.msg_id_counts("blood_pressure")
        assert len(counts) == devices
        assert all_of(store, f"p-{devices - 1}")[0].reading.device_id == f"bp-{devices - 1}"


class RecordingSession(requests.Session):
    """A real session that also notes how many lines each /write request carried."""

    def __init__(self) -> None:
        super().__init__()
        self.write_lines: list[int] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        data = kwargs.get("data")
        if str(url).endswith("/write") and isinstance(data, bytes):
            self.write_lines.append(data.count(b"\n") + 1)
        return super().request(method, url, *args, **kwargs)


# -- database and retention policy -----------------------------------------------------------------------


def test_database_is_created_when_missing(influx_settings: InfluxSettings) -> None:
    with InfluxV1Store(influx_settings) as store:
        with pytest.raises(DatabaseMissing, match="database not found"):
            store.write([StoredReading("p-1", bp("m-1"))])
        store.ensure_ready()
        store.ensure_ready()  # idempotent
        store.write([StoredReading("p-1", bp("m-1"))])
        assert store.msg_id_counts("blood_pressure") == {"m-1": 1}

    answer = requests.get(f"{influx_settings.url}/query", params={"q": "SHOW DATABASES"}, timeout=10).json()
    names = [row[0] for row in answer["results"][0]["series"][0]["values"]]
    assert influx_settings.database in names


def test_missing_retention_policy_is_a_clear_error(influx_settings: InfluxSettings) -> None:
    settings = influx_settings.model_copy(update={"retention_policy": "two_years"})
    with InfluxV1Store(settings) as store, pytest.raises(StorageRejected, match=r"two_years.*autogen"):
        store.ensure_ready()


# -- queries ---------------------------------------------------------------------------------------------


@pytest.fixture
def ward(influx_store: InfluxV1Store) -> InfluxV1Store:
    """Two patients, both types, one reading a minute from T0 to T0+5min, plus an injection bait."""
    readings = []
    for minute in range(6):
        at = T0 + timedelta(minutes=minute)
        readings.append(StoredReading("p-1", bp(f"p1-bp-{minute}", at)))
        readings.append(StoredReading("p-1", glucose(f"p1-gl-{minute}", at)))
        readings.append(StoredReading("p-2", bp(f"p2-bp-{minute}", at, device_id="bp-000999")))
    readings.append(StoredReading("x' OR 1=1 --", bp("bait", T0)))
    influx_store.write(readings)
    return influx_store


QUERIES = [
    # patient, start, end, type, expected msg_ids
    ("p-1", T0, T0 + timedelta(minutes=2), "blood_pressure", ["p1-bp-0", "p1-bp-1"]),
    ("p-1", T0, T0 + timedelta(minutes=1, milliseconds=1), "glucose", ["p1-gl-0", "p1-gl-1"]),
    ("p-1", T0 + timedelta(microseconds=1), T0 + timedelta(minutes=1), None, []),
    ("p-1", T0 + timedelta(minutes=5), FAR_FUTURE, None, ["p1-bp-5", "p1-gl-5"]),
    ("p-2", FAR_PAST, T0 + timedelta(minutes=1), None, ["p2-bp-0"]),
    ("p-2", FAR_PAST, FAR_FUTURE, "glucose", []),
    ("p-3", FAR_PAST, FAR_FUTURE, None, []),
    ("p-1", T0 + timedelta(minutes=3), T0, None, []),
    ("x' OR 1=1 --", FAR_PAST, FAR_FUTURE, None, ["bait"]),
    ("x' OR '1'='1", FAR_PAST, FAR_FUTURE, None, []),
    ("p-1' OR patient_id = 'p-2", FAR_PAST, FAR_FUTURE, None, []),
    ('p-1" OR "a"="a', FAR_PAST, FAR_FUTURE, None, []),
    ("$patient_id", FAR_PAST, FAR_FUTURE, None, []),
    ("p-1\\", FAR_PAST, FAR_FUTURE, None, []),
]


@pytest.mark.parametrize(("patient", "start", "end", "type", "msg_ids"), QUERIES)
def test_readings_filter_by_patient_time_and_type(
    ward: InfluxV1Store,
    patient: str,
    start: datetime,
    end: datetime,
    type: ReadingType | None,
    msg_ids: list[str],
) -> None:
    found = ward.readings(patient, start, end, type)
    assert sorted(s.reading.msg_id for s in found) == sorted(msg_ids)
    assert [s.reading.measured_at for s in found] == sorted(s.reading.measured_at for s in found)
    assert all(s.patient_id == patient for s in found)
    assert all(start <= s.reading.measured_at < end for s in found)


def test_summary_counts_and_newest(ward: InfluxV1Store) -> None:
    summary = ward.summary()
    assert summary.counts == {"blood_pressure": 13, "glucose": 6}
    assert summary.last_measured_at == T0 + timedelta(minutes=5)


def test_summary_of_an_empty_database(influx_store: InfluxV1Store) -> None:
    summary = influx_store.summary()
    assert summary.counts == {"blood_pressure": 0, "glucose": 0}
    assert summary.last_measured_at is None


# -- errors ----------------------------------------------------------------------------------------------


def test_field_type_conflict_is_rejected_with_the_servers_text(
    influx_settings: InfluxSettings, influx_store: InfluxV1Store
) -> None:
    # Another program wrote `value` as an integer first; ours is a float.
    response = requests.post(
        f"{influx_settings.url}/write",
        params={"db": influx_settings.database, "precision": "s"},
        # Same time as ours: InfluxDB 1.x keeps field types per shard (one shard per week here).
        data=f"glucose,device_id=gl-000042,patient_id=p-1 value=5i {int(T0.timestamp())}".encode(),
        timeout=10,
    )
    assert response.status_code == 204
    with pytest.raises(StorageRejected, match=r"400.*field type conflict") as caught:
        influx_store.write([StoredReading("p-1", glucose("g-1"))])
    assert not isinstance(caught.value, StorageUnavailable)


def test_server_error_is_unavailable(influx_settings: InfluxSettings, influx_store: InfluxV1Store) -> None:
    # influxd answers 500 when the retention policy of a write does not exist (the database does).
    settings = influx_settings.model_copy(update={"retention_policy": "no_such_policy"})
    with InfluxV1Store(settings) as store, pytest.raises(StorageUnavailable, match=r"500.*retention policy"):
        store.write([StoredReading("p-1", bp("m-1"))])


def test_stopped_server_is_unavailable(tmp_path: Path) -> None:
    server = InfluxServer.start(tmp_path / "influx")
    settings = InfluxSettings(url=server.url, database="rpm")
    with InfluxV1Store(settings) as store:
        store.ensure_ready()
        store.write([StoredReading("p-1", bp("m-1"))])
        server.stop()
        calls = [
            lambda: store.write([StoredReading("p-1", bp("m-2"))]),
            lambda: store.readings("p-1", FAR_PAST, FAR_FUTURE),
            store.summary,
            store.ensure_ready,
        ]
        for call in calls:
            with pytest.raises(StorageUnavailable, match=server.url):
                call()


def test_nothing_listening_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        InfluxV1Store(InfluxSettings(url=url, timeout=2)) as store,
        pytest.raises(StorageUnavailable, match=url),
    ):
        store.ensure_ready()


# -- open_store ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["auto", "1"])
def test_open_store_gives_the_v1_store(influx_settings: InfluxSettings, version: str) -> None:
    store = open_store(influx_settings.model_copy(update={"version": version}))
    try:
        assert isinstance(store, InfluxV1Store)
        store.ensure_ready()
        store.write([StoredReading("p-1", bp("m-1"))])
        assert [s.reading.msg_id for s in store.readings("p-1", FAR_PAST, FAR_FUTURE)] == ["m-1"]
    finally:
        store.close()


def test_open_store_names_an_unreachable_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StorageUnavailable, match=url):
        open_store(InfluxSettings(url=url, version="auto", timeout=2))


# -- the server helper -----------------------------------------------------------------------------------


def test_server_keeps_everything_in_its_directory_and_stops_twice(tmp_path: Path) -> None:
    with (
        InfluxServer.start(tmp_path / "own") as server,
        InfluxV1Store(InfluxSettings(url=server.url)) as store,
    ):
        assert requests.get(f"{server.url}/ping", timeout=5).status_code == 204
        store.ensure_ready()
        store.write([StoredReading("p-1", bp("m-1"))])
        assert server.log_path.parent == (tmp_path / "own").resolve()
        assert {"meta", "data", "wal", "influxd.log"} <= {p.name for p in server.base_dir.iterdir()}
    assert server.process.poll() is not None
    server.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/ping", timeout=5)


def test_server_restarts_on_its_data(tmp_path: Path) -> None:
    with (
        InfluxServer.start(tmp_path / "own") as server,
        InfluxV1Store(InfluxSettings(url=server.url)) as store,
    ):
        store.ensure_ready()
        store.write([StoredReading("p-1", bp("kept"))])
    with (
        InfluxServer.start(server.base_dir, http_port=server.http_port, rpc_port=server.rpc_port) as again,
        InfluxV1Store(InfluxSettings(url=again.url)) as store,
    ):
        assert store.msg_id_counts("blood_pressure") == {"kept": 1}


def test_a_port_taken_by_another_influxd_is_a_start_error(
    influx_server: InfluxServer, tmp_path: Path
) -> None:
    # /ping on that port answers (from the other server): only our process's death tells the truth.
    with pytest.raises(ServerStartError, match=r"exited.*influxd\.log"):
        InfluxServer.start(tmp_path / "second", http_port=influx_server.http_port)


def test_missing_influxd_is_a_start_error(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="apt-get install influxdb"):
        InfluxServer.start(tmp_path / "none", influxd=str(tmp_path / "no-influxd"))
