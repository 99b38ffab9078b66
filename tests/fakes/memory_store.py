"""An in-memory `ReadingStore` for pipeline tests that need no InfluxDB: honest about what it holds."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.timeseries.base import ReadingType, StoredReading, StoreSummary


class MemoryStore:
    """One point per (type, msg_id), as in InfluxDB's schema, so a repeated msg_id overwrites itself;
    `readings` and `recent` answer from the points; `writes` counts the readings written."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, str], StoredReading] = {}
        self.writes = 0

    def ensure_ready(self) -> None:
        """Nothing to prepare."""

    def write(self, readings: Sequence[StoredReading]) -> None:
        """Keep every reading, overwriting an earlier point of the same msg_id."""
        self.writes += len(readings)
        for stored in readings:
            self.points[(stored.reading.type, stored.reading.msg_id)] = stored

    def readings(
        self, patient_id: str, start: datetime, end: datetime, type: ReadingType | None = None
    ) -> list[StoredReading]:
        """The patient's points measured in [start, end), of `type` when given."""
        return [
            s
            for s in self.points.values()
            if s.patient_id == patient_id
            and start <= s.reading.measured_at < end
            and (type is None or s.reading.type == type)
        ]

    def recent(self, patient_ids: Sequence[str], since: datetime) -> dict[str, list[StoredReading]]:
        """Each patient's points measured at or after `since`."""
        found: dict[str, list[StoredReading]] = {p: [] for p in patient_ids}
        for stored in self.points.values():
            if stored.patient_id in found and stored.reading.measured_at >= since:
                found[stored.patient_id].append(stored)
        return found

    def summary(self) -> StoreSummary:
        """Not needed by the tests that use it."""
        return StoreSummary(counts={}, last_measured_at=None)

    def close(self) -> None:
        """Nothing to release."""
