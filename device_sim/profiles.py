"""Simulated patients' physiology: pure functions of a profile, a local time and a `random.Random`.

Nothing here does I/O or reads a clock, so the same seed and the same times give the same values.
Values are what a patient's body shows; turning them into a device's reading (rounding, units, a
meter's measuring range, battery) is `devices.py`'s job.

Dangerous values (severe or low blood pressure, hypo- and hyperglycaemia beyond the alert thresholds
of DOMAIN.md) come only from *episodes*, drawn with the configurable `danger` probability per
reading, so a run with `danger=0` yields no critical reading.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal, TypeVar

from device_sim.errors import MixSpecError

_T = TypeVar("_T")

MealContext = Literal["fasting", "before_meal", "after_meal", "bedtime", "random"]
BpEpisode = Literal["severe", "high", "low"]
GlucoseEpisode = Literal["hypo", "hyper"]


class Condition(StrEnum):
    """Why the patient was given devices; decides the physiology and which devices they get."""

    CONTROLLED_HTN = "controlled_htn"
    UNCONTROLLED_HTN = "uncontrolled_htn"
    HYPOTENSION = "hypotension"
    T1D = "t1d"
    T2D = "t2d"


class Category(StrEnum):
    """The clinical category of one reading under DOMAIN.md's default thresholds."""

    NORMAL = "normal"
    SEVERE_BP = "severe_bp"  # SBP >= 180 or DBP >= 120
    HIGH_BP = "high_bp"  # SBP >= 160 or DBP >= 100
    LOW_BP = "low_bp"  # SBP < 90 or DBP < 60
    HYPO_LEVEL2 = "hypo_level2"  # < 3.0 mmol/L or LO
    HYPO_LEVEL1 = "hypo_level1"  # < 3.9 mmol/L
    HYPER_MARKED = "hyper_marked"  # > 13.9 mmol/L
    HYPER_SEVERE = "hyper_severe"  # >= 33.3 mmol/L or HI


DEFAULT_MIX: dict[Condition, float] = {
    Condition.CONTROLLED_HTN: 0.30,
    Condition.UNCONTROLLED_HTN: 0.20,
    Condition.HYPOTENSION: 0.10,
    Condition.T1D: 0.15,
    Condition.T2D: 0.25,
}

BP_CONDITIONS = frozenset({Condition.CONTROLLED_HTN, Condition.UNCONTROLLED_HTN, Condition.HYPOTENSION})
DIABETES_CONDITIONS = frozenset({Condition.T1D, Condition.T2D})

# Outside episodes values stay inside these bands, so that danger=0 means no critical reading.
_SBP_BAND = (91.0, 178.0)
_DBP_BAND = (61.0, 118.0)
_GLUCOSE_BAND = (4.0, 13.8)
_BP_FLAG_PROBABILITY = 0.04
_ARRHYTHMIA_FLAG_PROBABILITY = 0.3
_CONTROL_SOLUTION_PROBABILITY = 0.005


@dataclass(frozen=True, slots=True)
class BloodPressureTraits:
    """A patient's usual blood pressure and what their dangerous episodes look like."""

    systolic: float  # usual daytime SBP, mmHg
    diastolic: float
    pulse: float  # usual resting pulse, bpm
    variability: float  # SD of reading-to-reading SBP, mmHg
    episodes: tuple[tuple[BpEpisode, float], ...]  # kinds of episode with their weights
    arrhythmia: bool  # atrial fibrillation: the monitor often flags an irregular pulse


@dataclass(frozen=True, slots=True)
class GlucoseTraits:
    """A patient's usual glucose profile and what their dangerous episodes look like."""

    fasting: float  # usual fasting glucose, mmol/L
    variability: float  # SD of reading-to-reading glucose, mmol/L
    meal_rise: float  # usual rise two hours after a meal, mmol/L
    episodes: tuple[tuple[GlucoseEpisode, float], ...]


@dataclass(frozen=True, slots=True)
class PatientProfile:
    """One simulated patient's physiology; `bp` / `glucose` is None when they have no such device."""

    condition: Condition
    bp: BloodPressureTraits | None
    glucose: GlucoseTraits | None


