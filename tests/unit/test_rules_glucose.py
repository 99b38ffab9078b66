"""Glucose rules (DOMAIN.md, "Clinical defaults"): hypo/hyperglycaemia levels in mmol/L and mg/dL, LO and HI."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from alerts.model import Decision, DecisionKind, Family, ReadingView, RuleId
from alerts.rules import evaluate
from alerts.thresholds import Thresholds, with_overrides
from gateway.timeseries.base import StoredReading
from gateway.wire import GlucoseReading, quality_flags

NOW = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)
LATE_AFTER = timedelta(minutes=60)
PATIENT = "patient-1"
DEFAULTS = Thresholds()
_ids = itertools.count()


def glucose(
    value: float | None,
    unit: Literal["mmol/L", "mg/dL"] = "mmol/L",
    *,
    censored: Literal["LO", "HI"] | None = None,
    minutes_ago: float = 0,
    flags: Sequence[str] = (),
) -> ReadingView:
    """A reading built the gateway's way: wire model -> stored reading (with quality flags) -> view."""
    payload: dict[str, Any] = {
        "v": 1,
        "msg_id": f"gl-{next(_ids)}",
        "device_id": "gl-000042",
        "type": "glucose",
        "measured_at": (NOW - timedelta(minutes=minutes_ago)).isoformat(),
        "unit": unit,
        "flags": list(flags),
    }
    if value is not None:
        payload["value"] = value
    if censored is not None:
        payload["censored"] = censored
    reading = GlucoseReading.model_validate(payload)
    return ReadingView.from_stored(StoredReading(PATIENT, reading, quality_flags(reading)))


def run(reading: ReadingView, thresholds: Thresholds = DEFAULTS) -> list[Decision]:
    return evaluate(thresholds, PATIENT, [reading], reading, NOW, late_after=LATE_AFTER)


def family(decisions: Sequence[Decision], wanted: Family) -> str | None:
    found = [f"{d.kind} {d.rule}" for d in decisions if d.family is wanted]
    assert len(found) <= 1, f"more than one decision for {wanted}: {found}"
    return found[0] if found else None


# --- levels, at and around each threshold ---------------------------------------------------------

LEVELS = [
    # id, value, unit, censored, hypo decision, hyper decision
    ("3.9 mmol/L normal", 3.9, "mmol/L", None, "clear hypo_l1", "clear hyper_marked"),
    ("3.89 mmol/L level 1", 3.89, "mmol/L", None, "breach hypo_l1", "clear hyper_marked"),
    ("3.0 mmol/L level 1", 3.0, "mmol/L", None, "breach hypo_l1", "clear hyper_marked"),
    ("2.99 mmol/L level 2", 2.99, "mmol/L", None, "breach hypo_l2", "clear hyper_marked"),
    ("1.2 mmol/L level 2", 1.2, "mmol/L", None, "breach hypo_l2", "clear hyper_marked"),
    ("LO level 2", None, "mmol/L", "LO", "breach hypo_l2", "clear hyper_marked"),
    ("13.9 mmol/L normal", 13.9, "mmol/L", None, "clear hypo_l1", "clear hyper_marked"),
    ("13.91 mmol/L marked", 13.91, "mmol/L", None, "clear hypo_l1", "breach hyper_marked"),
    ("33.29 mmol/L marked", 33.29, "mmol/L", None, "clear hypo_l1", "breach hyper_marked"),
    ("33.3 mmol/L severe", 33.3, "mmol/L", None, "clear hypo_l1", "breach hyper_severe"),
    ("HI severe", None, "mmol/L", "HI", "clear hypo_l1", "breach hyper_severe"),
    # 1 mmol/L = 18.016 mg/dL, unrounded: the cut-offs in mg/dL are 54.05, 70.26, 250.4 and 599.9.
    ("53.9 mg/dL = 2.992 level 2", 53.9, "mg/dL", None, "breach hypo_l2", "clear hyper_marked"),
    ("54 mg/dL = 2.997 level 2", 54, "mg/dL", None, "breach hypo_l2", "clear hyper_marked"),
    ("54.1 mg/dL = 3.003 level 1", 54.1, "mg/dL", None, "breach hypo_l1", "clear hyper_marked"),
    ("70 mg/dL = 3.885 level 1", 70, "mg/dL", None, "breach hypo_l1", "clear hyper_marked"),
    ("70.3 mg/dL = 3.902 normal", 70.3, "mg/dL", None, "clear hypo_l1", "clear hyper_marked"),
    ("250 mg/dL = 13.877 normal", 250, "mg/dL", None, "clear hypo_l1", "clear hyper_marked"),
    ("250.5 mg/dL = 13.904 marked", 250.5, "mg/dL", None, "clear hypo_l1", "breach hyper_marked"),
    ("599.9 mg/dL = 33.298 marked", 599.9, "mg/dL", None, "clear hypo_l1", "breach hyper_marked"),
    ("600 mg/dL = 33.304 severe", 600, "mg/dL", None, "clear hypo_l1", "breach hyper_severe"),
    ("HI in mg/dL", None, "mg/dL", "HI", "clear hypo_l1", "breach hyper_severe"),
]


