"""Field rules shared by patients, staff and settings: E.164 phone numbers and IANA time zones."""

from __future__ import annotations

import re
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PHONE_PATTERN: Final = r"^\+[1-9][0-9]{7,14}$"
_PHONE_SEPARATORS: Final = re.compile(r"[\s().-]")


def normalize_phone(value: object) -> object:
    """`+7 (999) 123-45-67` -> `+79991234567`; raises ValueError for anything that is not E.164."""
    if not isinstance(value, str):
        return value
    phone = _PHONE_SEPARATORS.sub("", value)
    if not re.match(PHONE_PATTERN, phone):
        raise ValueError(f"{value!r} is not an E.164 number like +79991234567")
    return phone


def check_zone(value: str) -> str:
    """The name itself when it is a known IANA time zone; ValueError otherwise."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r} (use an IANA name like Asia/Yekaterinburg)") from exc
    return value