@dataclass(frozen=True, slots=True)
class BloodPressureSample:
    """One blood-pressure measurement as the body and cuff give it (already in the device's range)."""

    systolic: int
    diastolic: int
    pulse: int
    flags: tuple[str, ...]
    episode: BpEpisode | None


@dataclass(frozen=True, slots=True)
class GlucoseSample:
    """One capillary glucose value (mmol/L, unrounded) with its meal context."""

    mmol: float
    meal: MealContext
    flags: tuple[str, ...]
    episode: GlucoseEpisode | None


def make_profile(
    condition: Condition, rng: random.Random, *, comorbid_hypertension: float = 0.5
) -> PatientProfile:
    """A new patient with `condition`; a type 2 diabetic also has hypertension with that probability."""
    bp: BloodPressureTraits | None = None
    glucose: GlucoseTraits | None = None
    if condition in BP_CONDITIONS:
        bp = _bp_traits(condition, rng)
    if condition is Condition.T1D:
        glucose = GlucoseTraits(
            fasting=rng.gauss(8.0, 1.2),
            variability=rng.uniform(1.8, 2.6),
            meal_rise=rng.uniform(2.5, 4.5),
            episodes=(("hypo", 0.85), ("hyper", 0.15)),
        )
    elif condition is Condition.T2D:
        glucose = GlucoseTraits(
            fasting=rng.gauss(8.5, 1.3),
            variability=rng.uniform(1.0, 1.6),
            meal_rise=rng.uniform(2.0, 4.0),
            episodes=(("hyper", 0.85), ("hypo", 0.15)),
        )
        if rng.random() < comorbid_hypertension:
            bp = _bp_traits(rng.choice([Condition.CONTROLLED_HTN, Condition.UNCONTROLLED_HTN]), rng)
    return PatientProfile(condition=condition, bp=bp, glucose=glucose)


def _bp_traits(condition: Condition, rng: random.Random) -> BloodPressureTraits:
    arrhythmia = rng.random() < 0.08
    if condition is Condition.HYPOTENSION:
        return BloodPressureTraits(
            systolic=rng.gauss(102, 4),
            diastolic=rng.gauss(66, 3),
            pulse=rng.gauss(78, 6),
            variability=rng.uniform(5, 8),
            episodes=(("low", 1.0),),
            arrhythmia=arrhythmia,
        )
    if condition is Condition.UNCONTROLLED_HTN:
        return BloodPressureTraits(
            systolic=rng.gauss(152, 6),
            diastolic=rng.gauss(93, 4),
            pulse=rng.gauss(74, 7),
            variability=rng.uniform(7, 11),
            episodes=(("severe", 0.7), ("high", 0.3)),
            arrhythmia=arrhythmia,
        )
    return BloodPressureTraits(
        systolic=rng.gauss(127, 5),
        diastolic=rng.gauss(80, 3),
        pulse=rng.gauss(70, 6),
        variability=rng.uniform(5, 8),
        episodes=(("high", 0.8), ("severe", 0.2)),
        arrhythmia=arrhythmia,
    )


def sample_bp(
    traits: BloodPressureTraits, local: datetime, rng: random.Random, *, danger: float
) -> BloodPressureSample:
    """One blood-pressure reading at local time `local`; an episode happens with probability `danger`."""
    rhythm = bp_rhythm(_hour(local))
    systolic = _fold(traits.systolic + rhythm + rng.gauss(0, traits.variability), *_SBP_BAND)
    diastolic = _fold(traits.diastolic + 0.6 * rhythm + rng.gauss(0, 0.6 * traits.variability), *_DBP_BAND)
    pulse = traits.pulse + 0.4 * rhythm + rng.gauss(0, 4)
    episode: BpEpisode | None = None
    if rng.random() < danger:
        bp_episode = _weighted(traits.episodes, rng)
        systolic, diastolic, pulse = _bp_episode(bp_episode, pulse, rng)
        episode = bp_episode
    flags = _bp_flags(traits, rng)
    if "irregular_pulse" in flags:
        pulse += rng.gauss(0, 12)
    sbp = round(_clamp(systolic, 60, 280))
    # Keep a plausible pulse pressure (>= 12 mmHg) so that only real episodes look suspicious.
    dbp = round(_clamp(diastolic, 30, min(200, sbp - 12)))
    return BloodPressureSample(
        systolic=sbp,
        diastolic=dbp,
        pulse=round(_clamp(pulse, 35, 180)),
        flags=flags,
        episode=episode,
    )


