"""SMS rules as pure functions: quiet hours across midnight and DST, rate limits, backoff, reply keywords."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from alerts.notify.policy import (
    Keyword,
    RateCounts,
    RateLimit,
    quiet_until,
    rate_limit_exceeded,
    reply_keyword,
    retry_delay,
)

EKB = ZoneInfo("Asia/Yekaterinburg")  # UTC+5, no DST


def _local(text: str, zone: ZoneInfo = EKB) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


@pytest.mark.parametrize(
    ("local_now", "quiet_end_local"),
    [
        ("2026-12-01 21:59", None),
        ("2026-12-01 22:00", "2026-12-02 08:00"),
        ("2026-12-01 23:30", "2026-12-02 08:00"),
        ("2026-12-02 00:00", "2026-12-02 08:00"),
        ("2026-12-02 07:59", "2026-12-02 08:00"),
        ("2026-12-02 08:00", None),
        ("2026-12-02 12:00", None),
    ],
)
def test_quiet_hours_22_to_8_in_the_patients_zone(local_now: str, quiet_end_local: str | None) -> None:
    until = quiet_until(_local(local_now).astimezone(UTC), EKB, 22, 8)
    expected = _local(quiet_end_local).astimezone(UTC) if quiet_end_local else None
    assert until == expected
    assert until is None or until.tzinfo == UTC


@pytest.mark.parametrize(
    ("start", "end", "local_now", "quiet"),
    [
        (13, 15, "2026-12-01 12:59", False),
        (13, 15, "2026-12-01 13:00", True),
        (13, 15, "2026-12-01 15:00", False),
        (8, 8, "2026-12-01 03:00", False),  # equal hours: no quiet hours
        (0, 6, "2026-12-01 23:59", False),
        (0, 6, "2026-12-01 00:00", True),
    ],
)
def test_quiet_hours_within_one_day_and_none(start: int, end: int, local_now: str, quiet: bool) -> None:
    assert (quiet_until(_local(local_now), EKB, start, end) is not None) is quiet


def test_quiet_hours_end_at_8_local_after_a_dst_change_in_the_night() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # Night of 2026-03-28/29: clocks go from 02:00 to 03:00; 08:00 is then UTC+2.
    until = quiet_until(_local("2026-03-28 23:00", berlin), berlin, 22, 8)
    assert until == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("hour", "day", "critical", "expected"),
    [
        (0, 0, False, None),
        (2, 9, False, None),
        (3, 3, False, RateLimit.HOUR),
        (3, 3, True, RateLimit.HOUR),  # critical texts count against the hourly cap too
        (0, 10, False, RateLimit.DAY),
        (0, 10, True, None),  # ...but not the daily one
        (2, 50, True, None),
    ],
)
def test_rate_limits(hour: int, day: int, critical: bool, expected: RateLimit | None) -> None:
    verdict = rate_limit_exceeded(RateCounts(hour, day), critical=critical, max_per_hour=3, max_per_day=10)
    assert verdict is expected


@pytest.mark.parametrize(
    ("attempts", "full"), [(1, 10.0), (2, 20.0), (3, 40.0), (7, 640.0), (8, 900.0), (60, 900.0)]
)
def test_retry_delay_doubles_up_to_the_cap_with_jitter(attempts: int, full: float) -> None:
    rng = random.Random(1)
    delays = [retry_delay(attempts, base_seconds=5, max_seconds=900, rng=rng) for _ in range(200)]
    assert all(timedelta(seconds=full / 2) <= d <= timedelta(seconds=full) for d in delays)
    assert len(set(delays)) > 100  # jittered, not one value


@pytest.mark.parametrize(
    ("body", "keyword"),
    [
        ("STOP", Keyword.STOP),
        ("stop", Keyword.STOP),
        ("  Stop \n", Keyword.STOP),
        ("СТОП", Keyword.STOP),
        ("Стоп", Keyword.STOP),
        ("стоп.", Keyword.STOP),
        ("stop!", Keyword.STOP),
        ("UNSUBSCRIBE", Keyword.STOP),
        ("START", Keyword.START),
        ("start", Keyword.START),
        ("СТАРТ", Keyword.START),
        ("Старт", Keyword.START),
        ("UNSTOP", Keyword.START),
        ("stop it", None),
        ("please stop", None),
        ("стопка", None),
        ("", None),
        ("184/112", None),
    ],
)
def test_reply_keywords(body: str, keyword: Keyword | None) -> None:
    assert reply_keyword(body) is keyword
