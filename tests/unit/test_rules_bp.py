"""Blood-pressure rules (DOMAIN.md, "Clinical defaults"), at and around every threshold."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.model import Confirmation, Decision, DecisionKind, Family, ReadingView, RuleId
from alerts.rules import evaluate
from alerts.thresholds import Thresholds, with_overrides
from gateway.timeseries.base import StoredReading
from gateway.wire import BloodPressureReading, quality_flags

NOW = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)
LATE_AFTER = timedelta(minutes=60)
PATIENT = "patient-1"
DEFAULTS = Thresholds()
_ids = itertools.count()


def bp(
    minutes_ago: float,
    sbp: int,
    dbp: int,
    pulse: int | None = 70,
    *,
    flags: Sequence[str] = (),
    msg_id: str | None = None,
) -> ReadingView:
    """A reading built the gateway's way: wire model -> stored reading (with quality flags) -> view."""
    payload: dict[str, Any] = {
        "v": 1,
        "msg_id": msg_id or f"bp-{next(_ids)}",
        "device_id": "bp-000123",
        "type": "blood_pressure",
        "measured_at": (NOW - timedelta(minutes=minutes_ago)).isoformat(),
        "systolic": sbp,
        "diastolic": dbp,
        "flags": list(flags),
    }
    if pulse is not None:
        payload["pulse"] = pulse
    reading = BloodPressureReading.model_validate(payload)
    return ReadingView.from_stored(StoredReading(PATIENT, reading, quality_flags(reading)))


def run(
    reading: ReadingView,
    history: Sequence[ReadingView] = (),
    thresholds: Thresholds = DEFAULTS,
    now: datetime = NOW,
) -> list[Decision]:
    return evaluate(thresholds, PATIENT, [*history, reading], reading, now, late_after=LATE_AFTER)


def summary(decisions: Sequence[Decision]) -> set[str]:
    """'kind rule' per decision, plus ' confirmation' when there is one."""
    return {f"{d.kind} {d.rule}" + (f" {d.confirmation}" if d.confirmation else "") for d in decisions}


def family(decisions: Sequence[Decision], wanted: Family) -> str | None:
    """The one decision of a family as 'kind rule[ confirmation]', or None."""
    found = [d for d in decisions if d.family is wanted]
    assert len(found) <= 1, f"more than one decision for {wanted}: {found}"
    return next(iter(summary(found)), None)


# --- one reading alone: severe, low and pulse thresholds ------------------------------------------

