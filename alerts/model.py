"""The alert domain's types, shared by the pure rules, the lifecycle and the notifications."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

from gateway.timeseries.base import StoredReading
from gateway.wire import BloodPressureReading


class Severity(StrEnum):
    """How fast someone must act: critical (minutes), urgent (same day), routine (next review)."""

    CRITICAL = "critical"
    URGENT = "urgent"
    ROUTINE = "routine"

    @property
    def rank(self) -> int:
        """Bigger is more severe (for sorting and upgrades)."""
        return {Severity.CRITICAL: 3, Severity.URGENT: 2, Severity.ROUTINE: 1}[self]


class RuleId(StrEnum):
    """Every clinical rule of DOMAIN.md."""

    SEVERE_BP = "severe_bp"
    HIGH_BP = "high_bp"
    UNCONTROLLED_BP = "uncontrolled_bp"
    LOW_BP = "low_bp"
    PULSE_EXTREME = "pulse_extreme"
    PULSE_ABNORMAL = "pulse_abnormal"
    HYPO_L2 = "hypo_l2"
    HYPO_L1 = "hypo_l1"
    HYPER_SEVERE = "hyper_severe"
    HYPER_MARKED = "hyper_marked"
    REPEATED_HYPO = "repeated_hypo"
    NO_DATA = "no_data"
    DEVICE_SILENT = "device_silent"


class Family(StrEnum):
    """Rules of one family share one open alert per patient; the most severe rule wins."""

    BP_HIGH = "bp_high"
    UNCONTROLLED_BP = "uncontrolled_bp"
    LOW_BP = "low_bp"
    PULSE = "pulse"
    HYPO = "hypo"
    HYPER = "hyper"
    REPEATED_HYPO = "repeated_hypo"
    NO_DATA = "no_data"
    DEVICE_SILENT = "device_silent"


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """A rule's place: its family and severity, and its name for people."""

    family: Family
    severity: Severity
    title_en: str
    title_ru: str


RULES: dict[RuleId, RuleInfo] = {
    RuleId.SEVERE_BP: RuleInfo(
        Family.BP_HIGH, Severity.CRITICAL, "Severe blood pressure", "Очень высокое давление"
    ),
    RuleId.HIGH_BP: RuleInfo(Family.BP_HIGH, Severity.URGENT, "High blood pressure", "Высокое давление"),
    RuleId.UNCONTROLLED_BP: RuleInfo(
        Family.UNCONTROLLED_BP,
        Severity.ROUTINE,
        "Uncontrolled home blood pressure",
        "Неконтролируемое давление",
    ),
    RuleId.LOW_BP: RuleInfo(Family.LOW_BP, Severity.URGENT, "Low blood pressure", "Низкое давление"),
    RuleId.PULSE_EXTREME: RuleInfo(
        Family.PULSE, Severity.URGENT, "Pulse far out of range", "Пульс сильно вне нормы"
    ),
    RuleId.PULSE_ABNORMAL: RuleInfo(Family.PULSE, Severity.ROUTINE, "Pulse out of range", "Пульс вне нормы"),
    RuleId.HYPO_L2: RuleInfo(
        Family.HYPO, Severity.CRITICAL, "Level 2 hypoglycaemia", "Гипогликемия 2 уровня"
    ),
    RuleId.HYPO_L1: RuleInfo(Family.HYPO, Severity.URGENT, "Level 1 hypoglycaemia", "Гипогликемия 1 уровня"),
    RuleId.HYPER_SEVERE: RuleInfo(
        Family.HYPER, Severity.CRITICAL, "Severe hyperglycaemia", "Тяжёлая гипергликемия"
    ),
    RuleId.HYPER_MARKED: RuleInfo(
        Family.HYPER, Severity.URGENT, "Marked hyperglycaemia", "Выраженная гипергликемия"
    ),
    RuleId.REPEATED_HYPO: RuleInfo(
        Family.REPEATED_HYPO, Severity.URGENT, "Repeated hypoglycaemia", "Повторные гипогликемии"
    ),
    RuleId.NO_DATA: RuleInfo(Family.NO_DATA, Severity.ROUTINE, "No readings", "Нет измерений"),
    RuleId.DEVICE_SILENT: RuleInfo(Family.DEVICE_SILENT, Severity.ROUTINE, "Device silent", "Прибор молчит"),
}


class DecisionKind(StrEnum):
    """What a rule concluded about one reading."""

    BREACH = "breach"  # a confirmed value breaches the rule
    REMEASURE = "remeasure"  # a quality-flagged value would breach: re-measure advice, no confirmed alert
    CLEAR = "clear"  # back to normal for this family


class Confirmation(StrEnum):
    """Severe-BP confirm-by-repeat state."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    NOT_CONFIRMED = "not_confirmed"
    NO_REPEAT = "no_repeat"


@dataclass(slots=True)
class ReadingView:
    """What the rules need of a stored reading, flat (glucose always in mmol/L).

    Not changed once built (the history cache shares views between batches); not frozen, because one
    is built for every reading decided and every one loaded, and a frozen dataclass's constructor (a
    call of `object.__setattr__` per field) cost three times as much.
    """

    msg_id: str
    device_id: str
    type: Literal["blood_pressure", "glucose"]
    measured_at: datetime
    systolic: int | None = None
    diastolic: int | None = None
    pulse: int | None = None
    glucose_mmol: float | None = None
    censored: Literal["LO", "HI"] | None = None
    quality: tuple[str, ...] = ()

    @classmethod
    def from_stored(cls, stored: StoredReading) -> ReadingView:
        """Flatten a stored reading."""
        reading = stored.reading
        # Positional: the fields' order above (a view is built per reading decided and per one loaded).
        if isinstance(reading, BloodPressureReading):
            return cls(
                reading.msg_id,
                reading.device_id,
                "blood_pressure",
                reading.measured_at,
                reading.systolic,
                reading.diastolic,
                reading.pulse,
                None,
                None,
                stored.quality,
            )
        return cls(
            reading.msg_id,
            reading.device_id,
            "glucose",
            reading.measured_at,
            None,
            None,
            None,
            reading.value_mmol,
            reading.censored,
            stored.quality,
        )

    @property
    def suspect(self) -> bool:
        """Quality-flagged: needs re-measurement rather than counting as a confirmed value."""
        return bool(self.quality)


@dataclass(slots=True)
class Decision:
    """One rule's conclusion about one reading (or, for time rules, about a patient at `now`).

    Not changed once made; not frozen, because the rules make one per family for the newest reading of
    each patient (a drain from 20,000 devices: most readings), and a frozen dataclass's constructor cost
    three times as much (profiled: a twentieth of such a drain).
    """

    kind: DecisionKind
    rule: RuleId
    patient_id: str
    msg_id: str | None
    measured_at: datetime | None
    value_text: str = ""
    worst_key: float = 0.0  # bigger is worse: keeps the alert's worst value
    late: bool = False
    confirmation: Confirmation | None = None
    detail: str = ""

    @property
    def family(self) -> Family:
        """The rule's family."""
        return RULES[self.rule].family

    @property
    def severity(self) -> Severity:
        """The rule's severity."""
        return RULES[self.rule].severity
