"""`critical_by_value`: which readings the gateway stores and decides ahead of their batch.

Held to the rules themselves: a reading is critical by value exactly when `evaluate`, given that
reading alone, decides a critical breach. Edge values from DOMAIN.md ("Clinical defaults").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.model import DecisionKind, ReadingView, Severity
from alerts.rules import critical_by_value, evaluate
from alerts.thresholds import Thresholds, with_overrides
from gateway.timeseries.base import StoredReading
from gateway.wire import BloodPressureReading, GlucoseReading

NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
DEFAULTS = Thresholds()


def _bp(systolic: int, diastolic: int, pulse: int = 70) -> BloodPressureReading:
    return BloodPressureReading.model_validate(
        {
            "v": 1,
            "msg_id": "bp-1",
            "device_id": "bp-000001",
            "type": "blood_pressure",
            "measured_at": NOW.isoformat(),
            "systolic": systolic,
            "diastolic": diastolic,
            "pulse": pulse,
        }
    )


def _glucose(value: float | None, unit: str = "mmol/L", censored: str | None = None) -> GlucoseReading:
    payload: dict[str, Any] = {
        "v": 1,
        "msg_id": "gl-1",
        "device_id": "gl-000001",
        "type": "glucose",
        "measured_at": NOW.isoformat(),
        "unit": unit,
    }
    if value is not None:
        payload["value"] = value
    if censored is not None:
        payload["censored"] = censored
    return GlucoseReading.model_validate(payload)


def _alone_is_critical(thresholds: Thresholds, reading: BloodPressureReading | GlucoseReading) -> bool:
    """What the rules decide for the reading alone (no history): a critical breach or not."""
    view = ReadingView.from_stored(StoredReading("patient-1", reading, ()))
    decisions = evaluate(thresholds, "patient-1", [view], view, NOW, late_after=timedelta(hours=1))
    return any(d.kind is DecisionKind.BREACH and d.severity is Severity.CRITICAL for d in decisions)


@pytest.mark.parametrize(
    ("reading", "critical"),
    [
        (_bp(180, 100), True),  # severe systolic: at or above 180
        (_bp(179, 119), False),
        (_bp(150, 120), True),  # severe diastolic: at or above 120
        (_bp(205, 125), True),
        (_bp(120, 80), False),
        (_bp(85, 50), False),  # low: urgent, not critical
        (_bp(120, 80, pulse=30), False),  # pulse far out of range: urgent, not critical
        (_glucose(2.9), True),  # level 2 hypoglycaemia: below 3.0
        (_glucose(3.0), False),
        (_glucose(3.5), False),  # level 1 only: urgent
        (_glucose(33.3), True),  # severe hyperglycaemia: at or above 33.3
        (_glucose(33.2), False),
        (_glucose(20.0), False),  # marked only: urgent
        (_glucose(53, "mg/dL"), True),  # 2.94 mmol/L
        (_glucose(600, "mg/dL"), True),  # 33.3 mmol/L
        (_glucose(None, censored="LO"), True),
        (_glucose(None, censored="HI"), True),
    ],
)
def test_critical_by_value_at_the_edges(
    reading: BloodPressureReading | GlucoseReading, critical: bool
) -> None:
    assert critical_by_value(DEFAULTS, reading) is critical
    assert _alone_is_critical(DEFAULTS, reading) is critical


def test_a_clinic_with_other_thresholds_moves_the_edge() -> None:
    stricter = with_overrides(DEFAULTS, {"severe_sbp": 170, "hypo_l2_mmol": 3.2})
    assert critical_by_value(stricter, _bp(170, 90))
    assert not critical_by_value(DEFAULTS, _bp(170, 90))
    assert critical_by_value(stricter, _glucose(3.1))
    assert not critical_by_value(DEFAULTS, _glucose(3.1))


@settings(max_examples=400, deadline=None)
@given(
    systolic=st.integers(60, 260),
    diastolic=st.integers(30, 160),
    pulse=st.integers(30, 200),
    severe_sbp=st.integers(161, 220),  # above the default high_sbp (160)
    severe_dbp=st.integers(101, 140),  # above the default high_dbp (100)
)
def test_blood_pressure_matches_the_rules(
    systolic: int, diastolic: int, pulse: int, severe_sbp: int, severe_dbp: int
) -> None:
    if diastolic >= systolic:
        return  # not a reading the wire contract accepts as it stands
    thresholds = with_overrides(DEFAULTS, {"severe_sbp": severe_sbp, "severe_dbp": severe_dbp})
    reading = _bp(systolic, diastolic, pulse)
    assert critical_by_value(thresholds, reading) is _alone_is_critical(thresholds, reading)


@settings(max_examples=400, deadline=None)
@given(
    value=st.floats(0.5, 40.0, allow_nan=False).map(lambda v: round(v, 1)),
    hypo_l2=st.floats(2.0, 3.8).map(lambda v: round(v, 1)),
    hyper_severe=st.floats(25.0, 35.0).map(lambda v: round(v, 1)),
)
def test_glucose_matches_the_rules(value: float, hypo_l2: float, hyper_severe: float) -> None:
    thresholds = with_overrides(DEFAULTS, {"hypo_l2_mmol": hypo_l2, "hyper_severe_mmol": hyper_severe})
    reading = _glucose(value)
    assert critical_by_value(thresholds, reading) is _alone_is_critical(thresholds, reading)
