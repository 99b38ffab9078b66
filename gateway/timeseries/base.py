"""The time-series store interface shared by the InfluxDB 1.x and 2.x back ends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from gateway.wire import Reading

ReadingType = Literal["blood_pressure", "glucose"]


@dataclass(slots=True)
class StoredReading:
    """A valid reading resolved to its patient, as it is written to and read back from the store.

    `quality` holds device flags plus the gateway's suspicion flags; non-empty means the value needs
    re-measurement rather than being taken as confirmed. Not changed once built; not frozen, because
    one is built for every reading stored and read back, and a frozen dataclass's constructor (a call
    of `object.__setattr__` per field) cost twice as much.
    """

    patient_id: str
    reading: Reading
    quality: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreSummary:
    """What `rpmgw status` shows about the store."""

    counts: dict[str, int]
    last_measured_at: datetime | None


class ReadingStore(Protocol):
    """Where readings live. Both back ends write the same line protocol (see `lineprotocol`)."""

    def ensure_ready(self) -> None:
        """Check the server answers and create the database/retention policy when missing."""

    def write(self, readings: Sequence[StoredReading]) -> None:
        """Write durably; raises StorageUnavailable (retry) or StorageRejected (do not retry)."""

    def readings(
        self, patient_id: str, start: datetime, end: datetime, type: ReadingType | None = None
    ) -> list[StoredReading]:
        """A patient's readings with start <= measured_at < end, oldest first."""

    def recent(self, patient_ids: Sequence[str], since: datetime) -> dict[str, list[StoredReading]]:
        """Readings of many patients measured at or after `since`, oldest first per patient (one round trip
        per chunk of patients; the rule engine's history)."""

    def summary(self) -> StoreSummary:
        """Counts by reading type and the newest measured_at."""

    def close(self) -> None:
        """Release connections."""
