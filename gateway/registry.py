"""Which patient a reading belongs to: the enrolment valid at its measured_at, with a bounded cache.

The gateway resolves a whole batch with `patients_for`: one query for every device of the batch that
is not cached, never one per reading. The cache maps a device to its enrolment intervals (all of its
history, so an old buffered reading resolves correctly too) and forgets entries after `ttl` seconds,
so an enrolment changed by another process is seen within `ttl`; a device with no open enrolment
(never enrolled, or returned) is remembered only briefly, so that a device enrolled a moment ago is
picked up quickly.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from gateway.errors import GatewayError
from rpmgw.models import Enrolment

# Seconds a device without an open enrolment stays cached (at most the TTL).
UNENROLLED_TTL: Final = 2.0
# Devices per query; batches are at most 5,000 readings, so a batch is one query.
QUERY_CHUNK: Final = 10_000

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_OPEN_END: Final = sys.maxsize

# (valid_from, valid_to) in microseconds since the epoch, and the patient: compact for 100,000 devices.
Interval = tuple[int, int, str]


class RegistryUnavailable(GatewayError):
    """The enrolment registry (the relational database) could not be read: retry later."""


class EnrolmentRegistry:
    """Resolves (device_id, measured_at) to a patient id, or None when the device had no patient then."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        cache_size: int,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cache_size < 0 or ttl < 0:
            raise ValueError("cache_size and ttl must not be negative")
        self._session_factory = session_factory
        self._cache_size = cache_size
        self._ttl = ttl
        self._unenrolled_ttl = min(ttl, UNENROLLED_TTL)
        self._clock = clock
        # device_id -> (expires_at, intervals); the first key is the least recently used.
        self._cache: OrderedDict[str, tuple[float, tuple[Interval, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def patient_for(self, device_id: str, measured_at: datetime) -> str | None:
        """The patient the device was with at `measured_at` (aware), or None."""
        return self.patients_for([(device_id, measured_at)])[0]

    def patients_for(self, keys: Sequence[tuple[str, datetime]]) -> list[str | None]:
        """Resolve many (device_id, measured_at) pairs at once; one query for all uncached devices.

        Raises `RegistryUnavailable` when the database cannot be read, ValueError for a naive datetime.
        """
        instants = [_micros(measured_at) for _, measured_at in keys]
        found: dict[str, tuple[Interval, ...]] = {}
        missing: dict[str, None] = {}  # ordered and unique
        with self._lock:
            now = self._clock()
            for device_id, _ in keys:
                if device_id in found or device_id in missing:
                    continue
                cached = self._cached(device_id, now)
                if cached is None:
                    missing[device_id] = None
                else:
                    found[device_id] = cached
        if missing:
            loaded = self._load(list(missing))
            found.update(loaded)
            self._remember(loaded)
        return [_resolve(found[device_id], at) for (device_id, _), at in zip(keys, instants, strict=True)]

    def invalidate(self, device_id: str | None = None) -> None:
        """Forget one device's cached enrolments, or all of them."""
        with self._lock:
            if device_id is None:
                self._cache.clear()
            else:
                self._cache.pop(device_id, None)

    def __len__(self) -> int:
        """How many devices are cached (never more than `cache_size`)."""
        return len(self._cache)

    def _cached(self, device_id: str, now: float) -> tuple[Interval, ...] | None:
        entry = self._cache.get(device_id)
        if entry is None:
            return None
        expires_at, intervals = entry
        if now >= expires_at:
            del self._cache[device_id]
            return None
        self._cache.move_to_end(device_id)
        return intervals

    def _remember(self, loaded: dict[str, tuple[Interval, ...]]) -> None:
        if self._cache_size == 0 or self._ttl == 0:
            return
        with self._lock:
            now = self._clock()
            for device_id, intervals in loaded.items():
                enrolled_now = any(valid_to == _OPEN_END for _, valid_to, _ in intervals)
                ttl = self._ttl if enrolled_now else self._unenrolled_ttl
                self._cache[device_id] = (now + ttl, intervals)
                self._cache.move_to_end(device_id)
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)

    def _load(self, device_ids: Sequence[str]) -> dict[str, tuple[Interval, ...]]:
        history: dict[str, list[Interval]] = {device_id: [] for device_id in device_ids}
        try:
            with self._session_factory() as session:
                for chunk in _chunks(device_ids, QUERY_CHUNK):
                    rows = session.execute(
                        select(
                            Enrolment.device_id,
                            Enrolment.patient_id,
                            Enrolment.valid_from,
                            Enrolment.valid_to,
                        )
                        .where(Enrolment.device_id.in_(chunk))
                        .order_by(Enrolment.device_id, Enrolment.valid_from)
                    )
                    for device_id, patient_id, valid_from, valid_to in rows:
                        end = _OPEN_END if valid_to is None else _micros(valid_to)
                        history[device_id].append((_micros(valid_from), end, patient_id))
        except DBAPIError as exc:
            raise RegistryUnavailable(
                f"cannot read enrolments: {str(exc.orig or exc).strip()[:300]}"
            ) from exc
        return {device_id: tuple(intervals) for device_id, intervals in history.items()}


def _resolve(intervals: tuple[Interval, ...], at: int) -> str | None:
    for valid_from, valid_to, patient_id in intervals:
        if valid_from <= at < valid_to:
            return patient_id
    return None


def _micros(value: datetime) -> int:
    try:  # a naive datetime cannot be subtracted from an aware one (asking first cost a third more)
        return (value - _EPOCH) // _MICROSECOND
    except TypeError:
        raise ValueError(f"measured_at {value.isoformat()} has no time zone") from None


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
