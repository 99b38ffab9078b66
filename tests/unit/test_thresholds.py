"""Thresholds: DOMAIN.md defaults, clinic file, per-patient overrides and their validation."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from alerts.thresholds import (
    THRESHOLD_DESCRIPTIONS,
    Thresholds,
    ThresholdsError,
    load_clinic_thresholds,
    with_overrides,
)
from rpmgw.errors import SettingsError

DOMAIN_DEFAULTS = [
    # field, DOMAIN.md value
    ("severe_sbp", 180),
    ("severe_dbp", 120),
    ("high_sbp", 160),
    ("high_dbp", 100),
    ("high_required", 2),
    ("high_of_last", 3),
    ("high_window_hours", 24),
    ("uncontrolled_sbp", 135),
    ("uncontrolled_dbp", 85),
    ("uncontrolled_days", 7),
    ("uncontrolled_min_readings", 12),
    ("low_sbp", 90),
    ("low_dbp", 60),
    ("pulse_urgent_low", 40),
    ("pulse_urgent_high", 110),
    ("pulse_routine_low", 50),
    ("pulse_routine_high", 100),
    ("hypo_l2_mmol", 3.0),
    ("hypo_l1_mmol", 3.9),
    ("hyper_marked_mmol", 13.9),
    ("hyper_severe_mmol", 33.3),
    ("repeated_hypo_count", 2),
    ("repeated_hypo_days", 7),
    ("confirm_window_min_minutes", 5),
    ("confirm_window_max_minutes", 15),
    ("no_data_days_bp", 3),
    ("no_data_days_glucose", 2),
    ("device_silent_days", 7),
]


@pytest.mark.parametrize(("field", "value"), DOMAIN_DEFAULTS, ids=[row[0] for row in DOMAIN_DEFAULTS])
def test_domain_defaults(field: str, value: float) -> None:
    assert getattr(Thresholds(), field) == value


def test_every_field_is_a_domain_number_and_described() -> None:
    assert set(Thresholds.model_fields) == {field for field, _ in DOMAIN_DEFAULTS}
    assert set(THRESHOLD_DESCRIPTIONS) == set(Thresholds.model_fields)
    assert all(text and text != field for field, text in THRESHOLD_DESCRIPTIONS.items())


def test_frozen() -> None:
    with pytest.raises(ValidationError):
        Thresholds().low_sbp = 100  # type: ignore[misc]


def test_history_needed_covers_the_longest_window() -> None:
    assert Thresholds().history_needed == timedelta(days=7)
    assert with_overrides(Thresholds(), {"uncontrolled_days": 10}).history_needed == timedelta(days=10)


GOOD_OVERRIDES = [
    # id, overrides
    ("elderly patient", {"low_sbp": 100}),
    ("pregnant patient", {"high_sbp": 140, "high_dbp": 90}),
    ("tighter glucose", {"hypo_l1_mmol": 4.5, "hypo_l2_mmol": 3.5}),
    ("an integer for a mmol/L number", {"hyper_marked_mmol": 14}),
    ("one high reading is enough", {"high_required": 1}),
]


@pytest.mark.parametrize(
    "overrides", [row[1] for row in GOOD_OVERRIDES], ids=[row[0] for row in GOOD_OVERRIDES]
)
def test_good_overrides(overrides: dict[str, float]) -> None:
    thresholds = with_overrides(Thresholds(), overrides)
    assert {key: getattr(thresholds, key) for key in overrides} == overrides
    untouched = set(Thresholds.model_fields) - set(overrides)
    assert all(getattr(thresholds, key) == getattr(Thresholds(), key) for key in untouched)


BAD_OVERRIDES = [
    # id, overrides, words the message must contain
    ("unknown key", {"low_sistolic": 100}, ["'low_sistolic'", "unknown threshold", "low_sbp"]),
    ("negative", {"low_sbp": -1}, ["low_sbp", "greater than 0", "-1"]),
    ("zero", {"uncontrolled_min_readings": 0}, ["uncontrolled_min_readings", "greater than 0"]),
    ("beyond any monitor", {"severe_sbp": 1800}, ["severe_sbp", "less than or equal to 300"]),
    ("text for a number", {"severe_sbp": "180"}, ["severe_sbp", "integer", "'180'"]),
    ("fraction for mmHg", {"severe_sbp": 180.5}, ["severe_sbp", "integer"]),
    ("boolean", {"high_required": True}, ["high_required", "integer"]),
    ("not a number", {"hypo_l1_mmol": float("nan")}, ["hypo_l1_mmol", "finite"]),
    ("level 2 above level 1", {"hypo_l2_mmol": 4.0}, ["hypo_l2_mmol (4.0) must be below hypo_l1_mmol (3.9)"]),
    ("level 1 above marked hyper", {"hypo_l1_mmol": 14.0}, ["hypo_l1_mmol", "hyper_marked_mmol"]),
    ("marked above severe hyper", {"hyper_marked_mmol": 33.3}, ["hyper_marked_mmol", "hyper_severe_mmol"]),
    ("urgent pulse limit inside routine", {"pulse_urgent_low": 50}, ["pulse_urgent_low (50) must be below pulse_routine_low (50)"]),
    ("routine high above urgent high", {"pulse_routine_high": 120}, ["pulse_routine_high", "pulse_urgent_high"]),
    ("routine low above routine high", {"pulse_routine_low": 100}, ["pulse_routine_low", "pulse_routine_high"]),
    ("empty confirm window", {"confirm_window_min_minutes": 15}, ["confirm_window_min_minutes (15) must be below confirm_window_max_minutes (15)"]),
    ("low above high", {"low_sbp": 160}, ["low_sbp (160) must be below high_sbp (160)"]),
    ("high above severe", {"high_dbp": 125}, ["high_dbp", "severe_dbp"]),
    ("low above the mean threshold", {"low_dbp": 90}, ["low_dbp", "uncontrolled_dbp"]),
    ("2 of 1", {"high_of_last": 1}, ["high_required (2) must not exceed high_of_last (1)"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "words"), [row[1:] for row in BAD_OVERRIDES], ids=[row[0] for row in BAD_OVERRIDES]
)
def test_bad_overrides_name_the_field(overrides: dict[str, float], words: list[str]) -> None:
    with pytest.raises(ThresholdsError) as caught:
        with_overrides(Thresholds(), overrides, source="patient:p-1:v3")
    message = str(caught.value)
    assert message.startswith("patient:p-1:v3: ")
    for word in words:
        assert word in message


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ThresholdsError) as caught:
        with_overrides(Thresholds(), {"hypo_l2_mmol": 4.0, "pulse_urgent_low": 60})
    assert "hypo_l2_mmol" in str(caught.value)
    assert "pulse_urgent_low" in str(caught.value)


def test_patient_overrides_apply_over_clinic_overrides() -> None:
    clinic = with_overrides(Thresholds(), {"high_sbp": 150, "low_sbp": 95})
    patient = with_overrides(clinic, {"low_sbp": 100})
    assert (patient.high_sbp, patient.low_sbp) == (150, 100)
    # Validated as a whole: fine against the defaults, not against this clinic's high_sbp.
    with pytest.raises(ThresholdsError, match="low_sbp \\(155\\) must be below high_sbp \\(150\\)"):
        with_overrides(clinic, {"low_sbp": 155})


# --- the clinic's file ----------------------------------------------------------------------------


def test_no_file_means_the_defaults() -> None:
    assert load_clinic_thresholds(None) == Thresholds()


def test_file_overrides(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"low_sbp": 95, "hypo_l1_mmol": 4.0}), encoding="utf-8")
    assert load_clinic_thresholds(path) == Thresholds(low_sbp=95, hypo_l1_mmol=4.0)


BAD_FILES = [
    # id, file content (None: no file), words the message must contain
    ("missing file", None, ["cannot be read"]),
    ("not JSON", "{low_sbp: 95}", ["is not valid JSON"]),
    ("not an object", "[95]", ["must be a JSON object"]),
    ("duplicate key", '{"low_sbp": 95, "low_sbp": 100}', ["duplicate key 'low_sbp'"]),
    ("unknown key", '{"low_sbp": 95, "hypo_l3_mmol": 2.0}', ["unknown threshold 'hypo_l3_mmol'"]),
    ("bad value", '{"low_sbp": "95"}', ["low_sbp: must be a valid integer"]),
    ("contradiction", '{"hypo_l2_mmol": 3.9}', ["hypo_l2_mmol (3.9) must be below hypo_l1_mmol (3.9)"]),
    ("not UTF-8", b'{"low_sbp": 95, "note": "\xff"}', ["not UTF-8"]),
]


@pytest.mark.parametrize(
    ("content", "words"), [row[1:] for row in BAD_FILES], ids=[row[0] for row in BAD_FILES]
)
def test_bad_file_names_the_file_and_key(
    tmp_path: Path, content: str | bytes | None, words: list[str]
) -> None:
    path = tmp_path / "clinic-thresholds.json"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ThresholdsError) as caught:
        load_clinic_thresholds(path)
    assert isinstance(caught.value, SettingsError)
    message = str(caught.value)
    assert message.startswith(f"thresholds file {path}: ")
    for word in words:
        assert word in message
