"""Live ingest ramp: fresh readings published at increasing rates until the gateway falls behind.

One real gateway runs against the bench's broker and InfluxDB. Publishers (`BackgroundLoad`, the
bench's enrolled devices, fresh `measured_at`) hold each step's rate for a while; the gateway's
/metrics and the publishers' PUBACK counts give, per step, the rate the broker accepted, the rate the
gateway stored and the lag (acknowledged by the broker but not yet processed by the gateway). The
highest step the gateway sustained is the answer; the first step it does not sustain ends the ramp.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rpmgw.bench.errors import BenchError
from rpmgw.bench.harness import BenchEnv, RpmgwProcess, proc_cpu_seconds, wait_for
from rpmgw.bench.latency import BackgroundLoad
from rpmgw.bench.scenarios import integrity, start_gateway

Figures = dict[str, object]
SAMPLE_INTERVAL = 0.5  # /metrics scrapes per step: cheap (the drain scrapes 4 a second)
# The first quarter of a step is not measured: the lag in steady state grows with the rate (a batch
# waits up to RPMGW_GATEWAY__BATCH_MAX_WAIT and takes longer to process), and reaching it is not falling behind.
SETTLE_SHARE = 0.25
DRAIN_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class RampOptions:
    """The steps of the ramp and what counts as sustained."""

    start: int = 500
    step: str = "x1.5"  # "xF": multiply by F each step; "N": add N readings/s each step
    max_rate: int = 20_000
    step_seconds: float = 10.0
    publishers: int = 1
    lag_bound_s: float = 1.0  # a sustained step ends with less lag than this many seconds of its rate
    min_stored_share: float = 0.95  # ... and stores at least this share of what was published

    def rates(self) -> list[int]:
        """The step rates, readings/s, from `start` up to `max_rate`."""
        return ramp_rates(self.start, self.step, self.max_rate)


def ramp_rates(start: int, step: str, maximum: int) -> list[int]:
    """Rates from `start` to `maximum`: "x1.5" multiplies (rounded to two significant digits), "1000" adds."""
    if start < 1 or maximum < start:
        raise ValueError("need 1 <= start <= maximum")
    text = step.strip().lower()
    factor = float(text[1:]) if text.startswith("x") else None
    increment = None if factor is not None else int(text)
    if (factor is not None and factor <= 1) or (increment is not None and increment < 1):
        raise ValueError(f"step {step!r} does not increase the rate")
    rates = [start]
    while True:
        previous = rates[-1]
        following = _two_digits(previous * factor) if factor is not None else previous + (increment or 0)
        following = max(following, previous + 1)
        if following > maximum:
            return rates
        rates.append(following)


def _two_digits(value: float) -> int:
    scale = 10 ** max(0, math.floor(math.log10(value)) - 1)
    return int(round(value / scale) * scale)


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    acknowledged: int
    published: int
    received: float
    stored: float
    queue_depth: float
    gateway_cpu: float
    bench_cpu: float


class _Probe:
    """Reads the publishers' counters and the gateway's /metrics at one moment."""

    def __init__(self, gateway: RpmgwProcess, loads: Sequence[BackgroundLoad]) -> None:
        self._gateway = gateway
        self._loads = loads

    def sample(self) -> _Sample:
        metrics = self._gateway.metrics()
        return _Sample(
            at=time.monotonic(),
            acknowledged=sum(load.acknowledged for load in self._loads),
            published=sum(load.published for load in self._loads),
            received=metrics.get("rpmgw_readings_received_total", 0.0),
            stored=metrics.get("rpmgw_readings_stored_total", 0.0),
            queue_depth=metrics.get("rpmgw_queue_depth", 0.0),
            gateway_cpu=proc_cpu_seconds(self._gateway.pid),
            bench_cpu=proc_cpu_seconds(os.getpid()),
        )


def live_ramp(env: BenchEnv, options: RampOptions) -> Figures:
    """Run the steps against one gateway; per-step figures, the highest sustained rate, lost/doubled."""
    database = f"bench_{uuid.uuid4().hex[:10]}"
    quarantined_before = env.quarantined()
    gateway = start_gateway(env, database, "ramp-gateway")
    spread = max(1, env.devices // options.publishers)
    loads = [BackgroundLoad(env, 0, first_index=n * spread).start() for n in range(options.publishers)]
    probe = _Probe(gateway, loads)
    steps: list[Step] = []
    try:
        for rate in options.rates():
            steps.append(_step(probe, gateway, loads, rate, options))
            if not steps[-1].sustained:
                break
        for load in loads:
            load.stop()
        drain_started = time.monotonic()
        acknowledged = sum(load.acknowledged for load in loads)
        wait_for(
            lambda: probe.sample().received >= acknowledged, DRAIN_TIMEOUT, "the ramp's lag to drain", 0.25
        )
        drain_s = time.monotonic() - drain_started
        stored_metric = probe.sample().stored
    finally:
        for load in loads:
            load.stop()
        gateway.stop()
    sustained = [step for step in steps if step.sustained]
    return {
        "step_seconds": options.step_seconds,
        "publishers": options.publishers,
        "lag_bound_s": options.lag_bound_s,
        "min_stored_share": options.min_stored_share,
        "highest_sustained_rate": max((step.target_rate for step in sustained), default=0),
        "highest_sustained_stored_rate": max((step.stored_rate for step in sustained), default=0),
        "stopped_by": steps[-1].limited_by if steps and not steps[-1].sustained else "ramp_max",
        "steps": [asdict(step) for step in steps],
        "published": sum(load.published for load in loads),
        "acknowledged": acknowledged,
        "final_drain_s": round(drain_s, 2),
        "stored_metric": int(stored_metric),
        **integrity(env, database, expected=acknowledged, quarantined_before=quarantined_before),
    }


@dataclass(frozen=True, slots=True)
class Step:
    """One step's figures (rates in readings/s, lags in readings)."""

    target_rate: int
    seconds: float  # measured (the step minus its settling time)
    # Rates: least-squares slopes over the step's samples (two a second).
    publish_rate: int  # acknowledged by the broker (PUBACK)
    stored_rate: int  # rpmgw_readings_stored_total
    processed_rate: int  # rpmgw_readings_received_total (stored + quarantined)
    lag_start: int  # acknowledged by the broker, not yet processed by the gateway
    lag_end: int
    lag_end_s: float  # lag_end in seconds of the achieved publish rate
    lag_max: int
    lag_trend_per_s: float  # slope of the lag: publish_rate - processed_rate
    queue_depth_end: int  # of those, in the gateway's own queue (the rest waits on the broker)
    unacknowledged_end: int  # published, PUBACK not yet received
    gateway_cpu_percent: float
    bench_cpu_percent: float  # the bench process: the publishers and the /metrics scrapes
    sustained: bool
    limited_by: str  # "" when sustained, else "gateway" or "publisher"