def _bp_episode(episode: BpEpisode, pulse: float, rng: random.Random) -> tuple[float, float, float]:
    if episode == "severe":
        if rng.random() < 0.8:
            return rng.uniform(180, 225), rng.uniform(95, 125), pulse + rng.uniform(0, 15)
        # Diastolic-only severe readings (>= 120) happen too, mostly in younger patients.
        return rng.uniform(165, 200), rng.uniform(120, 130), pulse + rng.uniform(0, 15)
    if episode == "high":
        return rng.uniform(160, 179), rng.uniform(92, 112), pulse + rng.uniform(0, 8)
    # Orthostatic or drug-induced hypotension: the heart races to compensate.
    return rng.uniform(72, 89), rng.uniform(42, 59), pulse + rng.uniform(8, 25)


def _bp_flags(traits: BloodPressureTraits, rng: random.Random) -> tuple[str, ...]:
    flags: list[str] = []
    if traits.arrhythmia and rng.random() < _ARRHYTHMIA_FLAG_PROBABILITY:
        flags.append("irregular_pulse")
    if rng.random() < _BP_FLAG_PROBABILITY:
        flag = rng.choice(["irregular_pulse", "movement", "cuff_loose", "position_error"])
        if flag not in flags:
            flags.append(flag)
    return tuple(flags)


def sample_glucose(
    traits: GlucoseTraits, local: datetime, rng: random.Random, *, danger: float
) -> GlucoseSample:
    """One glucose value at local time `local`; an episode happens with probability `danger`."""
    hour = _hour(local)
    meal = meal_context(hour, rng)
    mmol = traits.fasting + _dawn_effect(hour) + _meal_effect(meal, traits.meal_rise, rng)
    mmol = _fold(mmol + rng.gauss(0, traits.variability), *_GLUCOSE_BAND)
    episode: GlucoseEpisode | None = None
    if rng.random() < danger:
        glucose_episode = _weighted(traits.episodes, rng)
        mmol = _glucose_episode(glucose_episode, rng)
        episode = glucose_episode
    flags = ("control_solution",) if rng.random() < _CONTROL_SOLUTION_PROBABILITY else ()
    return GlucoseSample(mmol=mmol, meal=meal, flags=flags, episode=episode)


def _glucose_episode(episode: GlucoseEpisode, rng: random.Random) -> float:
    draw = rng.random()
    if episode == "hypo":
        if draw < 0.55:
            return rng.uniform(3.0, 3.85)  # level 1
        if draw < 0.92:
            return rng.uniform(1.6, 2.95)  # level 2
        return rng.uniform(0.3, 1.0)  # below most meters' range: LO
    if draw < 0.88:
        return rng.uniform(14.0, 26.0)  # marked: check ketones
    return rng.uniform(30.0, 45.0)  # severe, often beyond the meter's range: HI


def meal_context(hour: float, rng: random.Random) -> MealContext:
    """What a patient usually tells the meter at this hour; one reading in ten is `random`."""
    if rng.random() < 0.1:
        return "random"
    if 5 <= hour < 9:
        return "fasting"
    if 11 <= hour < 12.5 or 17 <= hour < 18.5:
        return "before_meal"
    if 12.5 <= hour < 16 or 18.5 <= hour < 21:
        return "after_meal"
    if hour >= 21 or hour < 1:
        return "bedtime"
    return "random"


