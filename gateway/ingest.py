"""One batch's way through the gateway, top to bottom.

decode -> validate -> resolve patient -> store readings -> evaluate rules -> quarantine the rest. The caller acknowledges
the batch's MQTT messages only after `IngestPipeline.process` returns; if it raises, nothing is
acknowledged and the broker redelivers, which the store absorbs (see timeseries.lineprotocol).

Storing is mostly waiting for InfluxDB, so the rules make their decisions meanwhile: the write runs on
a writer thread while this thread prepares the decisions, and they are committed to the database once
the write has succeeded (an alert never stands for a reading the store does not hold), except for the
critical part below.

Critical readings first: the patients of a batch with a reading whose value alone breaches a critical
rule and that is not late (`RulesStep.urgent`: a late one texts nobody, as in a backlog drained after an
outage) are stored, decided and committed as a part of their own, before the rest of
the batch. A 200/125 in a batch of 300 normal readings then waits for one small write and one small
transaction, not for the batch's (bench: the tail of the alert latency was such batches, after a stall
had let the queue grow). A patient's readings all stay in the same part, in batch order, so the rules
see the same history. The batch is still acknowledged as a whole, after both parts: when the second
part fails, the gateway retries the whole batch, and the first part's write and decisions are repeated
without effect (the store and the alert lifecycle both key on msg_id).

The critical part does not wait for InfluxDB: its decisions are committed while its write runs. A
doctor learns of a 200/125 whether InfluxDB answers in 5 ms or stalls for half a second (bench: the
slowest alerts waited 0.5 s for such writes while InfluxDB compacted a backlog it had just taken), and
whether or not InfluxDB then takes the point. The reading itself is not lost either way: its MQTT
message is acknowledged only once it is stored or, refused by the store for good (a field type
conflict, a series limit), kept in quarantine; until then the broker redelivers it and re-deciding it
changes nothing. The alert holds the values it was raised for (`Alert.worst_value_text`, its events'
msg_id), so it reads the same whether or not the chart could store the point. Nor does it wait for
InfluxDB to answer queries: when its patients' history cannot be read (InfluxDB down, and the patient
not in the history cache, as after a restart during the outage), the critical part is decided from
what the cache and the batch hold, and only what the readings' values decide alone is applied (a
critical rule's breach; `AlertEngine.prepare`). The rest is decided once the part is stored and the
history can be read: until then the batch fails and is tried again, and between its attempts the queue
is looked at for critical readings as during a batch (`look_between_attempts`).

Nor does a critical reading wait in the gateway's queue for the batch before it (`watch_queue`).
Messages are parsed as they arrive (`triage`), and every 10 ms of each batch (between its patients'
decisions, while its write runs, after its commit) the pipeline looks at what arrived meanwhile: a
critical reading there is decided and its alert committed at once, with the readings of its device
queued before it (bench: under 5,000 readings/s a probe waited half a batch, 30-45 ms, and its own
batch's decoding, before its part began). It stays in the queue and is stored, decided again (a no-op)
and acknowledged with its batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from gateway import metrics
from gateway.errors import StorageError, StorageRejected
from gateway.mqtt import InboundMessage
from gateway.quarantine import Quarantine, QuarantineEntry
from gateway.ratelimit import DeviceRateLimiter
from gateway.registry import EnrolmentRegistry
from gateway.timeseries.base import ReadingStore, StoredReading
from gateway.wire import Reading, Rejection, WireLimits, parse, quality_flags

log = logging.getLogger(__name__)

# The recheck (`IngestPipeline.recheck`): readings decided again per call, and noted at most before it
# is due whatever the time (each noted reading is kept until then).
RECHECK_CHUNK = 2_000
RECHECK_MAX_NOTED = 20_000
# While a batch's write runs, the pipeline looks in the gateway's queue for critical readings this often
# (`IngestPipeline.watch_queue`): each look only checks what arrived since the last one, parsed already.
LOOK_EVERY = 0.01
# Msg_ids decided ahead and not yet seen in a batch, at most (past it they are forgotten: a reading looked
# at again is decided again, a no-op).
MAX_DECIDED_AHEAD = 10_000


@dataclass(slots=True)
class BatchResult:
    """What became of one batch."""

    stored: list[StoredReading] = field(default_factory=list)
    quarantined: list[QuarantineEntry] = field(default_factory=list)


# What the gateway's queue holds from a position on, and the position of the first (Gateway.queued).
Queued = Callable[[int], tuple[int, list[InboundMessage]]]

Staged = TypeVar("Staged")
Prepared = TypeVar("Prepared")


class RulesStep(Protocol[Staged, Prepared]):
    """What the pipeline needs of the rule engine (alerts.engine.AlertEngine)."""

    def stage(self, batch: Sequence[StoredReading], *, without_store: bool = False) -> Staged:
        """Read what deciding needs from the store; before the batch's write, never alongside it.
        `without_store`: the store cannot be read; stage from what is at hand (then only the decisions
        a reading's value makes alone are prepared)."""

    def prepare(self, staged: Staged, between: Callable[[], object] | None = None) -> Prepared:
        """Decide (nothing written, the store not read); may run while the batch is being stored.
        Calls `between` (when given) now and then, between patients."""

    def commit(self, prepared: Prepared) -> object:
        """Apply what `prepare` decided, once the batch is stored."""

    def forget(self, batch: Sequence[StoredReading]) -> None:
        """Drop what `stage` remembered of a batch the store refused."""

    def urgent(self, reading: Reading) -> bool:
        """Whether the reading is to be stored and decided before the rest of its batch."""


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
        rules: RulesStep[Any, Any] | None = None,
        rate_limiter: DeviceRateLimiter | None = None,
        recheck_after: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate_limiter = rate_limiter
        # The batch last limited and its verdicts: a retried batch must not be charged (and judged) twice.
        self._limited_batch: tuple[Sequence[InboundMessage], dict[int, bool]] | None = None
        self._rules = rules
        # One write at a time, off this thread. While it runs this thread does not touch the store (the
        # history cache reads through a store of its own: gateway.service).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-write")
        self._store = store
        self._registry = registry
        self._quarantine = quarantine
        self._limits = limits
        self._clock = clock
        # A member of a shared subscription decides again, `recheck_after` seconds later, with the history
        # reloaded from the store (see `recheck`): the newest reading it stored per patient and type.
        self._recheck_after = recheck_after if rules is not None else None
        self._monotonic = monotonic
        # Per patient and type, the newest reading stored and when one of them was last stored, in that
        # order (the oldest noted first); all of it due once too much is noted; none after a failure.
        self._to_recheck: dict[tuple[str, str], tuple[StoredReading, float]] = {}
        self._recheck_all = False
        self._recheck_paused_until = float("-inf")
        # The gateway's queue (`watch_queue`), how far it was looked at and when, and the patients of the
        # batch in hand (their decisions are made, not committed: no reading of theirs may overtake).
        self._queued: Queued | None = None
        self._looked_at = 0  # the queue position up to which it was looked at (kept from batch to batch)
        self._last_look = float("-inf")
        self._decided_ahead: set[str] = set()  # msg_ids decided while queued, until their batch comes
        self._batch_in_hand: list[tuple[InboundMessage, StoredReading]] = []
        self._in_hand: set[str] | None = None  # its patients, once a look finds a critical reading
        # After a failed `process`: what the batch to be tried again holds (its decisions may not all be
        # committed), or None when it failed before its patients were known (`look_between_attempts`).
        self._to_retry: list[tuple[InboundMessage, StoredReading]] | None = []

    def watch_queue(self, queued: Queued) -> None:
        """Let critical readings waiting in the gateway's queue be decided before their batch.

        `queued(start)` returns what waits in the queue from position `start` on, oldest first, without
        taking it, and the position of the first of it (gateway.handoff.Handoff.peek: positions do not
        change as the queue is taken from). While a batch is decided (between its patients), while its
        write runs, and after its commit, at most every `LOOK_EVERY`, the readings that arrived since the
        last look are looked at: those critical by their value alone and not late (`RulesStep.urgent`),
        with the readings of their device queued before them, of patients with no reading in the batch
        in hand (their decisions are made and not committed: none may overtake), are decided and their
        alerts committed. A 200/125 that arrives while a batch of hundreds is being decided, or whose
        write stalls while InfluxDB compacts, waits for neither. Each message is looked at once: a
        critical reading passed over because its patient was in hand waits for its own batch, which puts
        it first. The readings stay in the queue: their own batch later stores them, decides them again
        (a no-op: the lifecycle keys on msg_id) and acknowledges them in order, as every message is.
        Nothing is written to InfluxDB or acknowledged out of turn, and a failure here only leaves the
        work to that batch.
        """
        self._queued = queued

    def look_between_attempts(self) -> None:
        """While a batch that failed waits to be tried again (InfluxDB or the database down), decide the
        critical readings queued behind it, as `watch_queue` does while a batch is processed: a 200/125
        that arrives during an InfluxDB outage is alerted now, from its value (its history cannot be
        read: `AlertEngine.prepare`), not when InfluxDB is back. Not the readings of the failed batch's
        own patients (its decisions may not all be committed), and none when it failed before its
        patients were known. At most every `LOOK_EVERY`; a failure is logged and leaves them to their
        batch.
        """
        if self._to_retry is None:
            return
        self._batch_in_hand, self._in_hand = self._to_retry, None
        try:
            self._look_if_due()
        finally:
            self._batch_in_hand, self._in_hand = [], None

    def triage(self, messages: list[InboundMessage]) -> list[InboundMessage]:
        """The messages, each with its payload parsed (`InboundMessage.parsed`, set in place), as they arrive.

        The gateway calls it on paho's network thread, before queueing them: the batch loop then does
        not parse them, and the look in the queue (`watch_queue`) finds critical readings without
        parsing anything twice. Parsing never raises for bad input (a Rejection is kept instead).
        """
        now, limits = self._clock(), self._limits
        for message in messages:
            message.parsed = parse(message.topic, message.payload, now=now, limits=limits)
        return messages

    def process(self, batch: Sequence[InboundMessage]) -> BatchResult:
        """Store what is valid and enrolled, quarantine the rest; raises if either cannot be written."""
        result = BatchResult()
        self._to_retry = None
        decoded = self._decode(batch, result)
        if self._decided_ahead:  # their batch has come: if looked at again, they are decided again
            self._decided_ahead.difference_update(item.reading.msg_id for item in decoded)
        decoded = self._limit(batch, decoded, result)
        resolved = self._resolve(decoded, result)
        self._batch_in_hand, self._in_hand, self._last_look = resolved, None, float("-inf")
        try:
            if self._rules is None:
                self._write(resolved, result)
            else:
                for part, urgent in _urgent_first(self._rules, resolved):
                    prepared = self._write_while_preparing(self._rules, part, result, commit_early=urgent)
                    if prepared is not None:
                        # Rule evaluation: before the ack, so a crash re-evaluates rather than forgets.
                        self._rules.commit(prepared)
                self._look_if_due()  # what arrived while the batch was committed need not wait for the next
        except BaseException:
            self._to_retry = resolved
            raise
        finally:
            self._batch_in_hand, self._in_hand = [], None  # held only while in hand
        self._to_retry = []  # stored and decided: nothing of it is left for a look to wait for
        if result.quarantined:
            self._quarantine.add_many(result.quarantined)
        if self._recheck_after is not None:
            self._note_for_recheck(result.stored)
        return result

    def recheck(self, *, force: bool = False) -> int:
        """Decide again the newest reading stored per patient and type since the last recheck, with those
        patients' history reloaded from the store, once `recheck_after` seconds have passed since this
        gateway last stored a reading of that patient and type (or now, with `force`); returns how many
        readings were decided again (0 when none were due).

        For members of a shared subscription. Each member sees only its share of a patient's readings
        and its history cache trusts what it loaded for a minute, so two readings of one patient taken
        by two gateways at nearly the same time (a monitor emptying its buffer, two readings a minute
        apart) can each be decided without the other: 2-of-3 high blood pressure, for one, would then
        never fire. Rechecking after one's own write sees every reading stored before: of any two
        readings, the one stored last is decided again with the other in view. Each patient and type
        waits its own delay: counted from the first reading noted instead, a monitor's readings that came
        just before it was due were decided again at once, before the other gateway had stored its share
        (CI: no alert). Deciding a reading again is a no-op for what was applied already (the lifecycle
        keys on msg_id).

        At most `RECHECK_CHUNK` readings are decided per call (the rest stay due, for the next calls:
        memory and the pause between batches stay bounded), and once `RECHECK_MAX_NOTED` patients and
        types are noted they are all due. Raises what the store or the database raise; what was due
        stays noted and is tried again `recheck_after` seconds later.
        """
        if self._recheck_after is None or self._rules is None or not self._to_recheck:
            return 0
        now = self._monotonic()
        if not force and now < self._recheck_paused_until:
            return 0
        if len(self._to_recheck) >= RECHECK_MAX_NOTED:
            self._recheck_all = True  # all of it due now, chunk after chunk
        everything, due_by = force or self._recheck_all, now - self._recheck_after
        keys: list[tuple[str, str]] = []
        for key, (_, noted_at) in self._to_recheck.items():
            if len(keys) == RECHECK_CHUNK or (not everything and noted_at > due_by):
                break  # in the order of noting: the rest are not due either
            keys.append(key)
        if not keys:
            return 0
        readings = [self._to_recheck[key][0] for key in keys]
        self._rules.forget(readings)  # reloaded from the store: what the other gateways stored too
        try:
            self._rules.commit(self._rules.prepare(self._rules.stage(readings)))
        except BaseException:
            self._recheck_paused_until = now + self._recheck_after  # tried again that much later
            raise
        for key in keys:  # noted meanwhile by no one: batches are processed on this thread too
            del self._to_recheck[key]
        if not self._to_recheck:
            self._recheck_all = False
        return len(readings)

    def _note_for_recheck(self, stored: Sequence[StoredReading]) -> None:
        now = self._monotonic()
        for reading in stored:
            key = (reading.patient_id, reading.reading.type)
            noted = self._to_recheck.pop(key, None)  # put back at the end: the dict in the order of noting
            if noted is not None and reading.reading.measured_at < noted[0].reading.measured_at:
                reading = noted[0]  # the newest is decided again, with every other in view
            self._to_recheck[key] = (reading, now)

    def _decode(self, batch: Sequence[InboundMessage], result: BatchResult) -> list[_Decoded]:
        now = self._clock()
        decoded = []
        for message in batch:
            outcome = self._parsed(message, now)
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

    def _parsed(self, message: InboundMessage, now: datetime) -> Reading | Rejection:
        """The message's payload parsed: on arrival (`triage`), or now."""
        if message.parsed is not None:
            return message.parsed
        return parse(message.topic, message.payload, now=now, limits=self._limits)

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

    def _write_while_preparing(
        self,
        rules: RulesStep[Staged, Prepared],
        resolved: list[tuple[InboundMessage, StoredReading]],
        result: BatchResult,
        *,
        commit_early: bool = False,
    ) -> Prepared | None:
        """Store the readings on the writer thread while `rules` prepares its decisions on this one.

        The rules read the store first (`stage`), before the write starts: a query that runs alongside
        a write can see a point half-written (InfluxDB 1.x: some fields and not others). Returns what
        to commit (None when nothing was stored, or when `commit_early` has committed it already: the
        critical part's decisions are committed while the write runs, not after it). A write that
        fails for good for some readings falls back to `_write`'s one-by-one path, and the decisions
        are made again for what was stored (not for a part committed early: its decisions stand, and
        its refused readings keep their alerts). A critical part decided without its history (`_stage`)
        is decided again in full once stored. A write that cannot be made now raises, as does a failed
        `prepare` or early commit (after the write has finished: an attempt leaves nothing running).
        """
        readings = [stored for _, stored in resolved]
        staged, complete = self._stage(rules, readings, critical=commit_early)
        pending = self._writer.submit(self._store.write, readings)
        try:
            # A critical part's own decisions come first; the rest's are made with looks in the queue.
            prepared = rules.prepare(staged) if commit_early else rules.prepare(staged, self._look_if_due)
            if commit_early:
                rules.commit(prepared)
        except BaseException:
            _finish(pending)
            raise
        self._await_write(pending)
        try:
            pending.result()
        except StorageRejected as exc:
            rules.forget(readings)
            log.warning("store refused a batch of %d (%s); retrying reading by reading", len(readings), exc)
            already = len(result.stored)  # an earlier part's readings, decided and committed already
            self._write_one_by_one(resolved, result)
            stored = result.stored[already:]
            decide_again = not commit_early  # a part committed early keeps its decisions
        else:
            result.stored.extend(readings)
            stored, decide_again = readings, False
        if not complete:
            # Decided without the history (only what the values decide alone), and now stored: decided
            # in full with it, or, while it still cannot be read, the batch fails and is tried again.
            decide_again = True
        if not decide_again:
            return None if commit_early else prepared
        again = rules.prepare(rules.stage(stored)) if stored else None
        if again is None or not commit_early:
            return again
        rules.commit(again)
        return None

    def _stage(
        self, rules: RulesStep[Staged, Any], readings: list[StoredReading], *, critical: bool
    ) -> tuple[Staged, bool]:
        """`rules.stage(readings)` and True; for a critical part whose history cannot be read from the
        store (it is down), staged without it, and False: the critical readings are alerted now, not
        once the store is back. What else there is to decide of them is decided once they are stored
        and their history can be read (`_write_while_preparing`); until then the batch fails and is
        tried again."""
        try:
            return rules.stage(readings), True
        except StorageError as exc:
            if not critical:
                raise
            log.warning("could not read the history (%s); deciding the critical readings without it", exc)
            metrics.CRITICAL_WITHOUT_HISTORY.inc()
            return rules.stage(readings, without_store=True), False

    def _await_write(self, pending: Future[None]) -> None:
        """Wait for the write, looking in the queue for critical readings meanwhile."""
        if self._queued is None or self._rules is None:
            return
        self._look_if_due()
        while not wait_for_futures([pending], timeout=LOOK_EVERY).done:
            self._look_in_queue()

    def _look_if_due(self) -> None:
        """Look in the queue if the last look was `LOOK_EVERY` ago or more (or none this batch)."""
        if self._monotonic() - self._last_look >= LOOK_EVERY:
            self._look_in_queue()

    def _look_in_queue(self) -> None:
        """Decide the critical readings that arrived in the queue since the last look (`watch_queue`)."""
        if self._queued is None or self._rules is None:
            return
        self._last_look = self._monotonic()
        try:
            self._overtake(self._rules, self._queued)
        except Exception as exc:  # their own batch decides them, as it would have anyway
            log.warning("could not decide queued critical readings ahead of their batch: %s", exc)

    def _overtake(self, rules: RulesStep[Any, Any], queued: Queued) -> None:
        start, fresh = queued(self._looked_at)
        self._looked_at = start + len(fresh)
        now = self._clock()
        last = -1
        devices: set[str] = set()
        for index, message in enumerate(fresh, start):
            outcome = self._parsed(message, now)
            if (
                not isinstance(outcome, Rejection)
                and outcome.msg_id not in self._decided_ahead
                and rules.urgent(outcome)
            ):
                last = index
                devices.add(outcome.device_id)
        if last < 0:
            return
        first, queue = queued(0)
        # The readings of those devices queued before (a monitor emptying its memory sends several at
        # once), so the critical one is decided with its predecessors in view, as its batch would.
        readings = [
            reading
            for message in queue[: last - first + 1]
            if not isinstance(reading := self._parsed(message, now), Rejection)
            and reading.device_id in devices
            and reading.msg_id not in self._decided_ahead
        ]
        patients = self._registry.patients_for([(r.device_id, r.measured_at) for r in readings])
        if self._in_hand is None:
            self._in_hand = {stored.patient_id for _, stored in self._batch_in_hand}
        ahead = [
            StoredReading(patient, reading, quality_flags(reading, self._limits))
            for reading, patient in zip(readings, patients, strict=True)
            if patient is not None and patient not in self._in_hand
        ]
        if not ahead:
            return
        rules.commit(rules.prepare(self._stage(rules, ahead, critical=True)[0]))
        if len(self._decided_ahead) + len(ahead) > MAX_DECIDED_AHEAD:
            self._decided_ahead.clear()
        self._decided_ahead.update(stored.reading.msg_id for stored in ahead)
        critical = sum(1 for stored in ahead if rules.urgent(stored.reading))
        metrics.READINGS_DECIDED_AHEAD.inc(critical)
        log.info("decided %d critical readings (%d in all) ahead of their batch", critical, len(ahead))

    def close(self) -> None:
        """Stop the writer thread (waits for a write in progress)."""
        self._writer.shutdown(wait=True)

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


def _urgent_first(
    rules: RulesStep[Any, Any], resolved: list[tuple[InboundMessage, StoredReading]]
) -> list[tuple[list[tuple[InboundMessage, StoredReading]], bool]]:
    """The batch in the parts to store and decide in turn, each with whether it is the urgent one: first
    every reading of the patients with an urgent reading, then the rest; one part when there is nothing
    to put first, or nothing after it."""
    first = {stored.patient_id for _, stored in resolved if rules.urgent(stored.reading)}
    if not first:
        return [(resolved, False)] if resolved else []
    ahead = [pair for pair in resolved if pair[1].patient_id in first]
    rest = [pair for pair in resolved if pair[1].patient_id not in first]
    return [(ahead, True), (rest, False)] if rest else [(ahead, True)]


def _finish(pending: Future[None]) -> None:
    """Wait for a write whose outcome no longer matters (the attempt failed anyway)."""
    try:
        pending.result()
    except Exception as exc:  # the attempt's own error is the one raised
        log.debug("write of a failed attempt also failed: %s", exc)


def _entry(message: InboundMessage, reason: str, detail: str, device_id: str | None) -> QuarantineEntry:
    return QuarantineEntry(
        topic=message.topic,
        payload=message.payload,
        reason=reason,
        detail=detail,
        device_id=device_id,
        received_at=message.received_at,
    )
