"""Rules over a window of readings (7-day mean, repeated hypoglycaemia), the history's quirks
(duplicates, any order, late buffered readings with newer ones), and the worker's time rules."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from alerts import rules as rules_module
from alerts.model import Confirmation, Decision, DecisionKind, Family, ReadingView
from alerts.rules import (
    Series,
    _evaluate,
    _repeat_of_pending,
    _severe_confirmation,
    _Window,
    confirmation_expired,
    device_silent,
    evaluate,
    evaluate_series,
    no_data_due,
)
from alerts.thresholds import Thresholds
from gateway.timeseries.base import ReadingType

NOW = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)
LATE_AFTER = timedelta(minutes=60)
PATIENT = "patient-1"
DEFAULTS = Thresholds()
HOUR = 60
DAY = 24 * HOUR
_ids = itertools.count()


def bp(minutes_ago: float, sbp: int, dbp: int, *, flagged: bool = False) -> ReadingView:
    return ReadingView(
        msg_id=f"bp-{next(_ids)}",
        device_id="bp-000123",
        type="blood_pressure",
        measured_at=NOW - timedelta(minutes=minutes_ago),
        systolic=sbp,
        diastolic=dbp,
        pulse=70,
        quality=("movement",) if flagged else (),
    )


def gl(minutes_ago: float, mmol: float | None, *, lo: bool = False, flagged: bool = False) -> ReadingView:
    return ReadingView(
        msg_id=f"gl-{next(_ids)}",
        device_id="gl-000042",
        type="glucose",
        measured_at=NOW - timedelta(minutes=minutes_ago),
        glucose_mmol=None if lo else mmol,
        censored="LO" if lo else None,
        quality=("control_solution",) if flagged else (),
    )


def run(
    reading: ReadingView, history: Sequence[ReadingView], thresholds: Thresholds = DEFAULTS
) -> list[Decision]:
    return evaluate(thresholds, PATIENT, history, reading, NOW, late_after=LATE_AFTER)


def family(decisions: Sequence[Decision], wanted: Family) -> str | None:
    found = [f"{d.kind} {d.rule}" for d in decisions if d.family is wanted]
    assert len(found) <= 1, f"more than one decision for {wanted}: {found}"
    return found[0] if found else None


def twice_daily(
    count: int, sbp: int | Sequence[int], dbp: int | Sequence[int], *, start: int = 12 * HOUR
) -> list[ReadingView]:
    """`count` readings 12 h apart, the newest `start` minutes ago; values cycle through the given ones."""
    sbps = itertools.cycle([sbp] if isinstance(sbp, int) else sbp)
    dbps = itertools.cycle([dbp] if isinstance(dbp, int) else dbp)
    return [bp(start + i * 12 * HOUR, next(sbps), next(dbps)) for i in range(count)]


# --- uncontrolled BP: 7-day mean >= 135/85 with >= 12 readings ------------------------------------

UNCONTROLLED = [
    # id, earlier readings, current (sbp, dbp), expected uncontrolled_bp decision
    ("11 readings: too few", twice_daily(10, 150, 95), (150, 95), None),
    ("12 readings: mean 150/95", twice_daily(11, 150, 95), (150, 95), "breach uncontrolled_bp"),
    ("mean exactly 135/85", [*twice_daily(10, [130, 140], [80, 90]), bp(30, 135, 85)], (135, 85), "breach uncontrolled_bp"),
    ("mean 134.58/84.58", twice_daily(11, [130, 140], [80, 90]), (135, 85), "clear uncontrolled_bp"),
    ("mean 134/84", twice_daily(11, 134, 84), (134, 84), "clear uncontrolled_bp"),
    ("mean systolic 135 alone", twice_daily(11, 135, 75), (135, 75), "breach uncontrolled_bp"),
    ("mean diastolic 85 alone", twice_daily(11, 120, 85), (120, 85), "breach uncontrolled_bp"),
    ("a normal reading while the mean is high", twice_daily(11, 150, 95), (120, 75), "breach uncontrolled_bp"),
    ("a 12th reading 7 days + 1 min ago: too few", [*twice_daily(10, 150, 95), bp(7 * DAY + 1, 150, 95)], (150, 95), None),
    ("a 12th reading exactly 7 days ago", [*twice_daily(10, 150, 95), bp(7 * DAY, 150, 95)], (150, 95), "breach uncontrolled_bp"),
    ("a 12th reading flagged: too few", [*twice_daily(10, 150, 95), bp(30, 150, 95, flagged=True)], (150, 95), None),
    ("old high readings beyond 7 days ignored", [*twice_daily(11, 130, 80), *twice_daily(6, 170, 100, start=8 * DAY)], (130, 80), "clear uncontrolled_bp"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("earlier", "current", "expected"),
    [row[1:] for row in UNCONTROLLED],
    ids=[row[0] for row in UNCONTROLLED],
)
def test_uncontrolled_bp(earlier: list[ReadingView], current: tuple[int, int], expected: str | None) -> None:
    assert family(run(bp(0, *current), earlier), Family.UNCONTROLLED_BP) == expected


def test_uncontrolled_bp_value_text() -> None:
    history = [*twice_daily(7, 150, 90), *twice_daily(6, 133, 85, start=30)]
    [decision] = [d for d in run(bp(0, 140, 88), history) if d.family is Family.UNCONTROLLED_BP]
    # mean (7*150 + 6*133 + 140) / 14 = 142.0, (7*90 + 6*85 + 88) / 14 = 87.7: floored, never rounded up
    assert decision.value_text == "mean 142/87 mmHg over 14 readings"


def test_a_flagged_reading_gives_no_uncontrolled_decision() -> None:
    decisions = run(bp(0, 150, 95, flagged=True), twice_daily(12, 150, 95))
    assert family(decisions, Family.UNCONTROLLED_BP) is None


# --- repeated hypoglycaemia: >= 2 readings < 3.9 in 7 days ----------------------------------------

REPEATED = [
    # id, earlier readings, current, expected repeated_hypo decision
    ("one hypo: clears", [], gl(0, 3.5), "clear repeated_hypo"),
    ("second hypo within 7 days", [gl(3 * DAY, 3.5)], gl(0, 3.8), "breach repeated_hypo"),
    ("second hypo, LO", [gl(3 * DAY, 3.5)], gl(0, None, lo=True), "breach repeated_hypo"),
    ("earlier LO counts", [gl(3 * DAY, None, lo=True)], gl(0, 3.0), "breach repeated_hypo"),
    ("earlier 3.9 is no hypo", [gl(3 * DAY, 3.9)], gl(0, 3.5), "clear repeated_hypo"),
    ("earlier hypo exactly 7 days ago", [gl(7 * DAY, 3.5)], gl(0, 3.5), "breach repeated_hypo"),
    ("earlier hypo 7 days + 1 min ago", [gl(7 * DAY + 1, 3.5)], gl(0, 3.5), "clear repeated_hypo"),
    ("earlier hypo flagged", [gl(DAY, 2.5, flagged=True)], gl(0, 3.5), "clear repeated_hypo"),
    ("normal after two hypos: episode goes on", [gl(2 * DAY, 3.5), gl(DAY, 3.5)], gl(0, 6.0), None),
    ("normal after one hypo: clears", [gl(DAY, 3.5)], gl(0, 6.0), "clear repeated_hypo"),
    ("current flagged, would be second", [gl(DAY, 3.5)], gl(0, 3.5, flagged=True), "remeasure repeated_hypo"),
    ("current flagged, first", [], gl(0, 3.5, flagged=True), None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("earlier", "current", "expected"), [row[1:] for row in REPEATED], ids=[row[0] for row in REPEATED]
)
def test_repeated_hypo(earlier: list[ReadingView], current: ReadingView, expected: str | None) -> None:
    assert family(run(current, [*earlier, current]), Family.REPEATED_HYPO) == expected


def test_repeated_hypo_value_text() -> None:
    history = [gl(3 * DAY, 3.5), gl(2 * DAY, 2.8)]
    [decision] = [d for d in run(gl(0, 3.1), history) if d.family is Family.REPEATED_HYPO]
    assert decision.value_text == "3 readings < 3.9 mmol/L in 7 days"
    assert decision.worst_key == 3


# --- the history as it comes: duplicates, any order, current included or not ----------------------


def test_a_duplicated_reading_counts_once_in_high_bp() -> None:
    high, normal = bp(120, 170, 95), bp(60, 130, 80)
    # Counted twice, the normal reading would push the high one out of the last three.
    history = [high, normal, normal, replace(normal)]
    assert family(run(bp(0, 165, 90), history), Family.BP_HIGH) == "breach high_bp"


def test_duplicated_readings_count_once_in_the_mean() -> None:
    six = twice_daily(6, 150, 95)
    assert family(run(bp(0, 150, 95), [*six, *six]), Family.UNCONTROLLED_BP) is None


def test_the_current_reading_in_history_counts_once() -> None:
    current = gl(0, 3.5)
    history = [current, current, replace(current)]
    assert family(run(current, history), Family.REPEATED_HYPO) == "clear repeated_hypo"


def test_the_current_reading_is_judged_as_given_not_as_stored() -> None:
    # The same msg_id in history without its quality flag must not make the current reading count twice.
    current = gl(0, 3.5, flagged=True)
    stored_copy = replace(current, quality=())
    assert (
        family(run(current, [gl(DAY, 3.5), stored_copy]), Family.REPEATED_HYPO) == "remeasure repeated_hypo"
    )
    assert family(run(current, [stored_copy]), Family.REPEATED_HYPO) is None


SCENARIOS = [
    # id, history, current
    ("high bp 2 of 3", [bp(120, 170, 95), bp(60, 130, 80)], bp(0, 165, 90)),
    ("severe repeat", [bp(10, 184, 112), bp(30, 130, 80)], bp(0, 182, 110)),
    ("uncontrolled", twice_daily(11, 150, 95), bp(0, 150, 95)),
    ("repeated hypo", [gl(3 * DAY, 3.5), gl(DAY, 8.0)], gl(0, 3.0)),
]


@pytest.mark.parametrize(
    ("history", "current"), [row[1:] for row in SCENARIOS], ids=[row[0] for row in SCENARIOS]
)
def test_history_order_and_membership_do_not_matter(history: list[ReadingView], current: ReadingView) -> None:
    expected = run(current, [*history, current])
    assert expected
    assert run(current, history) == expected
    assert run(current, [current, *reversed(history)]) == expected
    assert run(current, [*history[1::2], current, *history[::2]]) == expected


def test_readings_of_the_other_type_are_ignored() -> None:
    current = gl(0, 3.5)
    noise = [bp(DAY, 120, 80), bp(2 * DAY, 185, 125)]
    assert run(current, [gl(DAY, 3.0), *noise]) == run(current, [gl(DAY, 3.0)])


# --- a late buffered reading arriving after newer ones -------------------------------------------


def test_late_reading_ignores_newer_readings_in_windows() -> None:
    late = bp(2 * DAY, 165, 90)
    newer = [bp(DAY, 170, 95), bp(DAY - 30, 172, 96)]
    decisions = run(late, [*newer, late])
    assert family(decisions, Family.BP_HIGH) is None  # 1 of 1 before it; the newer ones do not count
    assert all(d.late for d in decisions)
    # With an older high reading it is 2 of 3 in its own past, whatever came later.
    decisions = run(late, [bp(2 * DAY + 60, 170, 95), *newer, late])
    assert family(decisions, Family.BP_HIGH) == "breach high_bp"


def test_late_reading_does_not_clear_what_newer_readings_say() -> None:
    late = bp(2 * DAY, 120, 80)
    assert run(late, [late, bp(DAY, 185, 125)]) == []
    # A newer flagged reading tells nothing about the present state: the late one may clear.
    decisions = run(late, [late, bp(DAY, 185, 125, flagged=True)])
    assert {d.kind for d in decisions} == {DecisionKind.CLEAR}


def test_late_breach_is_still_reported() -> None:
    late = gl(2 * DAY, 2.5)
    decisions = run(late, [late, gl(DAY, 6.0)])
    assert [(d.kind, d.rule, d.late) for d in decisions] == [(DecisionKind.BREACH, "hypo_l2", True)]


def test_late_repeated_hypo_counts_only_its_past() -> None:
    late = gl(3 * DAY, 3.5)
    newer_hypo = gl(DAY, 3.0)
    assert family(run(late, [late, newer_hypo]), Family.REPEATED_HYPO) is None  # 1 hypo; clearing suppressed
    assert (
        family(run(late, [gl(4 * DAY, 3.2), late, newer_hypo]), Family.REPEATED_HYPO)
        == "breach repeated_hypo"
    )


def test_late_normal_repeat_after_severe_gives_no_clear_when_newer_readings_exist() -> None:
    severe, repeat, newer = bp(3 * HOUR + 10, 184, 112), bp(3 * HOUR, 130, 80), bp(HOUR, 182, 110)
    assert family(run(repeat, [severe, repeat]), Family.BP_HIGH) == "clear high_bp"
    assert family(run(repeat, [severe, repeat, newer]), Family.BP_HIGH) is None


# --- time rules -----------------------------------------------------------------------------------

ENROLLED = NOW - timedelta(days=60)

NO_DATA = [
    # id, type, last reading (minutes ago) or None, enrolled (minutes ago), expected
    ("bp: 3 days - 1 min", "blood_pressure", 3 * DAY - 1, 60 * DAY, "none"),
    ("bp: 3 days", "blood_pressure", 3 * DAY, 60 * DAY, "reminder"),
    ("bp: 6 days - 1 min", "blood_pressure", 6 * DAY - 1, 60 * DAY, "reminder"),
    ("bp: 6 days", "blood_pressure", 6 * DAY, 60 * DAY, "alert"),
    ("glucose: 2 days - 1 min", "glucose", 2 * DAY - 1, 60 * DAY, "none"),
    ("glucose: 2 days", "glucose", 2 * DAY, 60 * DAY, "reminder"),
    ("glucose: 4 days", "glucose", 4 * DAY, 60 * DAY, "alert"),
    ("never measured, enrolled 2 days ago", "blood_pressure", None, 2 * DAY, "none"),
    ("never measured, enrolled 3 days ago", "blood_pressure", None, 3 * DAY, "reminder"),
    ("never measured, enrolled 10 days ago", "blood_pressure", None, 10 * DAY, "alert"),
    ("last reading before this enrolment", "glucose", 30 * DAY, DAY, "none"),
]


@pytest.mark.parametrize(
    ("type_", "last", "enrolled", "expected"), [row[1:] for row in NO_DATA], ids=[row[0] for row in NO_DATA]
)
def test_no_data_due(type_: ReadingType, last: int | None, enrolled: int, expected: str) -> None:
    last_at = None if last is None else NOW - timedelta(minutes=last)
    assert no_data_due(DEFAULTS, type_, last_at, NOW - timedelta(minutes=enrolled), NOW) == expected


DEVICE_SILENT = [
    # id, last seen (minutes ago) or None, enrolled (minutes ago), silent
    ("seen 7 days - 1 min ago", 7 * DAY - 1, 60 * DAY, False),
    ("seen 7 days ago", 7 * DAY, 60 * DAY, True),
    ("never seen, enrolled 6 days ago", None, 6 * DAY, False),
    ("never seen, enrolled 8 days ago", None, 8 * DAY, True),
    ("seen only before this enrolment", 30 * DAY, 2 * DAY, False),
]


@pytest.mark.parametrize(
    ("last", "enrolled", "silent"), [row[1:] for row in DEVICE_SILENT], ids=[row[0] for row in DEVICE_SILENT]
)
def test_device_silent(last: int | None, enrolled: int, silent: bool) -> None:
    last_at = None if last is None else NOW - timedelta(minutes=last)
    assert device_silent(DEFAULTS, last_at, NOW - timedelta(minutes=enrolled), NOW) is silent


CONFIRMATION_EXPIRY = [
    # id, minutes since the severe reading, expired
    ("10 min", 10, False),
    ("exactly 15 min", 15, False),
    ("15 min 1 s", 15 + 1 / 60, True),
]


@pytest.mark.parametrize(
    ("minutes", "expired"),
    [row[1:] for row in CONFIRMATION_EXPIRY],
    ids=[row[0] for row in CONFIRMATION_EXPIRY],
)
def test_confirmation_expired(minutes: float, expired: bool) -> None:
    assert confirmation_expired(NOW - timedelta(minutes=minutes), NOW, DEFAULTS) is expired


# --- the window's bookkeeping against its definition ------------------------------------------------
# The gateway keeps each patient's history as a sorted `Series` per type that batches are added to
# (binary search, list inserts, window sums by slicing); these properties hold it to the plain
# definition on histories with duplicates, ties, suspect readings, later readings and both types.

_MINUTES = st.sampled_from([0, 5, 10, 30, 60, 24 * HOUR, 24 * HOUR + 1, 3 * DAY, 7 * DAY, 7 * DAY + 1])


@st.composite
def _views(draw: st.DrawFn) -> ReadingView:
    kind: ReadingType = draw(st.sampled_from(["blood_pressure", "glucose"]))
    return ReadingView(
        msg_id=f"m{draw(st.integers(0, 12))}",  # few ids: duplicates of one msg_id are common
        device_id="dev",
        type=kind,
        measured_at=NOW - timedelta(minutes=draw(_MINUTES)),
        systolic=draw(st.integers(80, 200)) if kind == "blood_pressure" else None,
        diastolic=draw(st.integers(40, 130)) if kind == "blood_pressure" else None,
        pulse=70 if kind == "blood_pressure" else None,
        glucose_mmol=5.5 if kind == "glucose" else None,
        quality=("movement",) if draw(st.booleans()) and draw(st.booleans()) else (),
    )


def _current(history: Sequence[ReadingView]) -> list[ReadingView]:
    """Each msg_id's last copy (what the gateway's history cache holds), then the plain filter."""
    return list({r.msg_id: r for r in history}.values())


def _plain_prior(history: Sequence[ReadingView], reading: ReadingView) -> list[ReadingView]:
    unique = {r.msg_id: r for r in history if r.type == reading.type and not r.suspect}
    unique.pop(reading.msg_id, None)
    return sorted(
        (r for r in unique.values() if r.measured_at <= reading.measured_at),
        key=lambda r: (r.measured_at, r.msg_id),
    )


def _added_one_by_one(history: Sequence[ReadingView], reading_type: str) -> Series:
    series = Series(reading_type)
    series.severe_keys(180, 120)  # asked before anything is added: kept up to date from then on
    for r in history:
        series.put(r)
    return series


@given(history=st.lists(_views(), max_size=25), reading=_views(), span_minutes=_MINUTES)
@settings(max_examples=400, deadline=None)
def test_the_window_holds_exactly_the_prior_readings_its_definition_names(
    history: list[ReadingView], reading: ReadingView, span_minutes: int
) -> None:
    current = _current(history)
    prior = _plain_prior(current, reading)
    span = timedelta(minutes=span_minutes)
    within = [r for r in prior if r.measured_at >= reading.measured_at - span]
    unique = {r.msg_id: r for r in current if r.type == reading.type and not r.suspect}
    unique.pop(reading.msg_id, None)
    for series in (Series.of(current, reading.type), _added_one_by_one(history, reading.type)):
        window = series.window(reading)
        assert window.within(span) == within
        assert window.within(timedelta(days=365)) == prior
        assert window.newer_exists == any(r.measured_at > reading.measured_at for r in unique.values())
        if reading.type == "blood_pressure":
            assert window.bp_sums_within(span) == (
                len(within),
                sum(r.systolic or 0 for r in within),
                sum(r.diastolic or 0 for r in within),
            )


def _bp_view(msg_id: str, minutes_ago: int, systolic: int) -> ReadingView:
    return ReadingView(
        msg_id=msg_id,
        device_id="dev",
        type="blood_pressure",
        measured_at=NOW - timedelta(minutes=minutes_ago),
        systolic=systolic,
        diastolic=80,
        pulse=70,
        glucose_mmol=None,
        quality=(),
    )


_SeriesStep = (
    tuple[Literal["put"], ReadingView] | tuple[Literal["cut"], int] | tuple[Literal["ask"], ReadingView]
)


@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("put"), _views()),
            st.tuples(st.just("cut"), _MINUTES),
            st.tuples(st.just("ask"), _views()),
        ),
        max_size=40,
    ),
    span_minutes=_MINUTES,
    count=st.integers(0, 4),
)
@example(  # asked, then an earlier reading put before the end: the sums from there are made again
    steps=[
        ("put", _bp_view("m1", 10, 100)),
        ("ask", _bp_view("m9", 0, 150)),
        ("put", _bp_view("m2", 60, 200)),
        ("ask", _bp_view("m9", 0, 150)),
    ],
    span_minutes=DAY,
    count=2,
)
@settings(max_examples=400, deadline=None)
def test_window_sums_and_last_readings_stay_right_as_the_series_changes_between_questions(
    steps: list[_SeriesStep], span_minutes: int, count: int
) -> None:
    # The running sums are kept up on appends and made again from the first change before the end:
    # questions between puts (in any time order), replacements of a msg_id and cuts must all see them right.
    series = Series("blood_pressure")
    held: list[ReadingView] = []
    span = timedelta(minutes=span_minutes)
    for step in steps:
        if step[0] == "put":
            series.put(step[1])
            held.append(step[1])
        elif step[0] == "cut":
            cut = NOW - timedelta(minutes=step[1])
            series.drop_before(cut)
            held = [r for r in _current(held) if r.measured_at >= cut]
        else:
            reading = replace(step[1], type="blood_pressure", systolic=150, diastolic=90, glucose_mmol=None)
            within = [
                r
                for r in _plain_prior(_current(held), reading)
                if r.measured_at >= reading.measured_at - span
            ]
            window = series.window(reading)
            assert window.bp_sums_within(span) == (
                len(within),
                sum(r.systolic or 0 for r in within),
                sum(r.diastolic or 0 for r in within),
            )
            assert window.last_within(span, count) == (within[-count:] if count else [])


@given(history=st.lists(_views(), max_size=30), cut_minutes=_MINUTES)
@settings(max_examples=200, deadline=None)
def test_a_series_built_reading_by_reading_and_pruned_equals_one_built_at_once(
    history: list[ReadingView], cut_minutes: int
) -> None:
    cut = NOW - timedelta(minutes=cut_minutes)
    for kind in ("blood_pressure", "glucose"):
        series = _added_one_by_one(history, kind)
        series.drop_before(cut)
        expected = Series.of([r for r in _current(history) if r.measured_at >= cut], kind)
        assert series.readings == expected.readings
        assert (series.times, series.systolic, series.diastolic) == (
            expected.times,
            expected.systolic,
            expected.diastolic,
        )
        assert len(series) == len(expected)
        for thresholds in ((180, 120), (150, 95)):
            assert series.severe_keys(*thresholds) == expected.severe_keys(*thresholds)


@given(history=st.lists(_views(), max_size=25), readings=st.lists(_views(), min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_evaluating_a_batch_decides_what_evaluating_each_reading_alone_decides(
    history: list[ReadingView], readings: list[ReadingView]
) -> None:
    everything = _current([*history, *readings])
    one_by_one = [d for r in readings for d in run(r, everything)]
    series = {kind: Series.of(everything, kind) for kind in ("blood_pressure", "glucose")}
    assert evaluate_series(DEFAULTS, PATIENT, series, readings, NOW, late_after=LATE_AFTER) == one_by_one


def _naive_confirmation(t: Thresholds, history: Sequence[ReadingView], reading: ReadingView) -> object:
    """Confirm-by-repeat by its definition (module docstring of alerts.rules), on plain lists."""
    prior = _plain_prior(history, reading)
    severe = [r for r in prior if (r.systolic or 0) >= t.severe_sbp or (r.diastolic or 0) >= t.severe_dbp]
    low, high = (
        timedelta(minutes=t.confirm_window_min_minutes),
        timedelta(minutes=t.confirm_window_max_minutes),
    )

    def confirmed(at: datetime) -> bool:
        return any(low <= at - r.measured_at <= high for r in severe)

    if (reading.systolic or 0) >= t.severe_sbp or (reading.diastolic or 0) >= t.severe_dbp:
        return "confirmed" if confirmed(reading.measured_at) else "pending"
    recent = [r for r in severe if reading.measured_at - r.measured_at <= high]
    if not recent or not low <= reading.measured_at - recent[-1].measured_at <= high:
        return None
    return None if confirmed(recent[-1].measured_at) else "not_confirmed"


_CONFIRM_MINUTES = st.sampled_from([0, 1, 4, 5, 6, 10, 14, 15, 16, 20, 29, 30, 31, 45, 60, 61])


@st.composite
def _bp_views(draw: st.DrawFn) -> ReadingView:
    return ReadingView(
        msg_id=f"b{draw(st.integers(0, 40))}",
        device_id="dev",
        type="blood_pressure",
        measured_at=NOW - timedelta(minutes=draw(_CONFIRM_MINUTES)),
        systolic=draw(st.sampled_from([120, 150, 179, 180, 200])),
        diastolic=draw(st.sampled_from([70, 90, 119, 120])),
        pulse=70,
        quality=("movement",) if draw(st.integers(0, 5)) == 0 else (),
    )


@given(history=st.lists(_bp_views(), max_size=60), reading=_bp_views(), stored_copy_first=st.booleans())
@settings(max_examples=800, deadline=None)
def test_confirm_by_repeat_agrees_with_its_definition(
    history: list[ReadingView], reading: ReadingView, stored_copy_first: bool
) -> None:
    # The rule's own functions (a decision may hide its confirmation: no CLEAR while a newer reading exists).
    # The history may hold another copy of the reading's msg_id (a redelivery): it never counts.
    current = _current([reading, *history] if stored_copy_first else [*history, reading])
    window = Series.of(current, "blood_pressure").window(reading)
    t = DEFAULTS
    if (reading.systolic or 0) >= t.severe_sbp or (reading.diastolic or 0) >= t.severe_dbp:
        found: object = _severe_confirmation(t, window, reading.measured_at).value
    else:
        repeat = _repeat_of_pending(t, window)
        found = None if repeat is None else repeat.value
    assert found == _naive_confirmation(t, current, reading)


@pytest.mark.parametrize("normal_between", [0, 1, 7, 8, 9, 15, 16, 17, 40, 200])
def test_the_latest_severe_reading_is_found_however_many_readings_follow_it(normal_between: int) -> None:
    # A pending severe reading 10 minutes ago, then many normal ones (a device sending every few seconds):
    # the current normal reading is still its repeat (5-15 minutes after), and it was never confirmed.
    severe = bp(10, 185, 100)
    between = [bp(10 - (n + 1) * 9 / (normal_between + 1), 120, 80) for n in range(normal_between)]
    current = bp(0, 125, 80)
    window = Series.of([severe, *between, current], "blood_pressure").window(current)
    assert window.latest_severe(DEFAULTS, current.measured_at - timedelta(minutes=15)) == severe
    assert _repeat_of_pending(DEFAULTS, window) is Confirmation.NOT_CONFIRMED


# --- the shortcut for readings that cannot clear -----------------------------------------------------
# `_evaluate` skips the rules that can only find "back to normal" for a reading that cannot clear
# (suspect, or with a newer reading behind it). It must decide exactly what running every rule decides,
# for values on both sides of every threshold, with the clinic's thresholds and with odd overrides.

_ODD = Thresholds(hypo_l1_mmol=4.5, hypo_l2_mmol=3.5, pulse_routine_low=55, pulse_routine_high=90)


@st.composite
def _any_views(draw: st.DrawFn, kinds: Sequence[ReadingType] = ("blood_pressure", "glucose")) -> ReadingView:
    kind: ReadingType = draw(st.sampled_from(kinds))
    marks: list[Literal["LO", "HI"] | None] = [None, None, None, "LO", "HI"]
    censored = draw(st.sampled_from(marks)) if kind == "glucose" else None
    return ReadingView(
        msg_id=f"a{draw(st.integers(0, 60))}",
        device_id="dev",
        type=kind,
        measured_at=NOW - timedelta(minutes=draw(_CONFIRM_MINUTES | _MINUTES)),
        systolic=draw(st.sampled_from([80, 89, 90, 120, 139, 140, 160, 179, 180, 200]))
        if kind == "blood_pressure"
        else None,
        diastolic=draw(st.sampled_from([50, 59, 60, 80, 89, 90, 100, 119, 120]))
        if kind == "blood_pressure"
        else None,
        pulse=draw(st.sampled_from([None, 35, 40, 45, 50, 55, 70, 90, 100, 101, 110, 111]))
        if kind == "blood_pressure"
        else None,
        glucose_mmol=(
            draw(st.sampled_from([2.9, 3.0, 3.5, 3.9, 4.0, 4.5, 7.0, 13.9, 14.0, 16.6, 16.7, 20.0]))
            if kind == "glucose" and censored is None
            else None
        ),
        censored=censored,
        quality=("movement",) if draw(st.integers(0, 4)) == 0 else (),
    )


@given(
    history=st.lists(_any_views(), max_size=30)
    | st.lists(_any_views(["blood_pressure"]), min_size=12, max_size=40),
    reading=_any_views(),
    thresholds=st.sampled_from([DEFAULTS, _ODD]),
)
@settings(max_examples=1_000, deadline=None)
def test_skipping_rules_that_can_only_clear_decides_what_running_every_rule_decides(
    history: list[ReadingView], reading: ReadingView, thresholds: Thresholds
) -> None:
    window = Series.of(_current([*history, reading]), reading.type).window(reading)
    full = _evaluate(thresholds, PATIENT, window, NOW, LATE_AFTER, every_rule=True)
    assert _evaluate(thresholds, PATIENT, window, NOW, LATE_AFTER) == full


def test_the_shortcut_is_taken_for_a_normal_reading_with_a_newer_one_behind_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not implied by the property above: the shortcut must skip something, or it buys nothing.
    older, newer = bp(20, 120, 80), bp(10, 120, 80)
    window = Series.of([older, newer], "blood_pressure").window(older)
    assert window.newer_exists
    calls: list[str] = []
    original = rules_module._bp_high

    def counting(t: Thresholds, w: _Window) -> object:
        calls.append("bp_high")
        return original(t, w)

    monkeypatch.setattr(rules_module, "_bp_high", counting)
    assert _evaluate(DEFAULTS, PATIENT, window, NOW, LATE_AFTER) == []
    assert calls == []
    assert _evaluate(DEFAULTS, PATIENT, window, NOW, LATE_AFTER, every_rule=True) == []
    assert calls == ["bp_high"]
