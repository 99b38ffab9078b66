"""`recent()`: many patients' history in one round trip, on a real InfluxDB 1.6.7 and a fake 2.x."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import requests

from gateway.timeseries.base import StoredReading
from gateway.timeseries.influx_v1 import RECENT_PATIENTS_PER_QUERY, InfluxV1Store
from gateway.timeseries.influx_v2 import InfluxV2Store
from gateway.timeseries.lineprotocol import UndecodableRow
from rpmgw.settings import InfluxSettings
from tests.integration.test_influx_v1 import T0, bp, floored, glucose
from tests.integration.test_influx_v2_fake import (
    COLUMNS,
    FakeInflux2,
    annotated_csv,
    fake,
    pivoted_row,
    settings,
    store,
)

__all__ = ["fake", "settings", "store"]  # fixtures of the 2.x fake, used below


def test_recent_groups_by_patient_oldest_first_and_honours_since(influx_store: InfluxV1Store) -> None:
    rows = [
        StoredReading("P-1", bp("a-old", T0 - timedelta(days=9))),
        StoredReading("P-1", bp("a-2", T0 + timedelta(minutes=2))),
        StoredReading("P-1", glucose("a-g", T0 + timedelta(minutes=1))),
        StoredReading("P-2", bp("b-1", T0, device_id="bp-000200")),
        StoredReading("P-3", bp("c-1", T0, device_id="bp-000300")),
    ]
    influx_store.write(rows)

    found = influx_store.recent(["P-1", "P-2", "P-absent"], T0 - timedelta(days=8))

    assert set(found) == {"P-1", "P-2", "P-absent"}
    assert [r.reading.msg_id for r in found["P-1"]] == ["a-g", "a-2"]
    assert found["P-1"][1].reading == floored(rows[1].reading)
    assert [r.reading.msg_id for r in found["P-2"]] == ["b-1"]
    assert found["P-absent"] == []


def test_recent_with_more_patients_than_one_query_holds(influx_store: InfluxV1Store) -> None:
    count = RECENT_PATIENTS_PER_QUERY * 2 + 7
    rows = [StoredReading(f"P-{i}", bp(f"m-{i}", T0, device_id=f"bp-{i:06d}")) for i in range(count)]
    influx_store.write(rows)

    found = influx_store.recent([f"P-{i}" for i in range(count)], T0 - timedelta(hours=1))

    assert {patient: [r.reading.msg_id for r in readings] for patient, readings in found.items()} == {
        f"P-{i}": [f"m-{i}"] for i in range(count)
    }


def test_recent_patient_ids_cannot_change_the_query(influx_store: InfluxV1Store) -> None:
    influx_store.write([StoredReading("P-1", bp("a-1", T0))])
    found = influx_store.recent(["x' OR patient_id =~ /.*/ --"], T0 - timedelta(days=1))
    assert found == {"x' OR patient_id =~ /.*/ --": []}


def test_recent_on_2x_passes_the_patient_set_as_a_parameter(fake: FakeInflux2, store: InfluxV2Store) -> None:
    stored = [
        StoredReading("P-2", bp("b-1", T0 + timedelta(minutes=1))),
        StoredReading("P-1", glucose("a-1", T0)),
    ]
    fake.query_answers.append(annotated_csv(COLUMNS, [pivoted_row(s) for s in stored]))

    found = store.recent(["P-1", "P-2", "P-3"], T0 - timedelta(days=8))

    assert found == {"P-1": [stored[1]], "P-2": [stored[0]], "P-3": []}
    body = json.loads(fake.requests[0].body)
    assert "P-1" not in body["query"]
    options = {
        statement["assignment"]["id"]["name"]: statement["assignment"]["init"]
        for statement in body["extern"]["body"]
        if statement["type"] == "OptionStatement"
    }
    assert [e["value"] for e in options["p_patients"]["elements"]] == ["P-1", "P-2", "P-3"]


def test_the_history_cache_keeps_a_flooding_patient_under_its_cap_and_the_newest_readings(
    influx_store: InfluxV1Store,
) -> None:
    from alerts.history import RecentReadings

    history = RecentReadings(influx_store, days=8, max_patients=10, max_per_patient=20)
    now = T0 + timedelta(hours=2)
    sent = []
    for batch_no in range(10):
        batch = [
            StoredReading("P-flood", bp(f"f-{batch_no}-{n}", T0 + timedelta(seconds=60 * batch_no + n)))
            for n in range(7)
        ]
        sent.extend(batch)
        series = history.for_batch(batch, now).series["P-flood"]["blood_pressure"]
        assert len(series) <= 20
        # The batch itself is always there: the rules judge it against what came before.
        assert {s.reading.msg_id for s in batch} <= {r.msg_id for r in series.readings}
    newest = sorted(sent, key=lambda s: s.reading.measured_at)[-len(series) :]
    assert [r.msg_id for r in series.readings] == [s.reading.msg_id for s in newest]
    assert len(series) >= 18  # trimmed to nine tenths of the cap, not emptied


def test_a_point_seen_half_written_is_skipped_and_a_corrupt_one_still_refused(
    influx_store: InfluxV1Store, influx_settings: InfluxSettings
) -> None:
    # What a query running alongside another gateway's write can see: some fields of a point, not all.
    influx_store.write([StoredReading("P-1", bp("whole", T0))])
    at_ns = int((T0 + timedelta(minutes=1)).timestamp()) * 10**9
    half = f"blood_pressure,device_id=bp-000123,patient_id=P-1 systolic=150i {at_ns}"
    response = requests.post(
        f"{influx_settings.url}/write",
        params={"db": influx_settings.database, "precision": "ns"},
        data=half.encode(),
        timeout=10,
    )
    assert response.status_code == 204, response.text

    found = influx_store.recent(["P-1"], T0 - timedelta(days=1))
    assert [r.reading.msg_id for r in found["P-1"]] == ["whole"]
    page = influx_store.readings("P-1", T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert [r.reading.msg_id for r in page] == ["whole"]

    # Every field there, but not a reading: that is not a write in progress, and stays an error.
    corrupt = (
        f'blood_pressure,device_id=bp-000123,patient_id=P-1 msg_id="bad",systolic=20i,diastolic=10i '
        f"{at_ns + 10**9}"
    )
    requests.post(
        f"{influx_settings.url}/write",
        params={"db": influx_settings.database, "precision": "ns"},
        data=corrupt.encode(),
        timeout=10,
    ).raise_for_status()
    with pytest.raises(UndecodableRow, match="bad"):
        influx_store.recent(["P-1"], T0 - timedelta(days=1))
