"""The clinical rules (DOMAIN.md, "Clinical defaults"): pure functions, no I/O, the clock a parameter.

`evaluate` turns one reading and the patient's recent readings of the same type into decisions, at
most one per family (the most severe breaching rule of the family wins):

- BREACH: a non-suspect reading breaches the rule.
- REMEASURE: a quality-flagged ("suspect") reading would breach it (evaluated as if it counted); it
  never opens an alert and never counts in another reading's window.
- CLEAR: a non-suspect reading is normal for the family (rule = the family's least severe reading
  rule). A reading between normal and breaching (e.g. one high reading that is not yet 2 of 3) gives
  no decision for the family. No CLEAR is given while a newer non-suspect reading exists: the newer
  one, not a late buffered one, tells the family's present state.

Choices the guideline leaves open, fixed here:
- Windows are inclusive: a reading exactly 24 h (7 days) before the current one is within 24 h (7 days).
- high_bp needs the current reading itself to be high (a severe value counts as high); a normal one
  after two high ones clears.
- uncontrolled_bp breaches when the mean systolic >= 135 *or* the mean diastolic >= 85 (ESH: home
  hypertension is 135 and/or 85); it gives no decision with too few readings, and none for a suspect
  reading (a weekly mean is not something to re-measure). Every non-suspect reading while the mean is
  high is a breach: it moves the mean.
- repeated_hypo breaches only on a hypo reading; it clears when fewer than `repeated_hypo_count`
  hypo readings lie in the window.
- Confirm-by-repeat: a severe reading is CONFIRMED when an earlier severe reading lies
  `confirm_window_min..max` minutes before it, else PENDING. A non-severe reading is NOT_CONFIRMED
  when the latest severe reading within `confirm_window_max` before it was PENDING and lies
  `min..max` minutes before it (an earlier one is no repeat yet; after a CONFIRMED one there is
  nothing left to refute).
- worst_key (bigger is worse, comparable within a family): BP rules the larger of SBP and DBP as a
  percentage of the severe thresholds; uncontrolled_bp the same for the means against its thresholds;
  low_bp minus the smaller percentage of the low thresholds; pulse the distance outside the routine
  range as a percentage of the nearer limit; hypo minus mmol/L (LO = 0, above any value); hyper mmol/L
  (HI = 1000); repeated_hypo the number of hypo readings.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import accumulate
from typing import Literal

from alerts.model import Confirmation, Decision, DecisionKind, ReadingView, RuleId
from alerts.thresholds import Thresholds
from gateway.timeseries.base import ReadingType
from gateway.wire import BloodPressureReading, GlucoseReading

NoDataDue = Literal["none", "reminder", "alert"]

_TICK = timedelta(microseconds=1)  # the resolution of datetime: `t + _TICK` is the first time after t
_LO_KEY = 0.0  # minus mmol/L of a value at zero: worse than any reading a meter can show
_HI_KEY = 1000.0  # beyond any glucometer's numeric range


@dataclass(slots=True)  # not frozen: one per rule run for a reading, and cheaper so
class _Finding:
    """A family's verdict on the current reading, before the reading's quality is taken into account."""

    kind: Literal["breach", "clear"]
    rule: RuleId
    value_text: str
    worst_key: float
    confirmation: Confirmation | None = None
    detail: str = ""


class Series:
    """A patient's non-suspect readings of one type, one per msg_id, oldest first, kept sorted as they come.

    The rules' view of a patient's history. The gateway keeps one per patient and type in its history
    cache and adds each batch's readings (a binary search and a list insert each), so a batch costs
    what it adds rather than the size of the history; rebuilding the sorted history per batch made rule
    evaluation grow with the history (profiled: a quarter of the gateway's time in a backlog drain).
    """

    __slots__ = (
        "_by_id",
        "_diastolic_sums",
        "_keys",
        "_severe",
        "_sums_valid",
        "_systolic_sums",
        "diastolic",
        "readings",
        "systolic",
        "times",
        "type",
    )

    def __init__(self, reading_type: str) -> None:
        self.type = reading_type
        self.readings: list[ReadingView] = []
        self.times: list[datetime] = []
        self.systolic: list[int] = []  # blood pressure only (0 for glucose): window sums by slicing
        self.diastolic: list[int] = []
        self._keys: list[tuple[datetime, str]] = []  # (measured_at, msg_id): the sort order
        self._by_id: dict[str, ReadingView] = {}
        # Per (severe_sbp, severe_dbp): the keys of the severe readings, kept sorted alongside the rest,
        # so confirm-by-repeat looks at a handful of entries however many normal readings surround them.
        self._severe: dict[tuple[int, int], list[tuple[datetime, str]]] = {}
        # Running sums of (systolic, diastolic), so a window's sums are two subtractions however long the
        # history (a 7-day mean summed per reading was a fifth of rule evaluation with 2,000 readings a
        # patient: bench). `_systolic_sums[i]` is a base plus the sum of the first i readings (so with
        # diastolic), valid for i <= `_sums_valid`; a change before the end invalidates from there, made
        # good on the next use.
        self._systolic_sums = [0]
        self._diastolic_sums = [0]
        self._sums_valid = 0

    @classmethod
    def of(cls, history: Iterable[ReadingView], reading_type: str) -> Series:
        """The series of `reading_type` in `history` (duplicates of a msg_id: the last non-suspect wins)."""
        unique = {r.msg_id: r for r in history if r.type == reading_type and not r.suspect}
        series = cls(reading_type)
        for reading in sorted(unique.values(), key=lambda r: (r.measured_at, r.msg_id)):
            series._insert(len(series._keys), reading)
        return series

    def __len__(self) -> int:
        return len(self._keys)

    def by_id(self, msg_id: str) -> ReadingView:
        """The held reading with this msg_id."""
        return self._by_id[msg_id]

    def put(self, reading: ReadingView) -> None:
        """Take `reading` as its msg_id's current copy: replaces an earlier copy; a suspect one only removes."""
        self.discard(reading.msg_id)
        if reading.type != self.type or reading.suspect:
            return
        measured_at, times = reading.measured_at, self.times
        at = bisect_right(times, measured_at)
        if at and times[at - 1] == measured_at:  # readings measured at the same time: by msg_id
            at = bisect_right(self._keys, (measured_at, reading.msg_id), bisect_left(times, measured_at), at)
        self._insert(at, reading)

    def _index(self, reading: ReadingView) -> int:
        """The position of a held reading: its key found by its time (comparing datetimes, not the keys'
        tuples, which cost three times as much: profiled), by msg_id among readings of the same time."""
        at = bisect_left(self.times, reading.measured_at)
        if self._keys[at][1] == reading.msg_id:
            return at
        return bisect_left(self._keys, (reading.measured_at, reading.msg_id), at)

    def discard(self, msg_id: str) -> None:
        """Remove `msg_id`'s reading, if held."""
        old = self._by_id.pop(msg_id, None)
        if old is None:
            return
        key = (old.measured_at, old.msg_id)
        at = self._index(old)
        for column in (self._keys, self.readings, self.times, self.systolic, self.diastolic):
            del column[at]
        self._invalidate_sums(at)
        for (severe_sbp, severe_dbp), severe in self._severe.items():
            if _at_or_above(old.systolic or 0, old.diastolic or 0, severe_sbp, severe_dbp):
                del severe[bisect_left(severe, key)]

    def drop_before(self, since: datetime) -> None:
        """Forget the readings measured before `since`."""
        count = bisect_left(self.times, since)
        if count == 0:
            return
        for reading in self.readings[:count]:
            del self._by_id[reading.msg_id]
        for column in (self._keys, self.readings, self.times, self.systolic, self.diastolic):
            del column[:count]
        if count <= self._sums_valid:  # the same differences, from a new base
            del self._systolic_sums[:count]
            del self._diastolic_sums[:count]
            self._sums_valid -= count
        else:
            self._systolic_sums, self._diastolic_sums, self._sums_valid = [0], [0], 0
        for severe in self._severe.values():
            del severe[: bisect_left(severe, (since,))]

    def _insert(self, at: int, reading: ReadingView) -> None:
        systolic, diastolic = reading.systolic or 0, reading.diastolic or 0
        if at == self._sums_valid == len(self._keys):  # the newest, as most readings come: kept up
            self._systolic_sums.append(self._systolic_sums[-1] + systolic)
            self._diastolic_sums.append(self._diastolic_sums[-1] + diastolic)
            self._sums_valid += 1
        else:
            self._invalidate_sums(at)
        self._by_id[reading.msg_id] = reading
        self._keys.insert(at, (reading.measured_at, reading.msg_id))
        self.readings.insert(at, reading)
        self.times.insert(at, reading.measured_at)
        self.systolic.insert(at, systolic)
        self.diastolic.insert(at, diastolic)
        for (severe_sbp, severe_dbp), severe in self._severe.items():
            if _at_or_above(systolic, diastolic, severe_sbp, severe_dbp):
                insort(severe, (reading.measured_at, reading.msg_id))

    def _invalidate_sums(self, at: int) -> None:
        """The readings from position `at` on changed: their running sums are made again when used."""
        if at < self._sums_valid:
            del self._systolic_sums[at + 1 :]
            del self._diastolic_sums[at + 1 :]
            self._sums_valid = at

    def sums(self, start: int, end: int) -> tuple[int, int]:
        """(systolic, diastolic) sums of the readings at positions start..end-1."""
        if end > self._sums_valid:
            valid = self._sums_valid
            for sums, values in (
                (self._systolic_sums, self.systolic),
                (self._diastolic_sums, self.diastolic),
            ):
                sums.extend(accumulate(values[valid:], initial=sums.pop()))  # `initial` comes out first
            self._sums_valid = len(self._keys)
        systolic, diastolic = self._systolic_sums, self._diastolic_sums
        return systolic[end] - systolic[start], diastolic[end] - diastolic[start]

    def severe_keys(self, severe_sbp: int, severe_dbp: int) -> list[tuple[datetime, str]]:
        """(measured_at, msg_id) of the readings at or above these severe thresholds, oldest first."""
        severe = self._severe.get((severe_sbp, severe_dbp))
        if severe is None:
            if len(self._severe) >= 4:  # thresholds changed several times: forget the old ones
                self._severe.clear()
            severe = self._severe[severe_sbp, severe_dbp] = [
                key
                for key, systolic, diastolic in zip(self._keys, self.systolic, self.diastolic, strict=True)
                if _at_or_above(systolic, diastolic, severe_sbp, severe_dbp)
            ]
        return severe

    def window(self, reading: ReadingView) -> _Window:
        """The window around `reading` (its own msg_id left out: it is judged as given, not as stored)."""
        end = bisect_right(self.times, reading.measured_at)
        newer = len(self._keys) - end
        own = None
        copy = self._by_id.get(reading.msg_id)
        if copy is not None:
            at = self._index(copy)
            if at < end:
                own = at
            else:
                newer -= 1
        return _Window(reading, self, end, own, newer > 0)


def _at_or_above(systolic: int, diastolic: int, sbp: int, dbp: int) -> bool:
    """Whether a pressure reaches either threshold (what makes a reading severe, with the severe pair)."""
    return systolic >= sbp or diastolic >= dbp


@dataclass(frozen=True, slots=True)
class _Window:
    """The readings a rule may look at, around the current one; valid until the series changes.

    The prior readings are the series' readings measured at or before the current one, without it,
    oldest first: `series.readings[:end]` less position `own`.
    """

    reading: ReadingView
    series: Series
    end: int
    own: int | None
    newer_exists: bool  # a non-suspect reading measured after the current one is known

    def _start(self, span: timedelta) -> int:
        return bisect_left(self.series.times, self.reading.measured_at - span, 0, self.end)

    def _prior_from(self, start: int) -> list[ReadingView]:
        """The prior readings from position `start` on, oldest first (its own copy left out)."""
        own, readings = self.own, self.series.readings
        if own is None or own < start:
            return readings[start : self.end]
        return [*readings[start:own], *readings[own + 1 : self.end]]

    def within(self, span: timedelta) -> list[ReadingView]:
        """Prior readings at most `span` before the current one, oldest first."""
        return self._prior_from(self._start(span))

    def last_within(self, span: timedelta, count: int) -> list[ReadingView]:
        """The last `count` (at most) prior readings at most `span` before the current one, oldest first."""
        if count <= 0:
            return []
        # One more than asked for, in case its own copy is among them.
        return self._prior_from(max(self._start(span), self.end - count - 1))[-count:]

    def _severe_between(self, t: Thresholds, start: datetime, end: datetime) -> list[tuple[datetime, str]]:
        """Keys of the severe prior readings measured from `start` to `end` (inclusive), own left out."""
        severe = self.series.severe_keys(t.severe_sbp, t.severe_dbp)
        if not severe:  # most patients, most of the time
            return []
        end = min(end, self.reading.measured_at)  # prior readings only
        lo = bisect_left(severe, (start,))
        hi = bisect_left(severe, (end + _TICK,))
        return [key for key in severe[lo:hi] if key[1] != self.reading.msg_id]

    def any_severe(self, t: Thresholds, start: datetime, end: datetime) -> bool:
        """Whether a prior reading measured from `start` to `end` (inclusive) is severe."""
        return bool(self._severe_between(t, start, end))

    def latest_severe(self, t: Thresholds, start: datetime) -> ReadingView | None:
        """The latest severe prior reading measured at or after `start` (last in the series' order)."""
        found = self._severe_between(t, start, self.reading.measured_at)
        return self.series.by_id(found[-1][1]) if found else None

    def bp_sums_within(self, span: timedelta) -> tuple[int, int, int]:
        """(count, systolic sum, diastolic sum) of the prior blood-pressure readings within `span`."""
        start, own, series = self._start(span), self.own, self.series
        count = self.end - start
        systolic, diastolic = series.sums(start, self.end)
        if own is not None and own >= start:
            count, systolic, diastolic = (
                count - 1,
                systolic - series.systolic[own],
                diastolic - series.diastolic[own],
            )
        return count, systolic, diastolic


def evaluate(
    thresholds: Thresholds,
    patient_id: str,
    history: Sequence[ReadingView],
    reading: ReadingView,
    now: datetime,
    *,
    late_after: timedelta,
) -> list[Decision]:
    """The decisions for `reading`, at most one per family, in a fixed family order.

    `history`: the patient's recent readings (any order, may hold `reading`, duplicates of one msg_id,
    other types and readings measured after `reading`; only same-type ones at or before it are used).
    """
    series: dict[str, Series] = {reading.type: Series.of(history, reading.type)}
    return evaluate_series(thresholds, patient_id, series, [reading], now, late_after=late_after)


def evaluate_series(
    thresholds: Thresholds,
    patient_id: str,
    series: Mapping[str, Series],
    readings: Iterable[ReadingView],
    now: datetime,
    *,
    late_after: timedelta,
) -> list[Decision]:
    """`evaluate` for each of `readings`, decisions in the readings' order, against the patient's
    history as a `Series` per type (which should hold the readings themselves, like `history` may)."""
    empty: dict[str, Series] = {}
    decisions: list[Decision] = []
    for reading in readings:
        history = series.get(reading.type) or empty.setdefault(reading.type, Series(reading.type))
        decisions.extend(_evaluate(thresholds, patient_id, history.window(reading), now, late_after))
    return decisions


def _evaluate(
    thresholds: Thresholds,
    patient_id: str,
    window: _Window,
    now: datetime,
    late_after: timedelta,
    *,
    every_rule: bool = False,
) -> list[Decision]:
    """The reading's decisions. No CLEAR is decided for a suspect reading or one with a newer reading
    behind it (`_decision`), so for those (most of a backlog) a rule that can only find "back to normal"
    is not run: the same decisions, at a fraction of the cost (profiled: the rules were a quarter of a
    drain). `every_rule` runs them all (the test that holds the shortcut to the full evaluation)."""
    reading = window.reading
    breach_only = (window.newer_exists or reading.suspect) and not every_rule
    t = thresholds
    findings: list[_Finding | None]
    if reading.type == "blood_pressure":
        findings = [
            _bp_high(t, window)
            if not breach_only or _is_high(t, reading) or _is_severe(t, reading)
            else None,
            _uncontrolled_bp(t, window, clears=not breach_only),
            _low_bp(t, reading) if not breach_only or _is_low(t, reading) else None,
            _pulse(t, reading) if not breach_only or _pulse_abnormal(t, reading) else None,
        ]
    else:
        hypo = _is_hypo(t, reading)
        findings = [
            _hypo(t, reading) if not breach_only or hypo else None,  # level 2 lies below level 1
            _hyper(t, reading) if not breach_only or _is_hyper(t, reading) else None,
            _repeated_hypo(t, window) if not breach_only or hypo else None,
        ]
    late = now - reading.measured_at > late_after
    decisions = []
    for finding in findings:
        decision = _decision(finding, patient_id, window, late)
        if decision is not None:
            decisions.append(decision)
    return decisions


def critical_by_value(thresholds: Thresholds, reading: BloodPressureReading | GlucoseReading) -> bool:
    """Whether the reading's own value breaches a critical rule: severe blood pressure, level 2
    hypoglycaemia (LO included) or severe hyperglycaemia (HI included), history aside.

    The gateway stores and decides such readings ahead of the rest of their batch (gateway.ingest), so
    this looks at the wire reading, without the view the rules build; a test holds it to what
    `evaluate` decides for the reading alone.
    """
    if isinstance(reading, BloodPressureReading):
        return _at_or_above(reading.systolic, reading.diastolic, thresholds.severe_sbp, thresholds.severe_dbp)
    value = reading.value_mmol
    return value is None or value < thresholds.hypo_l2_mmol or value >= thresholds.hyper_severe_mmol


def confirmation_expired(opened_at: datetime, now: datetime, thresholds: Thresholds) -> bool:
    """Whether a PENDING severe-BP confirmation has run out of time (the worker then sets NO_REPEAT).

    `opened_at` should be the measured_at of the severe reading awaiting its repeat: a repeat measured
    exactly `confirm_window_max_minutes` later still confirms.
    """
    return now - opened_at > timedelta(minutes=thresholds.confirm_window_max_minutes)


def no_data_due(
    thresholds: Thresholds,
    type: ReadingType,
    last_measured_at: datetime | None,
    enrolled_since: datetime,
    now: datetime,
) -> NoDataDue:
    """Which no-data step is due: "reminder" after N days without a reading of `type`, "alert" after 2N.

    Counted from the last reading, or from `enrolled_since` when there is none since enrolment.
    """
    days = thresholds.no_data_days_bp if type == "blood_pressure" else thresholds.no_data_days_glucose
    silent = now - _since(last_measured_at, enrolled_since)
    if silent >= timedelta(days=2 * days):
        return "alert"
    if silent >= timedelta(days=days):
        return "reminder"
    return "none"


def device_silent(
    thresholds: Thresholds, last_seen: datetime | None, enrolled_since: datetime, now: datetime
) -> bool:
    """Whether an enrolled device has sent nothing (reading or status) for `device_silent_days`."""
    return now - _since(last_seen, enrolled_since) >= timedelta(days=thresholds.device_silent_days)


def _since(last: datetime | None, enrolled_since: datetime) -> datetime:
    # Activity before the enrolment (another patient's, or a previous episode) does not count.
    return enrolled_since if last is None else max(last, enrolled_since)


def _decision(finding: _Finding | None, patient_id: str, window: _Window, late: bool) -> Decision | None:
    reading = window.reading
    if finding is None:
        return None
    if finding.kind == "clear":
        if reading.suspect or window.newer_exists:
            return None
        kind = DecisionKind.CLEAR
        confirmation = finding.confirmation
        detail = finding.detail
    elif reading.suspect:
        kind = DecisionKind.REMEASURE
        confirmation = None  # a suspect reading takes no part in confirm-by-repeat
        detail = f"quality flags: {', '.join(reading.quality)}"
    else:
        kind = DecisionKind.BREACH
        confirmation = finding.confirmation
        detail = finding.detail
    return Decision(
        kind=kind,
        rule=finding.rule,
        patient_id=patient_id,
        msg_id=reading.msg_id,
        measured_at=reading.measured_at,
        value_text=finding.value_text,
        worst_key=finding.worst_key,
        late=late,
        confirmation=confirmation,
        detail=detail,
    )


# --- blood pressure -------------------------------------------------------------------------------


def _bp(reading: ReadingView) -> tuple[int, int]:
    if reading.systolic is None or reading.diastolic is None:
        raise ValueError(f"blood-pressure reading {reading.msg_id!r} has no systolic/diastolic")
    return reading.systolic, reading.diastolic


def _bp_text(reading: ReadingView) -> str:
    systolic, diastolic = _bp(reading)
    return f"{systolic}/{diastolic} mmHg"


def _is_severe(t: Thresholds, reading: ReadingView) -> bool:
    systolic, diastolic = _bp(reading)
    return systolic >= t.severe_sbp or diastolic >= t.severe_dbp


def _is_high(t: Thresholds, reading: ReadingView) -> bool:
    """At or above the high thresholds (severe values included)."""
    systolic, diastolic = _bp(reading)
    return systolic >= t.high_sbp or diastolic >= t.high_dbp


def _is_low(t: Thresholds, reading: ReadingView) -> bool:
    """Below either low threshold (what `_low_bp` calls a breach)."""
    systolic, diastolic = _bp(reading)
    return systolic < t.low_sbp or diastolic < t.low_dbp


def _pulse_abnormal(t: Thresholds, reading: ReadingView) -> bool:
    """Outside the routine pulse range (what `_pulse` calls a breach, urgent or routine)."""
    pulse = reading.pulse
    return pulse is not None and (
        pulse < t.pulse_urgent_low
        or pulse > t.pulse_urgent_high
        or pulse < t.pulse_routine_low
        or pulse > t.pulse_routine_high
    )


def _bp_high(t: Thresholds, window: _Window) -> _Finding | None:
    reading = window.reading
    systolic, diastolic = _bp(reading)
    text = _bp_text(reading)
    key = 100 * max(systolic / t.severe_sbp, diastolic / t.severe_dbp)
    if _is_severe(t, reading):
        confirmation = _severe_confirmation(t, window, reading.measured_at)
        return _Finding("breach", RuleId.SEVERE_BP, text, key, confirmation)
    repeat = _repeat_of_pending(t, window)
    if not _is_high(t, reading):
        return _Finding("clear", RuleId.HIGH_BP, text, key, repeat)
    recent = [*window.last_within(timedelta(hours=t.high_window_hours), t.high_of_last - 1), reading]
    high = sum(1 for r in recent if _is_high(t, r))
    if high < t.high_required:
        return None  # high, but not on enough readings yet: neither a breach nor back to normal
    detail = (
        f"{high} of the last {len(recent)} readings within {t.high_window_hours} h "
        f"at or above {t.high_sbp}/{t.high_dbp} mmHg"
    )
    return _Finding("breach", RuleId.HIGH_BP, text, key, repeat, detail)


def _gap_in_confirm_window(t: Thresholds, earlier: datetime, later: datetime) -> bool:
    gap = later - earlier
    return (
        timedelta(minutes=t.confirm_window_min_minutes)
        <= gap
        <= timedelta(minutes=t.confirm_window_max_minutes)
    )


def _severe_confirmation(t: Thresholds, window: _Window, at: datetime) -> Confirmation:
    """CONFIRMED when a prior severe reading lies within the confirm window before `at`."""
    earliest = at - timedelta(minutes=t.confirm_window_max_minutes)
    latest = at - timedelta(minutes=t.confirm_window_min_minutes)
    if window.any_severe(t, earliest, latest):
        return Confirmation.CONFIRMED
    return Confirmation.PENDING


def _repeat_of_pending(t: Thresholds, window: _Window) -> Confirmation | None:
    """NOT_CONFIRMED when a non-severe reading is the repeat of a pending severe reading."""
    at = window.reading.measured_at
    latest = window.latest_severe(t, at - timedelta(minutes=t.confirm_window_max_minutes))
    if latest is None:
        return None
    if not _gap_in_confirm_window(t, latest.measured_at, at):
        return None  # too early to be the repeat
    if _severe_confirmation(t, window, latest.measured_at) is not Confirmation.PENDING:
        return None
    return Confirmation.NOT_CONFIRMED


def _uncontrolled_bp(t: Thresholds, window: _Window, *, clears: bool = True) -> _Finding | None:
    """The mean of the window; with `clears` False only a breach is reported (its texts are not made
    otherwise: formatting them for every reading of a backlog was most of this rule's cost)."""
    reading = window.reading
    if reading.suspect:
        return None
    count, systolic_sum, diastolic_sum = window.bp_sums_within(timedelta(days=t.uncontrolled_days))
    systolic, diastolic = _bp(reading)
    count, systolic_sum, diastolic_sum = count + 1, systolic_sum + systolic, diastolic_sum + diastolic
    if count < t.uncontrolled_min_readings:
        return None
    mean_sbp = systolic_sum / count
    mean_dbp = diastolic_sum / count
    breach = mean_sbp >= t.uncontrolled_sbp or mean_dbp >= t.uncontrolled_dbp
    if not breach and not clears:
        return None
    # Floor, not round: the text then stays on the same side of the (integer) thresholds as the mean.
    text = f"mean {math.floor(mean_sbp)}/{math.floor(mean_dbp)} mmHg over {count} readings"
    key = 100 * max(mean_sbp / t.uncontrolled_sbp, mean_dbp / t.uncontrolled_dbp)
    detail = f"{t.uncontrolled_days}-day mean; threshold {t.uncontrolled_sbp}/{t.uncontrolled_dbp} mmHg"
    return _Finding("breach" if breach else "clear", RuleId.UNCONTROLLED_BP, text, key, None, detail)


def _low_bp(t: Thresholds, reading: ReadingView) -> _Finding:
    systolic, diastolic = _bp(reading)
    key = -100 * min(systolic / t.low_sbp, diastolic / t.low_dbp)
    breach = _is_low(t, reading)
    return _Finding("breach" if breach else "clear", RuleId.LOW_BP, _bp_text(reading), key)


def _pulse(t: Thresholds, reading: ReadingView) -> _Finding | None:
    pulse = reading.pulse
    if pulse is None:
        return None
    text = f"{_bp_text(reading)}, pulse {pulse}"
    key = 100 * max(
        (t.pulse_routine_low - pulse) / t.pulse_routine_low,
        (pulse - t.pulse_routine_high) / t.pulse_routine_high,
    )
    if pulse < t.pulse_urgent_low or pulse > t.pulse_urgent_high:
        return _Finding("breach", RuleId.PULSE_EXTREME, text, key)
    if pulse < t.pulse_routine_low or pulse > t.pulse_routine_high:
        return _Finding("breach", RuleId.PULSE_ABNORMAL, text, key)
    return _Finding("clear", RuleId.PULSE_ABNORMAL, text, key)


# --- glucose --------------------------------------------------------------------------------------


def _mmol(reading: ReadingView) -> float | None:
    """The value in mmol/L; None when censored."""
    if reading.censored is None and reading.glucose_mmol is None:
        raise ValueError(f"glucose reading {reading.msg_id!r} has neither a value nor a censored mark")
    return None if reading.censored is not None else reading.glucose_mmol


def _glucose_text(t: Thresholds, reading: ReadingView) -> str:
    value = _mmol(reading)
    if value is None:
        return str(reading.censored)
    return f"{_number_text(t, value)} mmol/L"


def _number_text(t: Thresholds, value: float) -> str:
    """One decimal, or more where one would show the value on the wrong side of a threshold.

    54 mg/dL is 2.997 mmol/L: "3.0" would read as not below 3.0.
    """

    def sides(x: float) -> tuple[bool, ...]:
        # The comparisons the rules make, so the text agrees with the decision.
        return (x < t.hypo_l2_mmol, x < t.hypo_l1_mmol, x > t.hyper_marked_mmol, x >= t.hyper_severe_mmol)

    for decimals in (1, 2, 3):
        if sides(round(value, decimals)) == sides(value):
            return f"{value:.{decimals}f}"
    return f"{value:.4f}"


def _is_hypo(t: Thresholds, reading: ReadingView) -> bool:
    """Below level 1 (LO included)."""
    value = _mmol(reading)
    return reading.censored == "LO" or (value is not None and value < t.hypo_l1_mmol)


def _is_hyper(t: Thresholds, reading: ReadingView) -> bool:
    """Above the marked-hyperglycaemia threshold (HI included): what `_hyper` calls a breach."""
    value = _mmol(reading)
    return reading.censored == "HI" or (
        value is not None and (value >= t.hyper_severe_mmol or value > t.hyper_marked_mmol)
    )


def _hypo(t: Thresholds, reading: ReadingView) -> _Finding:
    value = _mmol(reading)
    text = _glucose_text(t, reading)
    if reading.censored == "LO":
        return _Finding("breach", RuleId.HYPO_L2, text, _LO_KEY)
    key = -value if value is not None else -_HI_KEY  # HI: as far from hypoglycaemia as can be
    if value is not None and value < t.hypo_l2_mmol:
        return _Finding("breach", RuleId.HYPO_L2, text, key)
    if value is not None and value < t.hypo_l1_mmol:
        return _Finding("breach", RuleId.HYPO_L1, text, key)
    return _Finding("clear", RuleId.HYPO_L1, text, key)


def _hyper(t: Thresholds, reading: ReadingView) -> _Finding:
    value = _mmol(reading)
    text = _glucose_text(t, reading)
    if reading.censored == "HI":
        return _Finding("breach", RuleId.HYPER_SEVERE, text, _HI_KEY)
    key = value if value is not None else 0.0  # LO: as far from hyperglycaemia as can be
    if value is not None and value >= t.hyper_severe_mmol:
        return _Finding("breach", RuleId.HYPER_SEVERE, text, key)
    if value is not None and value > t.hyper_marked_mmol:
        return _Finding("breach", RuleId.HYPER_MARKED, text, key)
    return _Finding("clear", RuleId.HYPER_MARKED, text, key)


def _repeated_hypo(t: Thresholds, window: _Window) -> _Finding | None:
    reading = window.reading
    current_hypo = _is_hypo(t, reading)
    earlier = [r for r in window.within(timedelta(days=t.repeated_hypo_days)) if _is_hypo(t, r)]
    count = len(earlier) + (1 if current_hypo else 0)
    noun = "reading" if count == 1 else "readings"
    text = f"{count} {noun} < {t.hypo_l1_mmol:g} mmol/L in {t.repeated_hypo_days} days"
    if count < t.repeated_hypo_count:
        return _Finding("clear", RuleId.REPEATED_HYPO, text, float(count))
    if not current_hypo:
        return None  # the episode goes on; a normal reading adds nothing to it
    return _Finding("breach", RuleId.REPEATED_HYPO, text, float(count))
