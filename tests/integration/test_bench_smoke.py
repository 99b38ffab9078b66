"""`rpmgw bench` on a tiny configuration, so that it cannot rot: it runs and writes every field.

No timed assertions: the figures depend on the machine; only their presence and the counts are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rpmgw.bench.harness import backlog_workload

pytestmark = pytest.mark.slow


def _bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run `rpmgw bench ARGS` under `tmp_path`; (the JSON it wrote, its stdout)."""
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "rpmgw", "bench", *args, "--dir", str(tmp_path / "bench"), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text()), run.stdout


def _json(payload: bytes) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(payload)
    except json.JSONDecodeError:
        return None  # one of the malformed ones
    return document


def test_bench_runs_a_tiny_configuration_and_writes_the_json(tmp_path: Path) -> None:
    results, stdout = _bench(
        tmp_path,
        "--readings",
        "2000",
        "--devices",
        "40",
        "--critical",
        "0.01",
        "--parts",
        "limits,drain,scaleout",
    )
    assert results["bare_subscriber"]["messages"] == 2000
    assert (results["bare_gateway_client"]["client"], results["bare_gateway_client"]["messages"]) == (
        "gateway",
        2000,
    )
    assert results["influx_write"]["points"] == 1980
    # The backlog's severe readings (1 % here) open one alert per patient that has any: the
    # doubled-alert count is asked of those, with two gateways opening them side by side.
    readings = [_json(payload) for _, payload in backlog_workload(2000, 40, 0.01, 0.01).messages]
    severe = {r["device_id"] for r in readings if r is not None and r["systolic"] >= 180}
    assert severe
    for key, processes in (("drain_1", 1), ("drain_2", 2)):
        drain = results[key]
        assert drain["processes"] == processes
        assert drain["valid"] == 1980
        assert drain["stored_distinct"] == 1980
        assert (drain["lost"], drain["doubled"], drain["alerts_doubled"]) == (0, 0, 0)
        # Nobody with a severe reading is left without a severe-BP alert (others may add mean alerts).
        assert drain["alerts_by_rule"]["severe_bp"] == len(severe)
        assert drain["alerts"] == sum(drain["alerts_by_rule"].values())
        assert drain["quarantined"] == 20
        for field in ("readings_per_s", "cpu_percent", "peak_rss_mib", "drain_s"):
            assert drain[field] > 0, field
        # From the gateways' batch-size histograms: each gateway took at least one batch.
        assert processes <= drain["batches"] <= 2000 and drain["mean_batch"] >= 1
    assert set(results["ratios"]) >= {
        "drain_1_vs_bare_subscriber",
        "drain_1_vs_bare_gateway_client",
        "drain_1_vs_influx_write",
        "two_vs_one_gateway",
    }
    assert "| backlog drain, 1 gateway |" in stdout
    assert "| limit: the gateway's MQTT client (ack only) |" in stdout


def test_bench_ramp_runs_two_short_steps_and_loses_nothing(tmp_path: Path) -> None:
    results, stdout = _bench(
        tmp_path,
        "--devices",
        "40",
        "--parts",
        "ramp",
        "--ramp-start",
        "100",
        "--ramp-step",
        "100",
        "--ramp-max",
        "200",
        "--ramp-step-seconds",
        "2",
    )
    assert results["config"]["ramp_rates"] == [100, 200]
    ramp = results["ramp"]
    steps = ramp["steps"]
    # Whether a step is sustained depends on the machine; the ramp stops at the first that is not.
    assert [step["target_rate"] for step in steps] == [100, 200][: len(steps)]
    assert all(step["sustained"] for step in steps[:-1])
    if steps[-1]["sustained"]:
        assert (len(steps), ramp["stopped_by"]) == (2, "ramp_max")
        assert ramp["highest_sustained_rate"] == 200
    else:
        assert ramp["stopped_by"] == steps[-1]["limited_by"] in ("gateway", "publisher")
    for step in steps:
        assert step["publish_rate"] > 0
        assert step["stored_rate"] >= 0
        for field in ("lag_end", "lag_end_s", "lag_trend_per_s", "gateway_cpu_percent", "bench_cpu_percent"):
            assert field in step, field
    assert ramp["published"] == ramp["acknowledged"] > 0
    assert ramp["stored_distinct"] == ramp["stored_metric"] == ramp["acknowledged"]
    assert (ramp["lost"], ramp["doubled"], ramp["quarantined"]) == (0, 0, 0)
    assert "| live ingest, 1 gateway: highest sustained rate |" in stdout
    assert "| ramp step 100/s |" in stdout


def test_bench_alert_latency_times_probes_under_a_small_load_with_two_gateways(tmp_path: Path) -> None:
    results, stdout = _bench(
        tmp_path,
        "--devices",
        "40",
        "--parts",
        "alerts",
        "--background-rate",
        "100",
        "--alert-probes",
        "3",
        "--alert-gateways",
        "2",
    )
    latency = results["alert_latency"]
    assert (latency["background_rate"], latency["gateways"]) == (100, 2)
    assert latency["background_published"] > 0
    # Whether a probe comes within the timeout depends on the machine: timed or counted missing.
    assert latency["alert_row"]["n"] + latency["alert_missing"] == 3
    assert latency["sms_request"]["n"] + latency["sms_missing"] == 3
    assert latency["alert_row"]["n"] > 0, "no probe reached its alert row at 100 readings/s"
    for timed in ("alert_row", "sms_request"):
        if latency[timed]["n"]:
            assert 0 < latency[timed]["p50_ms"] <= latency[timed]["p95_ms"] <= latency[timed]["p99_ms"]
    assert len(latency["gateway_cpu_percent"]) == 2 and all(c > 0 for c in latency["gateway_cpu_percent"])
    assert (
        isinstance(latency["decided_ahead"], int) and latency["decided_ahead"] >= 0
    )  # scraped from /metrics
    assert "| alert latency to alert row |" in stdout
    assert "decided while queued behind the batch in hand" in stdout