@pytest.mark.parametrize(
    ("value", "unit", "censored", "hypo", "hyper"),
    [row[1:] for row in LEVELS],
    ids=[row[0] for row in LEVELS],
)
def test_levels(
    value: float | None,
    unit: Literal["mmol/L", "mg/dL"],
    censored: Literal["LO", "HI"] | None,
    hypo: str,
    hyper: str,
) -> None:
    decisions = run(glucose(value, unit, censored=censored))
    assert family(decisions, Family.HYPO) == hypo
    assert family(decisions, Family.HYPER) == hyper


# --- quality-flagged readings ---------------------------------------------------------------------

SUSPECT = [
    # id, value, censored, flags, expected decisions
    ("control solution at 2.5", 2.5, None, ["control_solution"], {"remeasure hypo_l2"}),
    ("low battery at 3.5", 3.5, None, ["low_battery"], {"remeasure hypo_l1"}),
    ("HI with a flag", None, "HI", ["low_battery"], {"remeasure hyper_severe"}),
    ("normal with a flag: nothing at all", 6.0, None, ["low_battery"], set()),
]


@pytest.mark.parametrize(
    ("value", "censored", "flags", "expected"), [row[1:] for row in SUSPECT], ids=[row[0] for row in SUSPECT]
)
def test_quality_flagged_reading(
    value: float | None, censored: Literal["LO", "HI"] | None, flags: list[str], expected: set[str]
) -> None:
    decisions = run(glucose(value, censored=censored, flags=flags))
    assert {f"{d.kind} {d.rule}" for d in decisions} == expected
    assert all(d.kind is DecisionKind.REMEASURE for d in decisions)


def test_overrides_move_the_hypo_levels() -> None:
    thresholds = with_overrides(DEFAULTS, {"hypo_l1_mmol": 4.5, "hypo_l2_mmol": 3.5})
    assert family(run(glucose(4.2), thresholds), Family.HYPO) == "breach hypo_l1"
    assert family(run(glucose(3.2), thresholds), Family.HYPO) == "breach hypo_l2"
    assert family(run(glucose(4.2)), Family.HYPO) == "clear hypo_l1"


# --- what a decision carries ----------------------------------------------------------------------

TEXTS = [
    # id, value, unit, censored, rule, value_text
    ("one decimal", 2.9, "mmol/L", None, RuleId.HYPO_L2, "2.9 mmol/L"),
    ("rounded to one decimal", 15.04, "mmol/L", None, RuleId.HYPER_MARKED, "15.0 mmol/L"),
    ("LO", None, "mmol/L", "LO", RuleId.HYPO_L2, "LO"),
    ("HI", None, "mg/dL", "HI", RuleId.HYPER_SEVERE, "HI"),
    ("54 mg/dL is not shown as 3.0", 54, "mg/dL", None, RuleId.HYPO_L2, "2.997 mmol/L"),
    ("70 mg/dL is not shown as 3.9", 70, "mg/dL", None, RuleId.HYPO_L1, "3.89 mmol/L"),
    ("600 mg/dL", 600, "mg/dL", None, RuleId.HYPER_SEVERE, "33.3 mmol/L"),
]


@pytest.mark.parametrize(
    ("value", "unit", "censored", "rule", "text"), [row[1:] for row in TEXTS], ids=[row[0] for row in TEXTS]
)
def test_value_text(
    value: float | None,
    unit: Literal["mmol/L", "mg/dL"],
    censored: Literal["LO", "HI"] | None,
    rule: RuleId,
    text: str,
) -> None:
    [decision] = [d for d in run(glucose(value, unit, censored=censored)) if d.rule is rule]
    assert decision.kind is DecisionKind.BREACH
    assert decision.value_text == text


WORSE = [
    # id, rule, worse (value, censored), better (value, censored)
    ("hypo: lower", RuleId.HYPO_L2, (2.0, None), (2.9, None)),
    ("hypo: LO below any value", RuleId.HYPO_L2, (None, "LO"), (1.1, None)),
    ("hyper: higher", RuleId.HYPER_MARKED, (20.0, None), (15.0, None)),
    ("hyper: HI above any value", RuleId.HYPER_SEVERE, (None, "HI"), (33.3, None)),
]


@pytest.mark.parametrize(
    ("rule", "worse", "better"), [row[1:] for row in WORSE], ids=[row[0] for row in WORSE]
)
def test_worst_key_orders_readings(
    rule: RuleId,
    worse: tuple[float | None, Literal["LO", "HI"] | None],
    better: tuple[float | None, Literal["LO", "HI"] | None],
) -> None:
    def key(value: float | None, censored: Literal["LO", "HI"] | None) -> float:
        [decision] = [d for d in run(glucose(value, censored=censored)) if d.family is rule_family]
        return decision.worst_key

    rule_family = Family.HYPO if rule in (RuleId.HYPO_L1, RuleId.HYPO_L2) else Family.HYPER
    assert key(*worse) > key(*better)


def test_late_glucose_reading() -> None:
    reading = glucose(2.5, minutes_ago=90)
    decisions = run(reading)
    assert decisions
    assert all(d.late for d in decisions)
    assert not any(d.late for d in run(glucose(2.5, minutes_ago=30)))
