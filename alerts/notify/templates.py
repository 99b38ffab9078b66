"""SMS texts in the patient's language (ru, en; English when a language has no text).

Patient texts are short, name no diagnosis and no person, and critical ones give the emergency numbers
103 (ambulance) and 112. Staff texts name the patient by id only, never by name, and link to the alert
when the clinic's public URL is known.

    render("severe_bp_advice", "ru", systolic=184, diastolic=112)

Parameters are substituted as text, except:
- `glucose`: a number in mmol/L (shown with one decimal and the unit) or a meter's censored "LO"/"HI";
- `rule` (staff texts): an `alerts.model.RuleId` value is shown as the rule's title in the language;
- `time` (staff texts): an aware datetime is shown as "YYYY-MM-DD HH:MM" in its own time zone;
- `public_url` + `alert_id` (staff texts): become the link `{public_url}/alerts/{alert_id}`; no
  `public_url` (or an empty one) means no link.
Extra parameters are ignored, so a caller may pass one set of values to any template.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from alerts.model import RULES, RuleId
from alerts.notify.errors import TemplateError

FALLBACK_LANGUAGE: Final = "en"


@dataclass(frozen=True, slots=True)
class Template:
    """One text in several languages; `critical` texts must carry the emergency numbers."""

    name: str
    texts: Mapping[str, str]
    critical: bool = False
    staff: bool = False

    def params(self, language: str) -> frozenset[str]:
        """The parameter names the text of `language` needs."""
        return frozenset(field for _, field, _, _ in string.Formatter().parse(self.text(language)) if field)

    def text(self, language: str) -> str:
        """The raw text in `language`, or in English when there is none."""
        return self.texts.get(language) or self.texts[FALLBACK_LANGUAGE]


_EMERGENCY_RU: Final = "звоните 103 или 112"
_EMERGENCY_EN: Final = "call 103 or 112"

TEMPLATES: Final[Mapping[str, Template]] = {
    t.name: t
    for t in (
        Template(
            "severe_bp_advice",
            {
                # The clinic's own wording (DOMAIN.md): three SMS parts in Cyrillic, kept whole on purpose.
                "ru": "Давление {systolic}/{diastolic} очень высокое. Сядьте, отдохните 5 минут и измерьте "
                "снова. Если боль в груди, одышка, слабость в руке или нарушение речи - "
                f"{_EMERGENCY_RU}.",
                "en": "Your blood pressure {systolic}/{diastolic} is very high. Sit down, rest 5 minutes "
                "and measure again. If chest pain, shortness of breath, arm weakness or trouble "
                f"speaking - {_EMERGENCY_EN}.",
            },
            critical=True,
        ),
        Template(
            "hypo_l2_advice",
            {
                "ru": "Сахар {glucose} очень низкий! Выпейте сок или съешьте 4 куска сахара, "
                f"измерьте через 15 мин. Если плохо - {_EMERGENCY_RU}.",
                "en": "Your blood sugar {glucose} is very low. Drink juice or eat 4 sugar cubes now and "
                f"measure again in 15 minutes. If you feel unwell - {_EMERGENCY_EN}.",
            },
            critical=True,
        ),
        Template(
            "hyper_severe_advice",
            {
                "ru": "Сахар {glucose} очень высокий. Пейте воду, измерьте снова. Тошнота, рвота, "
                f"сильная жажда, сонливость - {_EMERGENCY_RU}.",
                "en": "Your blood sugar {glucose} is very high. Drink water and measure again. If you have "
                f"nausea, vomiting, strong thirst or drowsiness - {_EMERGENCY_EN}.",
            },
            critical=True,
        ),
        Template(
            "hypo_l1_advice",
            {
                "ru": "Сахар {glucose} низкий. Выпейте сок или съешьте 4 куска сахара, через 15 минут "
                "измерьте снова.",
                "en": "Your blood sugar {glucose} is low. Drink juice or eat 4 sugar cubes and measure "
                "again in 15 minutes.",
            },
        ),
        Template(
            "hyper_marked_advice",
            {
                "ru": "Сахар {glucose} высокий. Пейте воду, проверьте кетоны, если есть тест-полоски, и "
                "измерьте снова через 2 часа.",
                "en": "Your blood sugar {glucose} is high. Drink water, check ketones if you have strips, "
                "and measure again in 2 hours.",
            },
        ),
        Template(
            "low_bp_advice",
            {
                "ru": "Давление {systolic}/{diastolic} низкое. Сядьте или лягте, через 5 минут измерьте "
                "снова. Если кружится голова - сообщите врачу.",
                "en": "Your blood pressure {systolic}/{diastolic} is low. Sit or lie down and measure again "
                "in 5 minutes. If you feel dizzy, tell your doctor.",
            },
        ),
        Template(
            "remeasure_advice",
            {
                "ru": "Последнее измерение могло быть неточным. Сядьте, отдохните 5 минут и измерьте снова.",
                "en": "Your last measurement may be inaccurate. Sit down, rest 5 minutes and measure again.",
            },
        ),
        Template(
            "seen_by_doctor",
            {
                "ru": "Врач посмотрел ваши последние измерения. Если нужно, с вами свяжутся.",
                "en": "Your doctor has reviewed your recent readings. You will be contacted if needed.",
            },
        ),
        Template(
            "reminder_bp",
            {
                "ru": "Давно нет измерений давления. Пожалуйста, измерьте давление сегодня.",
                "en": "We have not had a blood pressure reading from you for a while. Please measure today.",
            },
        ),
        Template(
            "reminder_glucose",
            {
                "ru": "Давно нет измерений сахара крови. Пожалуйста, измерьте сахар сегодня.",
                "en": "We have not had a blood sugar reading from you for a while. Please measure today.",
            },
        ),
        Template(
            "staff_alert",
            {
                "ru": "RPM: {rule}, пациент {patient_id}: {value}, {time}.{link}",
                "en": "RPM: {rule}, patient {patient_id}: {value}, {time}.{link}",
            },
            staff=True,
        ),
        Template(
            "staff_escalation",
            {
                "ru": "RPM: не подтверждено {minutes} мин. {rule}, пациент {patient_id}: {value}, {time}.{link}",
                "en": "RPM: unacknowledged for {minutes} min. {rule}, patient {patient_id}: {value}, "
                "{time}.{link}",
            },
            staff=True,
        ),
        Template(
            "test_message",
            {
                "ru": "rpm-gateway: тестовое сообщение.",
                "en": "rpm-gateway: test message.",
            },
            staff=True,
        ),
    )
}

_GLUCOSE_UNIT: Final = {"ru": "ммоль/л", "en": "mmol/L"}
_CENSORED: Final = {
    ("LO", "ru"): "LO (ниже шкалы)",
    ("LO", "en"): "LO (below the meter's range)",
    ("HI", "ru"): "HI (выше шкалы)",
    ("HI", "en"): "HI (above the meter's range)",
}


def render(template: str, language: str, **params: object) -> str:
    """The text of `template` in `language` (English if there is none) with `params` filled in.

    Raises `TemplateError` for an unknown template or a missing parameter.
    """
    found = TEMPLATES.get(template)
    if found is None:
        raise TemplateError(f"unknown SMS template {template!r} (known: {', '.join(sorted(TEMPLATES))})")
    lang = language if language in found.texts else FALLBACK_LANGUAGE
    values = {**params, "link": _link(params)} if found.staff else dict(params)
    missing = sorted(found.params(lang) - values.keys())
    if missing:
        raise TemplateError(f"SMS template {template!r} needs parameter(s) {', '.join(missing)}")
    shown = {name: _show(name, value, lang) for name, value in values.items()}
    return found.text(lang).format_map(shown)


def _link(params: Mapping[str, object]) -> str:
    public_url = str(params.get("public_url") or "").rstrip("/")
    alert_id = params.get("alert_id")
    if not public_url or alert_id is None:
        return ""
    return f" {public_url}/alerts/{alert_id}"


def _show(name: str, value: object, language: str) -> str:
    shown = _SHOW.get(name)
    return shown(value, language) if shown else str(value)


def _glucose(value: object, language: str) -> str:
    if isinstance(value, str) and value.upper() in ("LO", "HI"):
        return _CENSORED[(value.upper(), language)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = f"{value:.1f}"
        return f"{number.replace('.', ',') if language == 'ru' else number} {_GLUCOSE_UNIT[language]}"
    raise TemplateError(f"glucose must be a number in mmol/L or 'LO'/'HI', got {value!r}")


def _rule(value: object, language: str) -> str:
    try:
        info = RULES[RuleId(str(value))]
    except ValueError:
        return str(value)
    return info.title_ru if language == "ru" else info.title_en


def _time(value: object, language: str) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


_SHOW: Final[Mapping[str, Callable[[object, str], str]]] = {
    "glucose": _glucose,
    "rule": _rule,
    "time": _time,
}

# GSM 03.38: texts using only these characters travel 7 bits a character; anything else forces UCS-2.
_GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED: Final = frozenset("^{}\\[~]|€\f")


def sms_segments(text: str) -> int:
    """How many SMS parts `text` takes (GSM-7: 160, or 153 per part; UCS-2: 70, or 67 per part)."""
    if all(char in _GSM7_BASIC or char in _GSM7_EXTENDED for char in text):
        septets = sum(2 if char in _GSM7_EXTENDED else 1 for char in text)
        return 1 if septets <= 160 else -(-septets // 153)
    # UCS-2 counts UTF-16 code units: a character outside the BMP takes two.
    units = len(text.encode("utf-16-le")) // 2
    return 1 if units <= 70 else -(-units // 67)
