"""`rpmgw bench` on a tiny configuration, so that it cannot rot: it runs and writes every field.

No timed assertions: the figures depend on the machine; only their presence and the counts are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_bench_runs_a_tiny_configuration_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "rpmgw",
            "bench",
            "--readings",
            "2000",
            "--devices",
            "40",
            "--parts",
            "limits,drain,scaleout",
            "--dir",
            str(tmp_path / "bench"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["bare_subscriber"]["messages"] == 2000
    assert results["influx_write"]["points"] == 1980
    for key, processes in (("drain_1", 1), ("drain_2", 2)):
        drain = results[key]
        assert drain["processes"] == processes
        assert drain["valid"] == 1980
        assert drain["stored_distinct"] == 1980
        assert (drain["lost"], drain["doubled"], drain["alerts_doubled"]) == (0, 0, 0)
        assert drain["quarantined"] == 20
        for field in ("readings_per_s", "cpu_percent", "peak_rss_mib", "drain_s"):
            assert drain[field] > 0, field
    assert set(results["ratios"]) >= {
        "drain_1_vs_bare_subscriber",
        "drain_1_vs_influx_write",
        "two_vs_one_gateway",
    }
    assert "| backlog drain, 1 gateway |" in run.stdout
