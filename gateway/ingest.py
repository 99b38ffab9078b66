"""One batch's way through the gateway, top to bottom.

decode -> validate -> resolve patient -> store readings -> evaluate rules -> quarantine the rest. The caller acknowledges
the batch's MQTT messages only after `IngestPipeline.process` returns; if it raises, nothing is
acknowledged and the broker redelivers, which the store absorbs (see timeseries.lineprotocol).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gateway.errors import StorageRejected
from gateway.mqtt import InboundMessage
from gateway.quarantine import Quarantine, QuarantineEntry
from gateway.ratelimit import DeviceRateLimiter
from gateway.registry import EnrolmentRegistry
from gateway.timeseries.base import ReadingStore, StoredReading
from gateway.wire import Reading, Rejection, WireLimits, parse, quality_flags

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchResult:
    """What became of one batch."""

    stored: list[StoredReading] = field(default_factory=list)
    quarantined: list[QuarantineEntry] = field(default_factory=list)


@dataclass(slots=True)
class _Decoded:
    message: InboundMessage
    reading: Reading


class IngestPipeline:
    """Turns a batch of MQTT messages into stored readings and quarantine entries."""

    def __init__(
        self,
        *,
        store: ReadingStore,
        registry: EnrolmentRegistry,
        quarantine: Quarantine,
        limits: WireLimits,
        clock: Callable[[], datetime],
        after_store: Callable[[Sequence[StoredReading]], object] | None = None,
        rate_limiter: DeviceRateLimiter | None = None,
    ) -> None:
        self._rate_limiter = rate_limiter
        # The batch last limited and its verdicts: a retried batch must not be charged (and judged) twice.
        self._limited_batch: tuple[Sequence[InboundMessage], dict[int, bool]] | None = None
        self._after_store = after_store
        self._store = store
        self._registry = registry
        self._quarantine = quarantine
        self._limits = limits
        self._clock = clock

    def process(self, batch: Sequence[InboundMessage]) -> BatchResult:
        """Store what is valid and enrolled, quarantine the rest; raises if either cannot be written."""
        result = BatchResult()
        decoded = self._limit(batch, self._decode(batch, result), result)
        resolved = self._resolve(decoded, result)
        self._write(resolved, result)
        if self._after_store is not None and result.stored:
            # Rule evaluation: before the ack, so a crash re-evaluates rather than forgets.
            self._after_store(result.stored)
        if result.quarantined:
            self._quarantine.add_many(result.quarantined)
        return result

    def _decode(self, batch: Sequence[InboundMessage], result: BatchResult) -> list[_Decoded]:
        now = self._clock()
        decoded = []
        for message in batch:
            outcome = parse(message.topic, message.payload, now=now, limits=self._limits)
            if isinstance(outcome, Rejection):
                result.quarantined.append(_entry(message, outcome.reason, outcome.detail, outcome.device_id))
            else:
                decoded.append(_Decoded(message, outcome))
        return decoded

    def _limit(
        self, batch: Sequence[InboundMessage], decoded: list[_Decoded], result: BatchResult
    ) -> list[_Decoded]:
        """Quarantine readings over their device's rate limit (same verdicts when a batch is retried)."""
        if self._rate_limiter is None:
            return decoded
        if self._limited_batch is None or self._limited_batch[0] is not batch:
            self._limited_batch = (batch, {})
        verdicts = self._limited_batch[1]  # keyed by id(message): the batch is held, so ids are stable
        kept = []
        for item in decoded:
            allowed = verdicts.get(id(item.message))
            if allowed is None:
                allowed = verdicts[id(item.message)] = self._rate_limiter.allow(item.reading.device_id)
            if allowed:
                kept.append(item)
            else:
                device_id = item.reading.device_id
                detail = f"device {device_id} exceeded its rate limit; reading kept here, not stored"
                result.quarantined.append(_entry(item.message, "rate_limited", detail, device_id))
        return kept

    def _resolve(
        self, decoded: list[_Decoded], result: BatchResult
    ) -> list[tuple[InboundMessage, StoredReading]]:
        resolved = []
        patients = self._registry.patients_for(
            [(d.reading.device_id, d.reading.measured_at) for d in decoded]
        )
        for item, patient_id in zip(decoded, patients, strict=True):
            reading = item.reading
            if patient_id is None:
                result.quarantined.append(
                    _entry(
                        item.message,
                        "unenrolled",
                        f"device {reading.device_id} was not enrolled to any patient at "
                        f"{reading.measured_at.isoformat()}",
                        reading.device_id,
                    )
                )
                continue
            stored = StoredReading(patient_id, reading, quality_flags(reading, self._limits))
            resolved.append((item.message, stored))
        return resolved

    def _write(self, resolved: list[tuple[InboundMessage, StoredReading]], result: BatchResult) -> None:
        if not resolved:
            return
        try:
            self._store.write([stored for _, stored in resolved])
        except StorageRejected as exc:
            # Rare: the store refuses something in the batch (e.g. a field type conflict). Find the
            # culprits one by one so the rest is stored and the refused ones are kept in quarantine.
            log.warning("store refused a batch of %d (%s); retrying reading by reading", len(resolved), exc)
            self._write_one_by_one(resolved, result)
        else:
            result.stored.extend(stored for _, stored in resolved)

    def _write_one_by_one(
        self, resolved: list[tuple[InboundMessage, StoredReading]], result: BatchResult
    ) -> None:
        for message, stored in resolved:
            try:
                self._store.write([stored])
            except StorageRejected as exc:
                device_id = stored.reading.device_id
                result.quarantined.append(_entry(message, "store_rejected", str(exc)[:1000], device_id))
            else:
                result.stored.append(stored)


def _entry(message: InboundMessage, reason: str, detail: str, device_id: str | None) -> QuarantineEntry:
    return QuarantineEntry(
        topic=message.topic,
        payload=message.payload,
        reason=reason,
        detail=detail,
        device_id=device_id,
        received_at=message.received_at,
    )
