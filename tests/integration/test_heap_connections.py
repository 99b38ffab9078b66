"""`heap.Keeper` and dropped connections.

The Keeper freezes, between batches, whatever is alive: a reference cycle alive then and dropped later
would never be collected. The gateway's long-lived objects that are dropped later are its connections,
replaced after PostgreSQL or InfluxDB drops them (a restart, a network cut). This replays such drops in a
child process (a freeze changes the collector of the whole process), freezing between uses as the Keeper
does, then unfreezes and counts what the collector finds unreachable: nothing. A control in the same
child shows that the count does find a cycle frozen alive and dropped afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.timeseries.influx_v1 import InfluxV1Store
from rpmgw.settings import InfluxSettings

pytestmark = pytest.mark.postgres

_CHILD = """
import gc, json, os
from urllib.parse import urlsplit
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from gateway.errors import StorageError
from gateway.timeseries.influx_v1 import InfluxV1Store
from rpmgw import heap
from rpmgw.db import IDLE_PING_SECONDS, make_engine
from rpmgw.settings import InfluxSettings
from tests.faults.tcpproxy import CuttableProxy

def frozen_garbage():
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    return found

engine = make_engine(os.environ["PG_URL"], idle_ping_seconds=IDLE_PING_SECONDS)  # as the gateway's
admin = make_engine(os.environ["PG_URL"])
influx = urlsplit(os.environ["INFLUX_URL"])
proxy = CuttableProxy(influx.hostname, influx.port)
store = InfluxV1Store(InfluxSettings(
    url=f"http://127.0.0.1:{proxy.port}", version="1", database=os.environ["INFLUX_DB"], timeout=5.0
))

def use_pg():
    with engine.begin() as connection:
        return connection.execute(text("SELECT pg_backend_pid()")).scalar_one()

def use_influx():
    for _ in range(3):  # the first request after a cut may still find the dead pooled connection
        try:
            return store.summary()
        except StorageError:
            pass
    return store.summary()

use_pg(); use_influx()
heap.settle()
keeper = heap.Keeper(interval=0.0)

class Box: pass
box = Box(); box.self = box
keeper.tidy()
del box  # the control: frozen alive, then dropped
control = frozen_garbage()

pg_failures = influx_failures = 0
for _ in range(5):
    pid = use_pg()
    with admin.begin() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    try:
        use_pg()
    except DBAPIError:
        pg_failures += 1
    use_pg()  # a new connection
    proxy.cut()
    try:
        store.summary()
    except StorageError:
        influx_failures += 1
    proxy.restore()
    use_influx()
    keeper.tidy()  # as between batches
store.close(); engine.dispose(); admin.dispose(); proxy.close()
print(json.dumps({"control": control, "leaked": frozen_garbage(),
                  "pg_failures": pg_failures, "influx_failures": influx_failures}))
"""


def test_connections_replaced_after_a_drop_leave_nothing_frozen_for_good(
    postgres_url: str, influx_store: InfluxV1Store, influx_settings: InfluxSettings
) -> None:
    env = {
        **os.environ,
        "PG_URL": postgres_url,
        "INFLUX_URL": influx_settings.url,
        "INFLUX_DB": influx_settings.database,
    }
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, cwd=root, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["control"] >= 1, "the count must find a cycle frozen alive and dropped later"
    # Each drop was felt: the next use failed and a new connection took its place.
    assert (probe["pg_failures"], probe["influx_failures"]) == (5, 5)
    assert probe["leaked"] == 0, probe