def _step(
    probe: _Probe, gateway: RpmgwProcess, loads: Sequence[BackgroundLoad], rate: int, options: RampOptions
) -> Step:
    """Hold `rate` for `options.step_seconds`; measure all but the first SETTLE_SHARE of it."""
    for load in loads:
        load.set_rate(rate / len(loads))
    began = time.monotonic()
    time.sleep(SETTLE_SHARE * options.step_seconds)
    first = probe.sample()
    samples = [first]
    deadline = began + options.step_seconds
    while len(samples) < 2 or time.monotonic() < deadline:
        time.sleep(max(0.05, min(SAMPLE_INTERVAL, deadline - time.monotonic())))
        gateway.check_alive()
        samples.append(probe.sample())
    last = samples[-1]
    elapsed = last.at - first.at
    # Rates are slopes over all samples: the gateway's counters move a batch at a time, so two end
    # points alone would be off by up to a batch (at 1,000/s and 7.5 s, several per cent).
    times = [sample.at for sample in samples]
    achieved = _slope(times, [sample.acknowledged for sample in samples])
    stored_rate = _slope(times, [sample.stored for sample in samples])
    lags = [sample.acknowledged - sample.received for sample in samples]
    gateway_ok = (
        lags[-1] <= options.lag_bound_s * max(achieved, 1.0)
        and stored_rate >= options.min_stored_share * achieved
    )
    publisher_ok = achieved >= options.min_stored_share * rate
    return Step(
        target_rate=rate,
        seconds=round(elapsed, 2),
        publish_rate=round(achieved),
        stored_rate=round(stored_rate),
        processed_rate=round(_slope(times, [sample.received for sample in samples])),
        lag_start=int(lags[0]),
        lag_end=int(lags[-1]),
        lag_end_s=round(lags[-1] / max(achieved, 1.0), 2),
        lag_max=int(max(lags)),
        lag_trend_per_s=round(_slope(times, lags), 1),
        queue_depth_end=int(last.queue_depth),
        unacknowledged_end=last.published - last.acknowledged,
        gateway_cpu_percent=round(100 * (last.gateway_cpu - first.gateway_cpu) / elapsed, 1),
        bench_cpu_percent=round(100 * (last.bench_cpu - first.bench_cpu) / elapsed, 1),
        sustained=gateway_ok and publisher_ok,
        limited_by="" if gateway_ok and publisher_ok else ("publisher" if gateway_ok else "gateway"),
    )


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        raise BenchError("samples without elapsed time")
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
