"""Languages and time: Russian and English per user, times in the clinic's time zone.

The language is the staff member's own (`staff.language`, chosen in the header and kept); before login
it is the one picked on the login page, else the browser's preference, else Russian. Messages live in
web/translations/ (gettext; `scripts/translations` style: pybabel extract/update/compile).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Final

from flask import Flask, g, request, session
from flask_babel import Babel, format_datetime, format_decimal, gettext, ngettext

from web import labels
from web.context import services
from web.labels import label

LANGUAGES: Final = ("ru", "en")
DEFAULT_LANGUAGE: Final = "ru"
TRANSLATIONS_DIR: Final = Path(__file__).resolve().parent / "translations"
# Day first in both languages: these are Russian clinics, whatever the interface language.
_PATTERNS: Final = {
    "ru": {"datetime": "dd.MM.yyyy HH:mm", "date": "dd.MM.yyyy", "time": "HH:mm", "day": "d MMM"},
    "en": {"datetime": "d MMM yyyy, HH:mm", "date": "d MMM yyyy", "time": "HH:mm", "day": "d MMM"},
}


def select_language() -> str:
    """The language of this request."""
    staff = g.get("staff")
    if staff is not None and staff.language in LANGUAGES:
        language: str = staff.language
        return language
    chosen = session.get("lang")
    if chosen in LANGUAGES:
        return str(chosen)
    return str(request.accept_languages.best_match(LANGUAGES) or DEFAULT_LANGUAGE)


def select_timezone() -> str:
    """The clinic's time zone (RPMGW_TIMEZONE): every time is shown in it."""
    return services().settings.timezone


def init_app(app: Flask) -> None:
    """Install Flask-Babel and the template filters."""
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(TRANSLATIONS_DIR)
    app.config["BABEL_DEFAULT_LOCALE"] = DEFAULT_LANGUAGE
    Babel(app, locale_selector=select_language, timezone_selector=select_timezone)
    app.jinja_env.filters["local"] = local_time
    app.jinja_env.filters["duration"] = duration
    app.jinja_env.filters["ago"] = ago
    app.jinja_env.filters["number"] = number
    app.jinja_env.globals["current_language"] = select_language
    app.jinja_env.globals["label"] = label
    app.jinja_env.globals["number"] = number
    app.jinja_env.globals["ago"] = ago
    app.jinja_env.globals["duration_seconds"] = lambda seconds: duration(timedelta(seconds=seconds))
    app.jinja_env.globals["codes"] = labels.ALL


def local_time(value: datetime | None, kind: str = "datetime") -> str:
    """A UTC time in the clinic's zone: kind "datetime", "date", "time" or "day"."""
    if value is None:
        return "—"
    return str(format_datetime(value, _PATTERNS[select_language()][kind]))


def number(value: float | None, digits: int = 1) -> str:
    """A number with the language's decimal separator ("5,4" in Russian)."""
    if value is None:
        return "—"
    return str(format_decimal(round(value, digits), format="#,##0." + "0" * digits if digits else "#,##0"))


def duration(delta: timedelta) -> str:
    """A waiting time a person reads at a glance: "45 min", "3 h 05 min", "2 d 4 h"."""
    minutes = max(0, int(delta.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return str(gettext("%(d)d d %(h)d h", d=days, h=hours))
    if hours:
        return str(gettext("%(h)d h %(m)02d min", h=hours, m=minutes))
    return str(gettext("%(m)d min", m=minutes))


def ago(value: datetime | None, now: datetime) -> str:
    """How long ago, in words ("today", "3 days ago") for last readings."""
    if value is None:
        return str(gettext("never"))
    delta = now - value
    if delta < timedelta(hours=1):
        return str(gettext("%(m)d min ago", m=max(0, int(delta.total_seconds() // 60))))
    if delta < timedelta(days=1):
        return str(gettext("%(h)d h ago", h=int(delta.total_seconds() // 3600)))
    days = delta.days
    return str(ngettext("%(num)d day ago", "%(num)d days ago", days))
