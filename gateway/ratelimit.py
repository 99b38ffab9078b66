"""Per-device rate limit: a token bucket per device, in a bounded LRU of devices.

A device that floods (a broken firmware loop, a hostile client with a device's credentials) must not
fill every batch and starve the other devices, and it must not be able to grow the gateway's memory
by inventing device ids. Readings over the limit are not dropped: the pipeline quarantines them with
the reason "rate_limited", so staff can see them and nothing vanishes silently.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class DeviceRateLimiter:
    """Token buckets keyed by device id; the least recently seen devices are forgotten first."""

    def __init__(
        self,
        *,
        rate_per_second: float,
        burst: int,
        max_devices: int,
        clock: Callable[[], float],
    ) -> None:
        if rate_per_second <= 0 or burst < 1 or max_devices < 1:
            raise ValueError("rate_per_second must be > 0, burst and max_devices >= 1")
        self._rate = rate_per_second
        self._burst = float(burst)
        self._max_devices = max_devices
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.limited = 0

    def allow(self, device_id: str) -> bool:
        """Take one token from the device's bucket; False when it is empty (the reading is over the limit)."""
        now = self._clock()
        bucket = self._buckets.get(device_id)
        if bucket is None:
            bucket = _Bucket(self._burst, now)
            self._buckets[device_id] = bucket
            if len(self._buckets) > self._max_devices:
                # A forgotten device starts again with a full bucket: generous, but memory stays bounded.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(device_id)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        self.limited += 1
        return False

    def __len__(self) -> int:
        return len(self._buckets)
