"""The SMS rules as pure functions: quiet hours, rate limits, retry backoff, opt-out keywords.

No I/O and no clock inside: `delivery.py` reads the database and the time and asks these.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Final
from zoneinfo import ZoneInfo

# Replies that opt a number out of / back into texts: Twilio's standard keywords plus Russian ones.
STOP_WORDS: Final = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "стоп"})
START_WORDS: Final = frozenset({"start", "unstop", "старт"})


class Keyword(StrEnum):
    """What a patient's reply asks for."""

    STOP = "stop"
    START = "start"


def reply_keyword(body: str) -> Keyword | None:
    """STOP or START when the whole reply is one of those words (any case, trimmed, a final "." or "!")."""
    word = body.strip().rstrip(".!").strip().casefold()
    if word in STOP_WORDS:
        return Keyword.STOP
    if word in START_WORDS:
        return Keyword.START
    return None


def quiet_until(now: datetime, zone: ZoneInfo, start_hour: int, end_hour: int) -> datetime | None:
    """When the quiet hours around `now` end (aware UTC), or None when `now` is not in quiet hours.

    Quiet hours are [start_hour:00, end_hour:00) local time in `zone`, across midnight when
    start_hour > end_hour (22 -> 8); equal hours mean no quiet hours at all.
    """
    if start_hour == end_hour:
        return None
    local = now.astimezone(zone)
    hour = local.hour
    overnight = start_hour > end_hour
    quiet = (hour >= start_hour or hour < end_hour) if overnight else (start_hour <= hour < end_hour)
    if not quiet:
        return None
    end_day = local.date() if hour < end_hour else local.date() + timedelta(days=1)
    # Built from the wall clock, so a DST change in the night still ends at end_hour local time.
    end = datetime.combine(end_day, time(end_hour), tzinfo=zone)
    return end.astimezone(UTC)


class RateLimit(StrEnum):
    """Which per-patient cap a text would exceed (the `error_code` of a suppressed row)."""

    HOUR = "rate_hour"
    DAY = "rate_day"


@dataclass(frozen=True, slots=True)
class RateCounts:
    """Texts that already went (or are going) to one patient in the last hour and the last day."""

    last_hour: int
    last_day: int


def rate_limit_exceeded(
    counts: RateCounts, *, critical: bool, max_per_hour: int, max_per_day: int
) -> RateLimit | None:
    """The cap one more text would break, or None; critical texts are exempt from the daily cap only."""
    if counts.last_hour >= max_per_hour:
        return RateLimit.HOUR
    if not critical and counts.last_day >= max_per_day:
        return RateLimit.DAY
    return None


def retry_delay(attempts: int, *, base_seconds: float, max_seconds: float, rng: random.Random) -> timedelta:
    """How long to wait after the `attempts`-th failed try: base * 2^attempts, capped, with jitter.

    The jitter draws from [half, all] of the delay so that workers hit by the same outage spread out.
    """
    delay = min(base_seconds * 2.0 ** min(attempts, 32), max_seconds)
    return timedelta(seconds=delay * (0.5 + 0.5 * rng.random()))
