"""Simulated physiology: values stay in the contract's ranges, episodes of each kind occur, rhythms show."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from device_sim.errors import MixSpecError
from device_sim.profiles import (
    Category,
    Condition,
    GlucoseTraits,
    PatientProfile,
    bp_category,
    glucose_category,
    make_profile,
    parse_mix_spec,
    sample_bp,
    sample_glucose,
)

TYUMEN = ZoneInfo("Asia/Yekaterinburg")
MIDNIGHT = datetime(2026, 11, 28, tzinfo=TYUMEN)
CONTRACT_FLAGS = {
    "irregular_pulse",
    "movement",
    "cuff_loose",
    "position_error",
    "low_battery",
    "control_solution",
}
READINGS = 4_000


def _profiles(condition: Condition, count: int, seed: int = 1) -> list[PatientProfile]:
    rng = random.Random(seed)
    return [make_profile(condition, rng) for _ in range(count)]


def _bp_categories(condition: Condition, danger: float, seed: int = 1) -> Counter[Category]:
    rng = random.Random(seed)
    counts: Counter[Category] = Counter()
    for index, profile in enumerate(_profiles(condition, 20, seed)):
        assert profile.bp is not None
        for reading in range(READINGS // 20):
            local = MIDNIGHT + timedelta(minutes=37 * (index * 1000 + reading))
            sample = sample_bp(profile.bp, local, rng, danger=danger)
            counts[bp_category(sample.systolic, sample.diastolic)] += 1
    return counts


def _glucose_categories(condition: Condition, danger: float, seed: int = 1) -> Counter[Category]:
    rng = random.Random(seed)
    counts: Counter[Category] = Counter()
    for index, profile in enumerate(_profiles(condition, 20, seed)):
        assert profile.glucose is not None
        for reading in range(READINGS // 20):
            local = MIDNIGHT + timedelta(minutes=41 * (index * 1000 + reading))
            sample = sample_glucose(profile.glucose, local, rng, danger=danger)
            counts[glucose_category(sample.mmol)] += 1
    return counts


@pytest.mark.parametrize(
    ("condition", "has_bp", "has_glucose"),
    [
        (Condition.CONTROLLED_HTN, True, False),
        (Condition.UNCONTROLLED_HTN, True, False),
        (Condition.HYPOTENSION, True, False),
        (Condition.T1D, False, True),
    ],
)
def test_each_condition_gets_the_traits_of_its_devices(
    condition: Condition, has_bp: bool, has_glucose: bool
) -> None:
    for profile in _profiles(condition, 50):
        assert (profile.bp is not None) is has_bp
        assert (profile.glucose is not None) is has_glucose


def test_about_half_of_type_2_diabetics_also_have_hypertension() -> None:
    profiles = _profiles(Condition.T2D, 400)
    assert all(profile.glucose is not None for profile in profiles)
    with_bp = sum(profile.bp is not None for profile in profiles)
    assert 140 < with_bp < 260


@pytest.mark.parametrize(
    "condition", [Condition.CONTROLLED_HTN, Condition.UNCONTROLLED_HTN, Condition.HYPOTENSION]
)
def test_blood_pressure_stays_inside_the_device_range(condition: Condition) -> None:
    rng = random.Random(5)
    for profile in _profiles(condition, 30):
        assert profile.bp is not None
        for reading in range(200):
            sample = sample_bp(profile.bp, MIDNIGHT + timedelta(minutes=53 * reading), rng, danger=0.3)
            assert 60 <= sample.systolic <= 280
            assert 30 <= sample.diastolic <= 200
            # The gateway flags pulse pressure outside 10-150 as suspicious; physiology alone stays inside.
            assert 10 <= sample.systolic - sample.diastolic <= 150
            assert 25 <= sample.pulse <= 250
            assert set(sample.flags) <= CONTRACT_FLAGS


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (Condition.UNCONTROLLED_HTN, {Category.SEVERE_BP, Category.HIGH_BP}),
        (Condition.CONTROLLED_HTN, {Category.HIGH_BP, Category.SEVERE_BP}),
        (Condition.HYPOTENSION, {Category.LOW_BP}),
    ],
)
def test_blood_pressure_episodes_of_the_condition_occur(
    condition: Condition, expected: set[Category]
) -> None:
    counts = _bp_categories(condition, danger=0.05)
    for category in expected:
        assert counts[category] > 0, counts
    assert counts[Category.NORMAL] > READINGS // 2


def test_uncontrolled_hypertension_has_severe_readings_above_180_or_120() -> None:
    counts = _bp_categories(Condition.UNCONTROLLED_HTN, danger=0.05)
    # About 5 % episodes, 70 % of them severe.
    assert 0.015 * READINGS < counts[Category.SEVERE_BP] < 0.07 * READINGS
    assert counts[Category.LOW_BP] == 0


def test_hypotension_prone_patients_have_systolic_below_90_episodes() -> None:
    counts = _bp_categories(Condition.HYPOTENSION, danger=0.05)
    assert 0.025 * READINGS < counts[Category.LOW_BP] < 0.08 * READINGS
    assert counts[Category.SEVERE_BP] == 0


@pytest.mark.parametrize(
    ("condition", "dangerous"),
    [
        (Condition.CONTROLLED_HTN, {Category.SEVERE_BP, Category.LOW_BP}),
        (Condition.UNCONTROLLED_HTN, {Category.SEVERE_BP, Category.LOW_BP}),
        (Condition.HYPOTENSION, {Category.SEVERE_BP, Category.LOW_BP}),
    ],
)
def test_no_critical_blood_pressure_without_episodes(condition: Condition, dangerous: set[Category]) -> None:
    counts = _bp_categories(condition, danger=0.0)
    assert not dangerous & set(counts), counts


def test_type_1_diabetes_has_hypoglycaemia_of_both_levels() -> None:
    counts = _glucose_categories(Condition.T1D, danger=0.1)
    assert counts[Category.HYPO_LEVEL1] > 0
    assert counts[Category.HYPO_LEVEL2] > 0
    assert counts[Category.HYPO_LEVEL1] + counts[Category.HYPO_LEVEL2] > 0.05 * READINGS


def test_type_2_diabetes_has_marked_and_severe_hyperglycaemia() -> None:
    counts = _glucose_categories(Condition.T2D, danger=0.1)
    assert counts[Category.HYPER_MARKED] > 0.05 * READINGS
    assert counts[Category.HYPER_SEVERE] > 0


@pytest.mark.parametrize("condition", [Condition.T1D, Condition.T2D])
def test_no_dangerous_glucose_without_episodes(condition: Condition) -> None:
    counts = _glucose_categories(condition, danger=0.0)
    assert set(counts) == {Category.NORMAL}


def test_glucose_values_are_physiological() -> None:
    rng = random.Random(2)
    for condition in (Condition.T1D, Condition.T2D):
        for profile in _profiles(condition, 20):
            assert profile.glucose is not None
            for reading in range(200):
                sample = sample_glucose(
                    profile.glucose, MIDNIGHT + timedelta(minutes=47 * reading), rng, danger=0.2
                )
                assert 0.2 < sample.mmol < 50
                assert set(sample.flags) <= CONTRACT_FLAGS


def test_morning_surge_and_night_dip() -> None:
    rng = random.Random(9)
    profile = _profiles(Condition.CONTROLLED_HTN, 1)[0]
    assert profile.bp is not None

    def mean_systolic(hour: int) -> float:
        days = [MIDNIGHT + timedelta(days=day, hours=hour) for day in range(400)]
        return statistics.fmean(sample_bp(profile.bp, day, rng, danger=0).systolic for day in days)  # type: ignore[arg-type]

    morning, afternoon, night = mean_systolic(8), mean_systolic(14), mean_systolic(3)
    assert morning > afternoon + 4
    assert night < afternoon - 6


def test_meal_context_follows_the_hour() -> None:
    rng = random.Random(4)
    traits = GlucoseTraits(fasting=7.0, variability=1.0, meal_rise=3.0, episodes=(("hypo", 1.0),))

    def meals(hour: int) -> Counter[str]:
        return Counter(
            sample_glucose(traits, MIDNIGHT + timedelta(hours=hour), rng, danger=0).meal for _ in range(300)
        )

    assert meals(7).most_common(1)[0][0] == "fasting"
    assert meals(14).most_common(1)[0][0] == "after_meal"
    assert meals(22).most_common(1)[0][0] == "bedtime"
    assert 10 < meals(7)["random"] < 60


def test_after_meal_glucose_is_higher_than_fasting() -> None:
    rng = random.Random(6)
    traits = GlucoseTraits(fasting=7.0, variability=0.8, meal_rise=3.0, episodes=(("hyper", 1.0),))
    fasting = [sample_glucose(traits, MIDNIGHT + timedelta(hours=7), rng, danger=0) for _ in range(500)]
    after = [sample_glucose(traits, MIDNIGHT + timedelta(hours=14), rng, danger=0) for _ in range(500)]
    fasting_mean = statistics.fmean(s.mmol for s in fasting if s.meal == "fasting")
    after_mean = statistics.fmean(s.mmol for s in after if s.meal == "after_meal")
    assert after_mean > fasting_mean + 1.5


def test_same_seed_same_values() -> None:
    def run(seed: int) -> list[tuple[int, int, int]]:
        rng = random.Random(seed)
        profile = make_profile(Condition.UNCONTROLLED_HTN, rng)
        assert profile.bp is not None
        return [
            (s.systolic, s.diastolic, s.pulse)
            for s in (
                sample_bp(profile.bp, MIDNIGHT + timedelta(hours=h), rng, danger=0.1) for h in range(100)
            )
        ]

    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize(
    ("systolic", "diastolic", "category"),
    [
        (180, 90, Category.SEVERE_BP),
        (170, 120, Category.SEVERE_BP),
        (179, 119, Category.HIGH_BP),
        (160, 80, Category.HIGH_BP),
        (150, 100, Category.HIGH_BP),
        (89, 70, Category.LOW_BP),
        (110, 59, Category.LOW_BP),
        (90, 60, Category.NORMAL),
        (159, 99, Category.NORMAL),
    ],
)
def test_bp_category_thresholds(systolic: int, diastolic: int, category: Category) -> None:
    assert bp_category(systolic, diastolic) is category


@pytest.mark.parametrize(
    ("mmol", "censored", "category"),
    [
        (None, "LO", Category.HYPO_LEVEL2),
        (None, "HI", Category.HYPER_SEVERE),
        (2.99, None, Category.HYPO_LEVEL2),
        (3.0, None, Category.HYPO_LEVEL1),
        (3.89, None, Category.HYPO_LEVEL1),
        (3.9, None, Category.NORMAL),
        (13.9, None, Category.NORMAL),
        (14.0, None, Category.HYPER_MARKED),
        (33.3, None, Category.HYPER_SEVERE),
    ],
)
def test_glucose_category_thresholds(mmol: float | None, censored: str | None, category: Category) -> None:
    assert glucose_category(mmol, censored) is category  # type: ignore[arg-type]


def test_mix_spec_parses_weights() -> None:
    assert parse_mix_spec("t1d=1, T2D=2.5,hypotension=0") == {
        Condition.T1D: 1.0,
        Condition.T2D: 2.5,
        Condition.HYPOTENSION: 0.0,
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("t1d", "must look like NAME=WEIGHT"),
        ("=1", "must look like NAME=WEIGHT"),
        ("t1d=", "must look like NAME=WEIGHT"),
        ("diabetes=1", "unknown condition 'diabetes'; known conditions: controlled_htn"),
        ("t1d=1,t1d=2", "given twice"),
        ("t1d=lots", "must be a number"),
        ("t1d=-1", "must be a number >= 0"),
        ("t1d=nan", "must be a number >= 0"),
        ("t1d=0,t2d=0", "at least one condition"),
    ],
)
def test_mix_spec_errors_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(MixSpecError, match=message):
        parse_mix_spec(spec)
