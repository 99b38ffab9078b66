"""Pure parts of the lifecycle: the rules' value texts become advice parameters the templates accept,
every advice template exists, and an alert's two axes read as one state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts.lifecycle import ADVICE_TEMPLATES, advice_params
from alerts.model import DecisionKind, ReadingView, RuleId
from alerts.notify.templates import TEMPLATES, render
from alerts.rules import evaluate
from alerts.tables import Alert
from alerts.thresholds import Thresholds
from alerts.timerules import REMINDER_TEMPLATES, TimeRuleReport

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
LATE_AFTER = timedelta(minutes=60)


def _bp(systolic: int, diastolic: int) -> ReadingView:
    return ReadingView("m1", "bp-1", "blood_pressure", NOW, systolic=systolic, diastolic=diastolic, pulse=70)


def _glucose(value: float | None, censored: str | None = None) -> ReadingView:
    return ReadingView("g1", "gl-1", "glucose", NOW, glucose_mmol=value, censored=censored)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reading", "rule", "params"),
    [
        (_bp(184, 112), RuleId.SEVERE_BP, {"systolic": 184, "diastolic": 112}),
        (_bp(150, 125), RuleId.SEVERE_BP, {"systolic": 150, "diastolic": 125}),
        (_bp(85, 70), RuleId.LOW_BP, {"systolic": 85, "diastolic": 70}),
        (_glucose(2.9), RuleId.HYPO_L2, {"glucose": 2.9}),
        (_glucose(54 / 18.016), RuleId.HYPO_L2, {"glucose": pytest.approx(2.997, abs=0.001)}),
        (_glucose(None, "LO"), RuleId.HYPO_L2, {"glucose": "LO"}),
        (_glucose(3.5), RuleId.HYPO_L1, {"glucose": 3.5}),
        (_glucose(15.2), RuleId.HYPER_MARKED, {"glucose": 15.2}),
        (_glucose(None, "HI"), RuleId.HYPER_SEVERE, {"glucose": "HI"}),
    ],
    ids=["severe-sbp", "severe-dbp", "low", "hypo2", "hypo2-mgdl", "LO", "hypo1", "hyper", "HI"],
)
def test_the_rules_value_texts_give_advice_parameters(
    reading: ReadingView, rule: RuleId, params: dict[str, object]
) -> None:
    decisions = evaluate(Thresholds(), "P-1", [reading], reading, NOW, late_after=LATE_AFTER)
    [decision] = [d for d in decisions if d.rule is rule]
    assert decision.kind is DecisionKind.BREACH

    found = advice_params(decision)
    assert found == params
    for language in ("ru", "en"):
        body = render(ADVICE_TEMPLATES[rule], language, **found)
        assert body and "{" not in body


def test_every_template_the_lifecycle_uses_exists() -> None:
    used = {
        *ADVICE_TEMPLATES.values(),
        *REMINDER_TEMPLATES.values(),
        "remeasure_advice",
        "seen_by_doctor",
        "staff_alert",
        "staff_escalation",
    }
    assert used <= TEMPLATES.keys()
    critical_rules = {rule for rule in ADVICE_TEMPLATES if TEMPLATES[ADVICE_TEMPLATES[rule]].critical}
    assert critical_rules == {RuleId.SEVERE_BP, RuleId.HYPO_L2, RuleId.HYPER_SEVERE}


@pytest.mark.parametrize(
    ("cleared", "acknowledged", "closed", "state"),
    [
        (False, False, False, "active, unacknowledged"),
        (True, False, False, "cleared, unacknowledged"),
        (False, True, False, "active, acknowledged"),
        (True, True, True, "closed"),
    ],
)
def test_alert_state_reads_both_axes(cleared: bool, acknowledged: bool, closed: bool, state: str) -> None:
    alert = Alert(
        cleared_at=NOW if cleared else None,
        acknowledged_at=NOW if acknowledged else None,
        closed_at=NOW if closed else None,
    )
    assert alert.state == state
    assert (alert.active, alert.acknowledged) == (not cleared, acknowledged)


def test_time_rule_report_total() -> None:
    assert TimeRuleReport().total == 0
    assert TimeRuleReport(reminders=2, escalations=1).total == 3
