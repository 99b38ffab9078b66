"""Both languages: every text has a Russian translation, the compiled catalogue is current, and the
interface follows the user's choice; times are in the clinic's time zone."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

import web
from tests.web.conftest import Clinic, csrf_token

WEB = Path(web.__file__).parent
PO = WEB / "translations" / "ru" / "LC_MESSAGES" / "messages.po"
MO = PO.with_suffix(".mo")


def _source_messages() -> set[str]:
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(WEB), method_map, keywords={"_": None, "gettext": None, "ngettext": (1, 2), "lazy_gettext": None}
    ):
        found.add(message[0] if isinstance(message, tuple) else message)
    return found


def test_every_text_in_code_and_templates_has_a_russian_translation() -> None:
    catalog = read_po(PO.open("rb"))
    translated = {
        m.id[0] if isinstance(m.id, tuple) else m.id for m in catalog if m.id and m.string and all(m.string)
    }
    missing = sorted(_source_messages() - translated)
    assert missing == [], f"add Russian translations (web/translations/README.md): {missing}"


def _key(value: object) -> object:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def test_the_compiled_catalogue_matches_the_po_file() -> None:
    po = {_key(m.id): _key(m.string) for m in read_po(PO.open("rb")) if m.id}
    mo = {_key(m.id): _key(m.string) for m in read_mo(io.BytesIO(MO.read_bytes())) if m.id}
    assert mo == po, "run: .venv/bin/pybabel compile -d web/translations"


@pytest.mark.parametrize(
    ("language", "heading", "waiting"),
    [("en", "Alerts of my patients", "1 h 05 min"), ("ru", "Оповещения моих пациентов", "1 ч 05 мин")],
)
def test_the_interface_follows_the_users_language(
    clinic: Clinic, language: str, heading: str, waiting: str
) -> None:
    from datetime import timedelta

    clinic.add_alert("P-1", opened_at=clinic.clock.now - timedelta(hours=1, minutes=5))
    client = clinic.client("ivanova")
    token = csrf_token(client, "/account")
    client.post("/account/language", data={"language": language, "csrf_token": token})
    page = client.get("/alerts").get_data(as_text=True)
    assert f'<html lang="{language}">' in page and heading in page and waiting in page
    # The choice is kept on the staff member: a new session has it too.
    again = clinic.client("ivanova").get("/alerts").get_data(as_text=True)
    assert heading in again


@pytest.mark.parametrize(("accept", "lang"), [("en-GB,en;q=0.9", "en"), ("ru-RU", "ru"), ("de-DE", "ru")])
def test_the_login_page_follows_the_browser_then_russian(clinic: Clinic, accept: str, lang: str) -> None:
    page = clinic.client().get("/login", headers={"Accept-Language": accept}).get_data(as_text=True)
    assert f'<html lang="{lang}">' in page


def test_times_are_shown_in_the_clinics_time_zone(make_clinic: object) -> None:
    from collections.abc import Callable

    assert callable(make_clinic)
    build: Callable[..., Clinic] = make_clinic
    clinic = build()
    alert_id = clinic.add_alert("P-1")  # measured 05:39 UTC
    page = clinic.client("ivanova").get(f"/alerts/{alert_id}").get_data(as_text=True)
    assert "28 Nov 2026, 10:39" in page  # UTC+5
