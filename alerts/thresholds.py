"""The clinical numbers of the rules (DOMAIN.md, "Clinical defaults"), per clinic and per patient.

`Thresholds()` holds the defaults; a clinic overrides some of them in a JSON file
(`load_clinic_thresholds`) and a patient's doctor overrides some more (`with_overrides`, e.g. an
elderly patient's `low_sbp=100`). Every combination is validated the same way, so a threshold set
that contradicts itself (level 2 hypoglycaemia above level 1...) is refused with the field named.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from rpmgw.errors import SettingsError


class ThresholdsError(SettingsError):
    """A threshold override is unknown or invalid; the message names its source (file, patient) and key."""


class Thresholds(BaseModel):
    """Every number the rules use; defaults from DOMAIN.md. Units are in the names (mmHg unless said)."""

    # strict: a "180" string or a `true` in a JSON file is a mistake, not a number.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    severe_sbp: int = Field(180, gt=0, le=300, description="Severe BP: systolic at or above (mmHg)")
    severe_dbp: int = Field(120, gt=0, le=300, description="Severe BP: diastolic at or above (mmHg)")
    high_sbp: int = Field(160, gt=0, le=300, description="High BP: systolic at or above (mmHg)")
    high_dbp: int = Field(100, gt=0, le=300, description="High BP: diastolic at or above (mmHg)")
    high_required: int = Field(
        2, gt=0, le=100, description="High BP: how many of the last readings must be high"
    )
    high_of_last: int = Field(3, gt=0, le=100, description="High BP: how many last readings are looked at")
    high_window_hours: int = Field(
        24, gt=0, le=168, description="High BP: the last readings must lie within this many hours"
    )
    uncontrolled_sbp: int = Field(
        135, gt=0, le=300, description="Uncontrolled BP: mean systolic at or above (mmHg)"
    )
    uncontrolled_dbp: int = Field(
        85, gt=0, le=300, description="Uncontrolled BP: mean diastolic at or above (mmHg)"
    )
    uncontrolled_days: int = Field(7, gt=0, le=90, description="Uncontrolled BP: days the mean is taken over")
    uncontrolled_min_readings: int = Field(
        12, gt=0, le=1000, description="Uncontrolled BP: fewest readings for a mean to count"
    )
    low_sbp: int = Field(90, gt=0, le=300, description="Low BP: systolic below (mmHg)")
    low_dbp: int = Field(60, gt=0, le=300, description="Low BP: diastolic below (mmHg)")
    pulse_urgent_low: int = Field(40, gt=0, le=250, description="Pulse: urgent below (bpm)")
    pulse_urgent_high: int = Field(110, gt=0, le=250, description="Pulse: urgent above (bpm)")
    pulse_routine_low: int = Field(50, gt=0, le=250, description="Pulse: routine below (bpm)")
    pulse_routine_high: int = Field(100, gt=0, le=250, description="Pulse: routine above (bpm)")
    hypo_l2_mmol: float = Field(
        3.0, gt=0, le=100, description="Level 2 hypoglycaemia: glucose below (mmol/L)"
    )
    hypo_l1_mmol: float = Field(
        3.9, gt=0, le=100, description="Level 1 hypoglycaemia: glucose below (mmol/L)"
    )
    hyper_marked_mmol: float = Field(
        13.9, gt=0, le=100, description="Marked hyperglycaemia: glucose above (mmol/L)"
    )
    hyper_severe_mmol: float = Field(
        33.3, gt=0, le=100, description="Severe hyperglycaemia: glucose at or above (mmol/L)"
    )
    repeated_hypo_count: int = Field(
        2, gt=0, le=100, description="Repeated hypoglycaemia: this many readings below level 1"
    )
    repeated_hypo_days: int = Field(
        7, gt=0, le=90, description="Repeated hypoglycaemia: within this many days"
    )
    confirm_window_min_minutes: int = Field(
        5, gt=0, le=120, description="Severe BP: a repeat counts from this many minutes after"
    )
    confirm_window_max_minutes: int = Field(
        15, gt=0, le=120, description="Severe BP: a repeat counts up to this many minutes after"
    )
    no_data_days_bp: int = Field(
        3, gt=0, le=90, description="No BP reading for this many days: reminder (alert after twice that)"
    )
    no_data_days_glucose: int = Field(
        2, gt=0, le=90, description="No glucose reading for this many days: reminder (alert after twice that)"
    )
    device_silent_days: int = Field(
        7, gt=0, le=90, description="An enrolled device silent for this many days: alert"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Thresholds:
        problems = [
            f"{low} ({getattr(self, low)}) must be below {high} ({getattr(self, high)})"
            for low, high in _ORDER
            if not getattr(self, low) < getattr(self, high)
        ]
        if self.high_required > self.high_of_last:
            problems.append(
                f"high_required ({self.high_required}) must not exceed high_of_last ({self.high_of_last})"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def history_needed(self) -> timedelta:
        """How far before a reading the rules look: the history handed to `evaluate` must cover it."""
        return max(
            timedelta(days=self.uncontrolled_days),
            timedelta(days=self.repeated_hypo_days),
            timedelta(hours=self.high_window_hours),
            # Whether the previous severe reading was itself a confirmation looks one window further back.
            timedelta(minutes=2 * self.confirm_window_max_minutes),
        )


# (lower, upper): lower must be strictly below upper.
_ORDER: Final = (
    ("low_sbp", "high_sbp"),
    ("high_sbp", "severe_sbp"),
    ("low_sbp", "uncontrolled_sbp"),
    ("low_dbp", "high_dbp"),
    ("high_dbp", "severe_dbp"),
    ("low_dbp", "uncontrolled_dbp"),
    ("pulse_urgent_low", "pulse_routine_low"),
    ("pulse_routine_low", "pulse_routine_high"),
    ("pulse_routine_high", "pulse_urgent_high"),
    ("hypo_l2_mmol", "hypo_l1_mmol"),
    ("hypo_l1_mmol", "hyper_marked_mmol"),
    ("hyper_marked_mmol", "hyper_severe_mmol"),
    ("confirm_window_min_minutes", "confirm_window_max_minutes"),
)

THRESHOLD_DESCRIPTIONS: Final[Mapping[str, str]] = {
    name: field.description or name for name, field in Thresholds.model_fields.items()
}


def with_overrides(
    base: Thresholds, overrides: Mapping[str, int | float], *, source: str = "threshold overrides"
) -> Thresholds:
    """`base` with some numbers replaced, validated as a whole; `source` names them in errors.

    Raises ThresholdsError for an unknown key, a value of the wrong kind or out of range, or a
    combination that contradicts itself (e.g. low_sbp above high_sbp).
    """
    return _validated(base, overrides, source)


def load_clinic_thresholds(path: Path | None) -> Thresholds:
    """The clinic's thresholds: the defaults, overridden by the JSON object in `path` (None: defaults)."""
    if path is None:
        return Thresholds()
    source = f"thresholds file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ThresholdsError(f"{source}: cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ThresholdsError(f"{source}: is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:
        raise ThresholdsError(f"{source}: is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ThresholdsError(
            f'{source}: must be a JSON object of threshold overrides, e.g. {{"low_sbp": 100}}'
        )
    return _validated(Thresholds(), document, source)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _validated(base: Thresholds, overrides: Mapping[str, object], source: str) -> Thresholds:
    unknown = [key for key in overrides if key not in Thresholds.model_fields]
    if unknown:
        raise ThresholdsError(
            f"{source}: unknown threshold {unknown[0]!r} (known: {', '.join(Thresholds.model_fields)})"
        )
    try:
        return Thresholds.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(_error_text(err) for err in exc.errors(include_url=False))
        raise ThresholdsError(f"{source}: {problems}") from exc


def _error_text(err: ErrorDetails) -> str:
    message = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be", 1)
    if not err["loc"]:  # a rule across fields: its text names them
        return message
    key = ".".join(str(part) for part in err["loc"])
    return f"{key}: {message} (got {err['input']!r})"