SINGLE = [
    # id, sbp, dbp, pulse, expected decisions
    ("normal", 120, 80, 70, {"clear high_bp", "clear low_bp", "clear pulse_abnormal"}),
    ("sbp 179: high, not yet 2 of 3", 179, 80, 70, {"clear low_bp", "clear pulse_abnormal"}),
    ("sbp 180 severe", 180, 80, 70, {"breach severe_bp pending", "clear low_bp", "clear pulse_abnormal"}),
    ("dbp 119: high, not yet 2 of 3", 150, 119, 70, {"clear low_bp", "clear pulse_abnormal"}),
    ("dbp 120 severe", 150, 120, 70, {"breach severe_bp pending", "clear low_bp", "clear pulse_abnormal"}),
    ("159/99 normal", 159, 99, 70, {"clear high_bp", "clear low_bp", "clear pulse_abnormal"}),
    ("sbp 89 low", 89, 70, 70, {"clear high_bp", "breach low_bp", "clear pulse_abnormal"}),
    ("sbp 90 not low", 90, 70, 70, {"clear high_bp", "clear low_bp", "clear pulse_abnormal"}),
    ("dbp 59 low", 120, 59, 70, {"clear high_bp", "breach low_bp", "clear pulse_abnormal"}),
    ("dbp 60 not low", 120, 60, 70, {"clear high_bp", "clear low_bp", "clear pulse_abnormal"}),
    ("pulse 39 extreme", 120, 80, 39, {"clear high_bp", "clear low_bp", "breach pulse_extreme"}),
    ("pulse 40 abnormal", 120, 80, 40, {"clear high_bp", "clear low_bp", "breach pulse_abnormal"}),
    ("pulse 49 abnormal", 120, 80, 49, {"clear high_bp", "clear low_bp", "breach pulse_abnormal"}),
    ("pulse 50 normal", 120, 80, 50, {"clear high_bp", "clear low_bp", "clear pulse_abnormal"}),
    ("pulse 100 normal", 120, 80, 100, {"clear high_bp", "clear low_bp", "clear pulse_abnormal"}),
    ("pulse 101 abnormal", 120, 80, 101, {"clear high_bp", "clear low_bp", "breach pulse_abnormal"}),
    ("pulse 110 abnormal", 120, 80, 110, {"clear high_bp", "clear low_bp", "breach pulse_abnormal"}),
    ("pulse 111 extreme", 120, 80, 111, {"clear high_bp", "clear low_bp", "breach pulse_extreme"}),
    ("no pulse: no pulse decision", 120, 80, None, {"clear high_bp", "clear low_bp"}),
    ("every family at once", 185, 125, 120, {"breach severe_bp pending", "clear low_bp", "breach pulse_extreme"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sbp", "dbp", "pulse", "expected"), [row[1:] for row in SINGLE], ids=[row[0] for row in SINGLE]
)
def test_single_reading(sbp: int, dbp: int, pulse: int | None, expected: set[str]) -> None:
    assert summary(run(bp(0, sbp, dbp, pulse))) == expected


# --- high BP: 2 of the last 3 readings within 24 h --------------------------------------------------

DAY = 24 * 60
HIGH = [
    # id, priors as (minutes before, sbp, dbp), current (sbp, dbp), expected bp_high decision
    ("1 of 3", [(120, 130, 80), (60, 130, 80)], (165, 90), None),
    ("2 of 3", [(120, 165, 90), (60, 130, 80)], (160, 80), "breach high_bp"),
    ("2 of 2", [(60, 160, 80)], (160, 80), "breach high_bp"),
    ("dbp 100 twice", [(60, 140, 100)], (140, 100), "breach high_bp"),
    ("prior dbp 99 is not high", [(60, 140, 99)], (140, 100), None),
    ("prior sbp 159 is not high", [(60, 159, 90)], (160, 90), None),
    ("high reading 4th from last", [(180 - 1, 170, 90), (120, 130, 80), (60, 130, 80)], (165, 90), None),
    ("prior 24 h + 1 min ago", [(DAY + 1, 170, 90)], (165, 90), None),
    ("prior exactly 24 h ago", [(DAY, 170, 90)], (165, 90), "breach high_bp"),
    ("a severe prior counts as high", [(60, 185, 100)], (165, 90), "breach high_bp"),
    ("normal after two highs clears", [(120, 165, 90), (60, 170, 95)], (130, 80), "clear high_bp"),
    ("normal after nothing clears", [], (130, 80), "clear high_bp"),
]


@pytest.mark.parametrize(
    ("priors", "current", "expected"), [row[1:] for row in HIGH], ids=[row[0] for row in HIGH]
)
def test_high_bp_two_of_three(
    priors: list[tuple[int, int, int]], current: tuple[int, int], expected: str | None
) -> None:
    history = [bp(minutes, sbp, dbp) for minutes, sbp, dbp in priors]
    decisions = run(bp(0, *current), history)
    assert family(decisions, Family.BP_HIGH) == expected


def test_high_bp_ignores_a_quality_flagged_prior() -> None:
    history = [bp(60, 170, 95, flags=["movement"])]
    assert family(run(bp(0, 165, 90), history), Family.BP_HIGH) is None
    assert family(run(bp(0, 165, 90), [bp(60, 170, 95)]), Family.BP_HIGH) == "breach high_bp"


def test_high_bp_detail_says_how_many() -> None:
    [decision] = [d for d in run(bp(0, 165, 90), [bp(60, 170, 95)]) if d.rule is RuleId.HIGH_BP]
    assert decision.detail == "2 of the last 2 readings within 24 h at or above 160/100 mmHg"


# --- severe BP: confirm by repeat -----------------------------------------------------------------

CONFIRM = [
    # id, earlier readings as (minutes before, sbp, dbp), current (sbp, dbp), expected bp_high decision
    ("first severe", [], (184, 112), "breach severe_bp pending"),
    ("severe repeat after 4 min", [(4, 184, 112)], (182, 110), "breach severe_bp pending"),
    ("severe repeat after 5 min", [(5, 184, 112)], (182, 110), "breach severe_bp confirmed"),
    ("severe repeat after 15 min", [(15, 184, 112)], (182, 110), "breach severe_bp confirmed"),
    ("severe repeat after 16 min", [(16, 184, 112)], (182, 110), "breach severe_bp pending"),
    ("severe by dbp confirms severe by sbp", [(10, 184, 100)], (150, 121), "breach severe_bp confirmed"),
    ("normal repeat after 4 min", [(4, 184, 112)], (140, 85), "clear high_bp"),
    ("normal repeat after 5 min", [(5, 184, 112)], (140, 85), "clear high_bp not_confirmed"),
    ("normal repeat after 15 min", [(15, 184, 112)], (140, 85), "clear high_bp not_confirmed"),
    ("normal repeat after 16 min", [(16, 184, 112)], (140, 85), "clear high_bp"),
    ("high repeat after 10 min", [(10, 184, 112)], (165, 95), "breach high_bp not_confirmed"),
    ("high repeat after 4 min", [(4, 184, 112)], (165, 95), "breach high_bp"),
    ("normal after a confirmed repeat", [(20, 184, 112), (10, 182, 110)], (140, 85), "clear high_bp"),
    ("normal 10 min after an early repeat", [(12, 184, 112), (10, 186, 114)], (140, 85), "clear high_bp not_confirmed"),
    ("normal 2 min after a confirming repeat", [(14, 184, 112), (2, 186, 114)], (140, 85), "clear high_bp"),
    ("severe 6 min after the first, 2 after an early repeat", [(6, 184, 112), (2, 186, 114)], (188, 115), "breach severe_bp confirmed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("earlier", "current", "expected"), [row[1:] for row in CONFIRM], ids=[row[0] for row in CONFIRM]
)
def test_confirm_by_repeat(
    earlier: list[tuple[int, int, int]], current: tuple[int, int], expected: str
) -> None:
    history = [bp(minutes, sbp, dbp) for minutes, sbp, dbp in earlier]
    assert family(run(bp(0, *current), history), Family.BP_HIGH) == expected


def test_a_quality_flagged_severe_reading_is_no_first_reading_to_confirm() -> None:
    history = [bp(10, 184, 112, flags=["cuff_loose"])]
    assert family(run(bp(0, 182, 110), history), Family.BP_HIGH) == "breach severe_bp pending"
    assert family(run(bp(0, 140, 85), history), Family.BP_HIGH) == "clear high_bp"


def test_a_quality_flagged_repeat_confirms_nothing() -> None:
    history = [bp(10, 184, 112)]
    decisions = run(bp(0, 182, 110, flags=["movement"]), history)
    assert summary(decisions) == {"remeasure severe_bp"}


# --- quality-flagged readings: re-measure, never breach ---------------------------------------------

SUSPECT = [
    # id, (sbp, dbp, pulse), flags, history, expected decisions
    ("severe with movement", (185, 100, 70), ["movement"], [], {"remeasure severe_bp"}),
    ("normal with a flag: nothing at all", (120, 80, 70), ["irregular_pulse"], [], set()),
    ("low with a flag", (85, 55, 70), ["position_error"], [], {"remeasure low_bp"}),
    ("fast pulse with a flag", (120, 80, 120), ["irregular_pulse"], [], {"remeasure pulse_extreme"}),
    ("pulse pressure 155 (gateway flag)", (200, 45, 70), [], [], {"remeasure severe_bp", "remeasure low_bp"}),
    ("would be 2 of 3 high", (165, 90, 70), ["low_battery"], [(60, 170, 95)], {"remeasure high_bp"}),
    ("high, but 1 of 3 even if counted", (165, 90, 70), ["low_battery"], [], set()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "flags", "priors", "expected"), [row[1:] for row in SUSPECT], ids=[row[0] for row in SUSPECT]
)
def test_quality_flagged_reading(
    values: tuple[int, int, int], flags: list[str], priors: list[tuple[int, int, int]], expected: set[str]
) -> None:
    history = [bp(minutes, sbp, dbp) for minutes, sbp, dbp in priors]
    decisions = run(bp(0, *values, flags=flags), history)
    assert summary(decisions) == expected


def test_remeasure_names_the_flags() -> None:
    [decision] = run(bp(0, 185, 100, flags=["movement", "cuff_loose"]))
    assert decision.kind is DecisionKind.REMEASURE
    assert decision.detail == "quality flags: movement, cuff_loose"


# --- per-patient overrides ------------------------------------------------------------------------

OVERRIDES = [
    # id, overrides, priors, current (sbp, dbp), family, expected
    ("default: 95/70 is not low", {}, [], (95, 70), Family.LOW_BP, "clear low_bp"),
    ("elderly low_sbp 100: 95/70 is low", {"low_sbp": 100}, [], (95, 70), Family.LOW_BP, "breach low_bp"),
    ("default: 145/90 twice is not high", {}, [(60, 145, 90)], (145, 90), Family.BP_HIGH, "clear high_bp"),
    ("pregnancy high_sbp 140: 145/90 twice is high", {"high_sbp": 140}, [(60, 145, 90)], (145, 90), Family.BP_HIGH, "breach high_bp"),
    ("high_required 1: one high reading is enough", {"high_required": 1}, [], (165, 90), Family.BP_HIGH, "breach high_bp"),
    ("severe_sbp 170", {"severe_sbp": 170}, [], (172, 90), Family.BP_HIGH, "breach severe_bp pending"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "priors", "current", "which", "expected"),
    [row[1:] for row in OVERRIDES],
    ids=[row[0] for row in OVERRIDES],
)
def test_per_patient_overrides(
    overrides: dict[str, int],
    priors: list[tuple[int, int, int]],
    current: tuple[int, int],
    which: Family,
    expected: str,
) -> None:
    thresholds = with_overrides(DEFAULTS, overrides)
    history = [bp(minutes, sbp, dbp) for minutes, sbp, dbp in priors]
    assert family(run(bp(0, *current), history, thresholds), which) == expected


def test_pulse_override_moves_the_routine_limit() -> None:
    thresholds = with_overrides(DEFAULTS, {"pulse_routine_high": 90})
    assert family(run(bp(0, 120, 80, 95), thresholds=thresholds), Family.PULSE) == "breach pulse_abnormal"
    assert family(run(bp(0, 120, 80, 95)), Family.PULSE) == "clear pulse_abnormal"


# --- what a decision carries ----------------------------------------------------------------------

TEXTS = [
    # id, (sbp, dbp, pulse), rule, value_text
    ("severe", (184, 112, 88), RuleId.SEVERE_BP, "184/112 mmHg"),
    ("low", (85, 55, 70), RuleId.LOW_BP, "85/55 mmHg"),
    ("pulse", (120, 80, 120), RuleId.PULSE_EXTREME, "120/80 mmHg, pulse 120"),
    ("pulse clear", (120, 80, 70), RuleId.PULSE_ABNORMAL, "120/80 mmHg, pulse 70"),
]


@pytest.mark.parametrize(
    ("values", "rule", "text"), [row[1:] for row in TEXTS], ids=[row[0] for row in TEXTS]
)
def test_value_text(values: tuple[int, int, int], rule: RuleId, text: str) -> None:
    [decision] = [d for d in run(bp(0, *values)) if d.rule is rule]
    assert decision.value_text == text


def test_decision_identifies_the_reading() -> None:
    reading = bp(3, 184, 112, 88)
    decisions = evaluate(DEFAULTS, PATIENT, [reading], reading, NOW, late_after=LATE_AFTER)
    assert {(d.patient_id, d.msg_id, d.measured_at) for d in decisions} == {
        (PATIENT, reading.msg_id, NOW - timedelta(minutes=3))
    }


WORSE = [
    # id, rule, worse reading (sbp, dbp, pulse), better reading
    ("severe: higher systolic", RuleId.SEVERE_BP, (190, 100, 70), (184, 112, 70)),
    ("severe: diastolic 125 beats systolic 184", RuleId.SEVERE_BP, (170, 125, 70), (184, 112, 70)),
    ("low: lower systolic", RuleId.LOW_BP, (70, 50, 70), (85, 55, 70)),
    ("low: diastolic 40", RuleId.LOW_BP, (95, 40, 70), (85, 55, 70)),
    ("pulse: slower", RuleId.PULSE_EXTREME, (120, 80, 30), (120, 80, 38)),
    ("pulse: faster", RuleId.PULSE_EXTREME, (120, 80, 140), (120, 80, 115)),
    (
        "pulse: 30 (40 % below 50) worse than 130 (30 % above 100)",
        RuleId.PULSE_EXTREME,
        (120, 80, 30),
        (120, 80, 130),
    ),
]


@pytest.mark.parametrize(
    ("rule", "worse", "better"), [row[1:] for row in WORSE], ids=[row[0] for row in WORSE]
)
def test_worst_key_orders_readings(
    rule: RuleId, worse: tuple[int, int, int], better: tuple[int, int, int]
) -> None:
    def key(values: tuple[int, int, int]) -> float:
        [decision] = [d for d in run(bp(0, *values)) if d.rule is rule]
        return decision.worst_key

    assert key(worse) > key(better)


def test_high_and_severe_keys_share_one_scale() -> None:
    # One alert keeps its worst value across an upgrade from high_bp to severe_bp.
    [high] = [d for d in run(bp(0, 170, 95), [bp(60, 170, 95)]) if d.family is Family.BP_HIGH]
    [severe] = [d for d in run(bp(0, 181, 95)) if d.family is Family.BP_HIGH]
    assert severe.worst_key > high.worst_key


LATE = [
    # id, minutes between measurement and evaluation, late
    ("just measured", 0, False),
    ("exactly late_after", 60, False),
    ("a minute past late_after", 61, True),
    ("buffered for a day", DAY, True),
]


@pytest.mark.parametrize(("age", "late"), [row[1:] for row in LATE], ids=[row[0] for row in LATE])
def test_late(age: int, late: bool) -> None:
    decisions = run(bp(age, 184, 112))
    assert decisions
    assert all(d.late is late for d in decisions)


# --- invariants over any reading ------------------------------------------------------------------

bp_readings = st.builds(
    lambda minutes, sbp, gap, pulse, flagged: ReadingView(
        msg_id=f"h-{minutes}-{sbp}-{gap}",
        device_id="bp-000123",
        type="blood_pressure",
        measured_at=NOW - timedelta(minutes=minutes),
        systolic=sbp,
        diastolic=max(30, sbp - gap),
        pulse=pulse,
        quality=("movement",) if flagged else (),
    ),
    st.integers(0, 8 * DAY),
    st.integers(61, 280),
    st.integers(10, 150),
    st.none() | st.integers(25, 250),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(history=st.lists(bp_readings, max_size=20), reading=bp_readings)
def test_one_decision_per_family_and_suspect_readings_never_breach(
    history: list[ReadingView], reading: ReadingView
) -> None:
    decisions = run(reading, history)
    families = [d.family for d in decisions]
    assert len(families) == len(set(families))
    kinds = {d.kind for d in decisions}
    if reading.suspect:
        assert kinds <= {DecisionKind.REMEASURE}
    else:
        assert DecisionKind.REMEASURE not in kinds
    for d in decisions:
        assert d.confirmation is None or d.family is Family.BP_HIGH
        assert d.confirmation is not Confirmation.NO_REPEAT  # the worker's, not the rules'
