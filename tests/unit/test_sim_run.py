"""The runner's pure parts and the `rpmgw sim` command line: configuration errors are caught up front."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from device_sim.cli import sim
from device_sim.devices import build_fleet
from device_sim.faults import FaultKind
from device_sim.profiles import Condition
from device_sim.run import Backoff, SimConfig, Traffic, plan_connections

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def test_one_connection_per_device_by_default() -> None:
    devices = build_fleet(patients=8, seed=1).devices
    plans = plan_connections(devices, None)
    assert [client_id for client_id, _ in plans] == [f"sim-{d.device_id}" for d in devices]
    assert all(len(members) == 1 for _, members in plans)


def test_devices_share_a_limited_number_of_connections() -> None:
    devices = build_fleet(patients=400, seed=1).devices
    plans = plan_connections(devices, 50)
    assert len(plans) == 50
    assert len({client_id for client_id, _ in plans}) == 50
    members = [d.device_id for _, group in plans for d in group]
    assert sorted(members) == sorted(d.device_id for d in devices)
    sizes = {len(group) for _, group in plans}
    assert max(sizes) - min(sizes) <= 1


def test_a_limit_above_the_device_count_gives_one_connection_each() -> None:
    devices = build_fleet(patients=3, seed=1).devices
    assert len(plan_connections(devices, 1_000)) == len(devices)


def test_backoff_doubles_with_jitter_up_to_the_maximum_and_resets() -> None:
    backoff = Backoff(minimum=0.5, maximum=8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_rate_spreads_over_devices_and_interval_is_per_device() -> None:
    paced = Traffic(SimConfig(patients=10, interval=5.0), start=NOW)
    devices = len(paced.fleet.devices)
    assert paced.due(devices) == pytest.approx(5.0)
    loaded = Traffic(SimConfig(patients=10, rate=200.0), start=NOW)
    assert loaded.due(200) == pytest.approx(1.0)


def test_slots_go_round_robin_over_the_devices() -> None:
    traffic = Traffic(SimConfig(patients=10), start=NOW)
    count = len(traffic.fleet.devices)
    assert [traffic.device(slot).device_id for slot in range(count)] == [
        d.device_id for d in traffic.fleet.devices
    ]
    assert traffic.device(count) is traffic.device(0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patients": 0}, "patients"),
        ({"faults": {FaultKind.SKEW: 0.7, FaultKind.MALFORMED: 0.7}}, "add up to at most 1"),
        ({"mix": {Condition.T1D: 0.0}}, "positive sum"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"start": datetime.now(UTC) + timedelta(days=1)}, "in the future"),
        ({"start": datetime(2026, 1, 1)}, "timezone"),
        ({"speed": 0}, "speed"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_config_is_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SimConfig.model_validate(options)


def test_config_is_frozen() -> None:
    config = SimConfig()
    with pytest.raises(ValidationError):
        config.patients = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--faults", "garbled=0.1"], "unknown fault 'garbled'; known faults: offline, malformed"),
        (["--faults", "skew=2"], "between 0 and 1"),
        (["--faults", "skew"], "must look like NAME=PROBABILITY"),
        (["--mix", "t3d=1"], "unknown condition 't3d'"),
        (["--start", "yesterday"], "neither -7d/-12h/-30m nor an ISO 8601 time"),
        (["--start", "2026-11-20T08:00:00"], "has no time zone"),
        (["--patients", "0"], "0 is not in the range x>=1"),
        (["--rate", "0"], "x>0"),
    ],
)
def test_cli_reports_bad_options_clearly(args: list[str], message: str) -> None:
    result = CliRunner().invoke(sim, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_help_names_every_option() -> None:
    result = CliRunner().invoke(sim, ["--help"])
    assert result.exit_code == 0
    for option in (
        "--patients",
        "--seed",
        "--mix",
        "--danger",
        "--start",
        "--speed",
        "--interval",
        "--rate",
        "--count",
        "--duration",
        "--faults",
        "--connections",
        "--manifest",
        "--enrol",
        "--drain-timeout",
        "--no-progress",
    ):
        assert option in result.output