def _meal_effect(meal: MealContext, rise: float, rng: random.Random) -> float:
    if meal == "after_meal":
        return rise * rng.uniform(0.6, 1.4)
    if meal == "bedtime":
        return 0.5 * rise * rng.uniform(0.5, 1.5)
    if meal == "random":
        return rng.uniform(0, rise)
    if meal == "before_meal":
        return rng.uniform(-0.5, 0.8)
    return 0.0


def _dawn_effect(hour: float) -> float:
    # Dawn phenomenon: counter-regulatory hormones raise glucose in the early morning.
    return 0.8 * _bump(hour, centre=6.0, width=1.5)


def bp_rhythm(hour: float) -> float:
    """Systolic offset (mmHg) of the daily rhythm at a local hour: morning surge, night dip."""
    return (
        9.0 * _bump(hour, centre=8.0, width=1.5)
        - 14.0 * _bump(hour, centre=3.0, width=2.5)
        - 3.0 * _bump(hour, centre=20.0, width=2.0)
    )


def bp_category(systolic: int, diastolic: int) -> Category:
    """The clinical category of one blood-pressure reading under DOMAIN.md's defaults."""
    if systolic >= 180 or diastolic >= 120:
        return Category.SEVERE_BP
    if systolic >= 160 or diastolic >= 100:
        return Category.HIGH_BP
    if systolic < 90 or diastolic < 60:
        return Category.LOW_BP
    return Category.NORMAL


def glucose_category(mmol: float | None, censored: Literal["LO", "HI"] | None = None) -> Category:
    """The clinical category of one glucose reading (value in mmol/L, or censored LO/HI)."""
    if censored == "LO":
        return Category.HYPO_LEVEL2
    if censored == "HI":
        return Category.HYPER_SEVERE
    if mmol is None:
        raise ValueError("a glucose reading needs a value or a censored marker")
    if mmol < 3.0:
        return Category.HYPO_LEVEL2
    if mmol < 3.9:
        return Category.HYPO_LEVEL1
    if mmol >= 33.3:
        return Category.HYPER_SEVERE
    if mmol > 13.9:
        return Category.HYPER_MARKED
    return Category.NORMAL


def _bump(hour: float, *, centre: float, width: float) -> float:
    distance = abs(hour - centre) % 24
    distance = min(distance, 24 - distance)
    return math.exp(-(distance**2) / (2 * width**2))


def _hour(local: datetime) -> float:
    return local.hour + local.minute / 60 + local.second / 3600


def _fold(value: float, low: float, high: float) -> float:
    # Reflect at the band's edges rather than clamp, so values do not pile up on the edge.
    if value > high:
        value = high - (value - high)
    elif value < low:
        value = low + (low - value)
    return _clamp(value, low, high)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _weighted(choices: tuple[tuple[_T, float], ...], rng: random.Random) -> _T:
    values = [value for value, _ in choices]
    weights = [weight for _, weight in choices]
    return rng.choices(values, weights)[0]


def parse_mix_spec(spec: str) -> dict[Condition, float]:
    """Parse `controlled_htn=3,t2d=2,...` into condition weights; raises MixSpecError on a bad spec.

    Conditions left out get weight 0; weights are relative (they need not add up to 1).
    """
    known = ", ".join(condition.value for condition in Condition)
    weights: dict[Condition, float] = {}
    for item in spec.split(","):
        name, sep, text = item.strip().partition("=")
        name = name.strip().lower()
        if not sep or not name or not text.strip():
            raise MixSpecError(f"condition {item.strip()!r} must look like NAME=WEIGHT, e.g. t2d=2")
        try:
            condition = Condition(name)
        except ValueError:
            raise MixSpecError(f"unknown condition {name!r}; known conditions: {known}") from None
        if condition in weights:
            raise MixSpecError(f"condition {name!r} is given twice")
        try:
            weight = float(text)
        except ValueError:
            raise MixSpecError(f"weight of {name!r} must be a number, got {text.strip()!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise MixSpecError(f"weight of {name!r} must be a number >= 0, got {text.strip()}")
        weights[condition] = weight
    if sum(weights.values()) <= 0:
        raise MixSpecError("at least one condition needs a weight above 0")
    return weights
