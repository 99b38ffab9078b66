"""What a doctor reads off a patient's readings: chart series, table rows, adherence, time in range, means.

Pure functions of stored readings (gateway.timeseries), the clock and the clinic's time zone: no I/O.
Glucose is handled in mmol/L (Russian practice) and shown in mg/dL on request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import fmean
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from gateway.timeseries.base import StoredReading
from gateway.wire import MG_DL_PER_MMOL_L, BloodPressureReading, GlucoseReading

GlucoseUnit = Literal["mmol/L", "mg/dL"]
GLUCOSE_UNITS: Final[tuple[GlucoseUnit, ...]] = ("mmol/L", "mg/dL")
# Time-in-range bands of the 2019 international consensus (mmol/L).
TIR_VERY_LOW: Final = 3.0
TIR_LOW: Final = 3.9
TIR_HIGH: Final = 10.0
TIR_VERY_HIGH: Final = 13.9
# Days with a reading in 30 that the US remote-monitoring billing code CPT 99454 asks for.
ADHERENCE_REFERENCE: Final = 16


@dataclass(frozen=True, slots=True)
class TimeInRange:
    """Shares (percent) of glucose readings in each consensus band, and how many readings."""

    count: int
    very_low: float
    low: float
    in_range: float
    high: float
    very_high: float

    @property
    def meets_targets(self) -> bool:
        """In range > 70 %, below 3.9 < 4 %, below 3.0 < 1 % (TIR consensus 2019)."""
        return self.in_range > 70 and self.very_low + self.low < 4 and self.very_low < 1


@dataclass(frozen=True, slots=True)
class BpMean:
    """Mean systolic/diastolic (and pulse, when measured) over some readings."""

    systolic: float
    diastolic: float
    pulse: float | None
    count: int


@dataclass(frozen=True, slots=True)
class ReadingRow:
    """One line of the readings table."""

    measured_at: datetime
    type: str
    value: str
    unit: str
    pulse: int | None
    meal: str | None
    quality: tuple[str, ...]
    device_id: str
    censored: str | None


def glucose_in(value_mmol: float, unit: GlucoseUnit) -> float:
    """A glucose value (mmol/L) in the wanted unit, rounded as meters show it."""
    if unit == "mg/dL":
        return round(value_mmol * MG_DL_PER_MMOL_L)
    return round(value_mmol, 1)


def blood_pressure(readings: Iterable[StoredReading]) -> list[StoredReading]:
    """Only the blood-pressure readings."""
    return [r for r in readings if isinstance(r.reading, BloodPressureReading)]


def glucose(readings: Iterable[StoredReading]) -> list[StoredReading]:
    """Only the glucose readings."""
    return [r for r in readings if isinstance(r.reading, GlucoseReading)]


def adherence_days(
    readings: Iterable[StoredReading], *, now: datetime, zone: ZoneInfo, days: int = 30
) -> int:
    """On how many of the last `days` local calendar days (today included) the patient measured anything."""
    today = now.astimezone(zone).date()
    first = today - timedelta(days=days - 1)
    measured = {r.reading.measured_at.astimezone(zone).date() for r in readings}
    return sum(1 for day in measured if first <= day <= today)


def time_in_range(readings: Iterable[StoredReading]) -> TimeInRange | None:
    """Time in range of the glucose readings (LO counts as very low, HI as very high); None without any."""
    bands = {"very_low": 0, "low": 0, "in_range": 0, "high": 0, "very_high": 0}
    for stored in glucose(readings):
        reading = stored.reading
        assert isinstance(reading, GlucoseReading)
        bands[_band(reading)] += 1
    count = sum(bands.values())
    if count == 0:
        return None
    return TimeInRange(count=count, **{name: 100.0 * n / count for name, n in bands.items()})


def _band(reading: GlucoseReading) -> str:
    if reading.censored == "LO":
        return "very_low"
    if reading.censored == "HI":
        return "very_high"
    value = reading.value_mmol
    if value is None:
        return "in_range"
    if value < TIR_VERY_LOW:
        return "very_low"
    if value < TIR_LOW:
        return "low"
    if value <= TIR_HIGH:
        return "in_range"
    if value <= TIR_VERY_HIGH:
        return "high"
    return "very_high"


def bp_mean(readings: Iterable[StoredReading], *, since: datetime) -> BpMean | None:
    """Mean BP of the readings measured at or after `since` (quality-flagged ones left out)."""
    chosen = [
        r.reading
        for r in blood_pressure(readings)
        if r.reading.measured_at >= since and not r.quality and isinstance(r.reading, BloodPressureReading)
    ]
    if not chosen:
        return None
    pulses = [r.pulse for r in chosen if r.pulse is not None]
    return BpMean(
        systolic=fmean(r.systolic for r in chosen),
        diastolic=fmean(r.diastolic for r in chosen),
        pulse=fmean(pulses) if pulses else None,
        count=len(chosen),
    )


def glucose_mean(readings: Iterable[StoredReading], *, since: datetime) -> float | None:
    """Mean glucose (mmol/L) of numeric, unflagged readings measured at or after `since`."""
    values = [
        r.reading.value_mmol
        for r in glucose(readings)
        if isinstance(r.reading, GlucoseReading)
        and r.reading.measured_at >= since
        and not r.quality
        and r.reading.value_mmol is not None
    ]
    return fmean(values) if values else None


def last_measured(readings: Sequence[StoredReading]) -> datetime | None:
    """The newest measured_at."""
    return max((r.reading.measured_at for r in readings), default=None)


def rows(readings: Iterable[StoredReading], unit: GlucoseUnit, *, limit: int = 300) -> list[ReadingRow]:
    """Table rows, newest first."""
    ordered = sorted(readings, key=lambda r: r.reading.measured_at, reverse=True)[:limit]
    result = []
    for stored in ordered:
        reading = stored.reading
        if isinstance(reading, BloodPressureReading):
            result.append(
                ReadingRow(
                    measured_at=reading.measured_at,
                    type="blood_pressure",
                    value=f"{reading.systolic}/{reading.diastolic}",
                    unit="mmHg",
                    pulse=reading.pulse,
                    meal=None,
                    quality=stored.quality,
                    device_id=reading.device_id,
                    censored=None,
                )
            )
        else:
            value_mmol = reading.value_mmol
            shown = reading.censored or ("—" if value_mmol is None else _format_glucose(value_mmol, unit))
            result.append(
                ReadingRow(
                    measured_at=reading.measured_at,
                    type="glucose",
                    value=shown,
                    unit=unit,
                    pulse=None,
                    meal=reading.meal,
                    quality=stored.quality,
                    device_id=reading.device_id,
                    censored=reading.censored,
                )
            )
    return result


def _format_glucose(value_mmol: float, unit: GlucoseUnit) -> str:
    value = glucose_in(value_mmol, unit)
    return f"{value:.0f}" if unit == "mg/dL" else f"{value:.1f}"


def chart_series(readings: Iterable[StoredReading], unit: GlucoseUnit) -> dict[str, list[dict[str, Any]]]:
    """Points for the charts (time in ms since the epoch), oldest first; censored glucose drawn at its limit."""
    bp: list[dict[str, Any]] = []
    gl: list[dict[str, Any]] = []
    for stored in sorted(readings, key=lambda r: r.reading.measured_at):
        reading = stored.reading
        t = int(reading.measured_at.timestamp() * 1000)
        flagged = bool(stored.quality)
        if isinstance(reading, BloodPressureReading):
            bp.append(
                {"t": t, "s": reading.systolic, "d": reading.diastolic, "p": reading.pulse, "q": flagged}
            )
            continue
        value = reading.value_mmol
        if reading.censored == "LO":
            value = 1.1
        elif reading.censored == "HI":
            value = 33.3
        if value is None:
            continue
        gl.append({"t": t, "v": glucose_in(value, unit), "c": reading.censored, "q": flagged})
    return {"bp": bp, "glucose": gl}
