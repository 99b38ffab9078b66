"""The simulator's runner: simulated devices publishing over MQTT (aiomqtt), at a steady pace.

    config = SimConfig(patients=100, seed=7, faults={FaultKind.MALFORMED: 0.02}, count=1_000)
    report = asyncio.run(run_simulation(config, settings.mqtt))

The pure part, `Traffic`, decides what is published in which order (deterministic from the seed);
the rest paces it, spreads it over MQTT connections and waits for every PUBACK.

Time: a reading's `measured_at` runs on a simulated clock that starts at `config.start` and advances
`config.speed` simulated seconds per real second, but never past the wall clock (a device cannot
measure in the future), so a run started in the past at high speed catches up with now and then
goes on in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiomqtt
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from device_sim.devices import DEFAULT_TIMEZONE, Fleet, Outgoing, SimDevice, build_fleet, encode, status_topic
from device_sim.errors import BrokerUnreachable, EnrolmentError, SimConfigError
from device_sim.faults import FaultInjector, FaultKind
from device_sim.profiles import DEFAULT_MIX, Condition
from rpmgw.errors import RpmgwError
from rpmgw.settings import MqttSettings

if TYPE_CHECKING:
    from rpmgw.models import Enrolment

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
OFFLINE_STATUS = b'{"online":false}'
ENROLMENT_HISTORY = timedelta(days=400)


def utc_now() -> datetime:
    """The wall clock, as an aware UTC datetime."""
    return datetime.now(UTC)


class SimConfig(BaseModel):
    """Everything a simulation run needs besides the broker; validated once, at construction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patients: int = Field(default=10, ge=1, le=1_000_000)
    seed: int = 1
    mix: Mapping[Condition, float] = Field(default_factory=lambda: dict(DEFAULT_MIX))
    mg_dl_share: float = Field(default=0.2, ge=0, le=1)
    timezone: str = DEFAULT_TIMEZONE
    # Probability per reading of a dangerous episode (severe/low BP, hypo-/hyperglycaemia).
    danger: float = Field(default=0.05, ge=0, le=1)
    # Simulated clock: start (None: now) and simulated seconds per real second.
    start: AwareDatetime | None = None
    speed: float = Field(default=1.0, gt=0)
    # Pace: every device publishes every `interval` s, unless `rate` (readings/s in total) is given.
    interval: float = Field(default=5.0, gt=0)
    rate: float | None = Field(default=None, gt=0)
    # Stop after `count` messages or `duration` s, whichever comes first (neither: until a signal).
    count: int | None = Field(default=None, ge=1)
    duration: float | None = Field(default=None, gt=0)
    faults: Mapping[FaultKind, float] = Field(default_factory=dict)
    # MQTT connections at most; devices share them round-robin when there are fewer than devices.
    connections: int | None = Field(default=None, ge=1)
    manifest: Path | None = None
    max_inflight: int = Field(default=100, ge=1, le=65_535)  # unacknowledged publishes per connection
    ack_timeout: float = Field(default=10.0, gt=0)  # wait for one PUBACK before reconnecting
    drain_timeout: float = Field(default=10.0, ge=0)  # on SIGINT/SIGTERM: wait this long for PUBACKs
    connect_deadline: float = Field(default=30.0, gt=0)  # give up when no device connects by then
    # Per-device broker accounts (username = device id, see device_sim.accounts); None: every
    # connection logs in with the MqttSettings account (the simulator's `rpmgw-sim`).
    device_passwords: Mapping[str, str] | None = Field(default=None, repr=False)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("mix")
    @classmethod
    def _weights(cls, value: Mapping[Condition, float]) -> Mapping[Condition, float]:
        if any(weight < 0 for weight in value.values()) or sum(value.values()) <= 0:
            raise ValueError("condition weights must be >= 0 with a positive sum")
        return dict(value)

    @field_validator("faults")
    @classmethod
    def _probabilities(cls, value: Mapping[FaultKind, float]) -> Mapping[FaultKind, float]:
        if any(not 0 <= p <= 1 for p in value.values()) or sum(value.values()) > 1:
            raise ValueError("fault probabilities must be in [0, 1] and add up to at most 1")
        return dict(value)

    @model_validator(mode="after")
    def _own_connection_per_account(self) -> SimConfig:
        if self.device_passwords is not None and self.connections is not None:
            raise ValueError("per-device credentials need one connection per device (no --connections)")
        return self

    @model_validator(mode="after")
    def _start_not_in_future(self) -> SimConfig:
        if self.start is not None and self.start > utc_now() + timedelta(minutes=1):
            raise ValueError(f"start {self.start.isoformat()} is in the future; devices cannot measure there")
        return self


@dataclass(frozen=True, slots=True)
class SimReport:
    """What a run did: how many messages were generated, published and acknowledged."""

    generated: int  # messages handed to the connections (the manifest holds the acknowledged ones)
    acked: int
    unacked: int  # generated but never acknowledged (stopped by a signal, or the drain deadline passed)
    expected_stored: int  # acknowledged, valid and not a duplicate: the readings the gateway must store
    expected_rejected: int  # acknowledged and breaking the contract: the gateway must quarantine them
    duplicates: int
    reconnects: int
    buffered: int  # readings still held by offline devices at the end, never published
    elapsed: float
    interrupted: bool


class Traffic:
    """What the fleet publishes, slot after slot: pure and deterministic from the config's seed.

    Slot k belongs to device k mod n and is due k / rate seconds after the start; it yields zero
    messages (the device is offline), one, or several (a duplicate, an offline burst).
    """

    def __init__(self, config: SimConfig, *, start: datetime) -> None:
        self.config = config
        self.start = start
        self.fleet: Fleet = build_fleet(
            patients=config.patients,
            seed=config.seed,
            mix=config.mix,
            mg_dl_share=config.mg_dl_share,
            timezone=config.timezone,
        )
        self.injector = FaultInjector(probabilities=config.faults, seed=config.seed)
        devices = len(self.fleet.devices)
        self.rate = config.rate if config.rate is not None else devices / config.interval
        # Simulated seconds between two readings of one device.
        self._device_period = devices / self.rate * config.speed

    def due(self, slot: int) -> float:
        """Seconds after the run's start at which `slot` is published."""
        return slot / self.rate

    def device(self, slot: int) -> SimDevice:
        """The device that measures in `slot`."""
        return self.fleet.devices[slot % len(self.fleet.devices)]

    def messages(self, slot: int, wall_now: datetime) -> list[Outgoing]:
        """The messages published in `slot`; `wall_now` caps measured_at and anchors clock-skew faults."""
        device = self.device(slot)
        simulated = self.start + timedelta(seconds=self.due(slot) * self.config.speed)
        # Spread readings over the device's period so their times of day vary at high speed.
        measured_at = simulated - timedelta(seconds=device.rng.uniform(0, self._device_period))
        measured_at = min(measured_at, wall_now)
        payload = device.measure(measured_at, danger=self.config.danger)
        return self.injector.apply(device, payload, wall_now)


@dataclass(slots=True)
class _Stats:
    generated: int = 0
    sent: int = 0
    acked: int = 0
    expected_stored: int = 0
    expected_rejected: int = 0
    duplicates: int = 0
    retries: int = 0
    reconnects: int = 0
    connected: int = 0

    def count_ack(self, message: Outgoing) -> None:
        self.acked += 1
        if message.duplicate:
            self.duplicates += 1
        elif message.expected == "stored":
            self.expected_stored += 1
        else:
            self.expected_rejected += 1


class ManifestWriter:
    """Writes one JSON line per acknowledged message (see `Outgoing.manifest_record`)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: Path | None) -> Iterator[ManifestWriter | None]:
        """A writer on a new file at `path` (None: no manifest); flushed and closed on exit."""
        if path is None:
            yield None
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as stream:
            yield cls(stream)

    def write(self, message: Outgoing) -> None:
        """Append the message's line."""
        self._stream.write(json.dumps(message.manifest_record(), ensure_ascii=False) + "\n")

    def flush(self) -> None:
        """Make what was written so far visible to readers of the file."""
        self._stream.flush()


class _End:
    """Queue sentinel: the producer is done, publish what is queued and disconnect."""


_END = _End()
_QueueItem = Outgoing | _End


class _Reconnect(Exception):
    """Raised inside a connection to close it cleanly and open it again at once."""


@dataclass(slots=True)
class Backoff:
    """Exponential reconnect delays with jitter, so that a fleet does not reconnect in lockstep."""

    minimum: float
    maximum: float
    rng: random.Random
    attempt: int = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each failure doubles it up to `maximum`."""
        ceiling = min(self.maximum, self.minimum * 2.0**self.attempt)
        self.attempt += 1
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        """Start over after a successful connection."""
        self.attempt = 0


@dataclass(slots=True)
class _Run:
    """State shared by the producer, the connections and the progress display of one run."""

    config: SimConfig
    mqtt: MqttSettings
    stats: _Stats
    manifest: ManifestWriter | None
    stop: asyncio.Event
    any_connected: asyncio.Event = field(default_factory=asyncio.Event)
    last_error: str | None = None
    _stop_deadline: float | None = None

    def drain_deadline(self) -> float | None:
        """Monotonic time until which PUBACKs are awaited once stopped; None while running."""
        if not self.stop.is_set():
            return None
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.config.drain_timeout
        return self._stop_deadline

    def acked(self, message: Outgoing) -> None:
        self.stats.count_ack(message)
        if self.manifest is not None:
            self.manifest.write(message)


@dataclass(slots=True)
class _Connection:
    """One MQTT connection publishing for one device, or for several when connections are shared."""

    run: _Run
    client_id: str
    devices: tuple[SimDevice, ...]
    queue: asyncio.Queue[_QueueItem]
    backoff: Backoff
    retry: deque[Outgoing] = field(default_factory=deque)
    ended: bool = False

    async def serve(self) -> None:
        """Connect, publish until the producer ends or the run stops, reconnecting on failures."""
        while True:
            try:
                async with self._client() as client:
                    self.backoff.reset()
                    self.run.any_connected.set()
                    self.run.stats.connected += 1
                    try:
                        await self._announce(client, online=True)
                        await self._pump(client)
                        await self._announce(client, online=False)
                    finally:
                        self.run.stats.connected -= 1
                    return
            except _Reconnect:
                continue
            except aiomqtt.MqttError as exc:
                self.run.last_error = f"{self.client_id}: {exc}"
                if self.run.stop.is_set():
                    return
                self.run.stats.reconnects += 1
                delay = self.backoff.next_delay()
                log.debug("%s: %s; reconnecting in %.1f s", self.client_id, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.run.stop.wait(), delay)

    def _client(self) -> aiomqtt.Client:
        mqtt = self.run.mqtt
        username, password = mqtt.username, mqtt.password
        passwords = self.run.config.device_passwords
        if passwords is not None:
            # One device per connection (validated): it logs in as itself.
            username = self.devices[0].device_id
            password = passwords[username]
        client = aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            username=username,
            password=password,
            identifier=self.client_id,
            keepalive=mqtt.keepalive,
            timeout=self.run.config.ack_timeout,
            # One will per connection: a shared connection's will speaks for its first device.
            will=aiomqtt.Will(status_topic(self.devices[0].device_id), OFFLINE_STATUS, qos=1, retain=True),
            max_inflight_messages=self.run.config.max_inflight,
        )
        # aiomqtt warns above this many pending calls; our own bound is max_inflight (+ statuses).
        client.pending_calls_threshold = self.run.config.max_inflight + len(self.devices) + 1
        return client

    async def _announce(self, client: aiomqtt.Client, *, online: bool) -> None:
        if not online and self.run.stop.is_set():
            # Stopping: one short try, the broker's will covers the rest.
            with contextlib.suppress(aiomqtt.MqttError):
                await asyncio.gather(
                    *(self._status(client, device, online, timeout=2.0) for device in self.devices)
                )
            return
        await asyncio.gather(*(self._status(client, device, online) for device in self.devices))

    @staticmethod
    async def _status(
        client: aiomqtt.Client, device: SimDevice, online: bool, timeout: float | None = None
    ) -> None:
        payload = encode(device.status(online=online))
        await client.publish(status_topic(device.device_id), payload, qos=1, retain=True, timeout=timeout)

    async def _pump(self, client: aiomqtt.Client) -> None:
        inflight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.run.config.max_inflight)
        failed = asyncio.Event()
        failure: list[aiomqtt.MqttError] = []

        async def send(message: Outgoing) -> None:
            try:
                await client.publish(message.topic, message.payload, qos=1)
            except aiomqtt.MqttError as exc:
                failure.append(exc)
                self.retry.append(message)
                self.run.stats.retries += 1
                failed.set()
            else:
                self.run.acked(message)
            finally:
                slots.release()

        try:
            while not failed.is_set():
                item = await self._next(failed)
                if item is None or isinstance(item, _End):
                    break
                if item.reconnect_first:
                    # The device "lost" its connection: resend after a fresh CONNECT, as real ones do.
                    self.retry.appendleft(replace(item, reconnect_first=False))
                    await self._settle(inflight)
                    raise _Reconnect
                await slots.acquire()
                self.run.stats.sent += 1
                task = asyncio.create_task(send(item))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
        finally:
            await self._settle(inflight)
        if failure:
            raise failure[0]

    async def _next(self, failed: asyncio.Event) -> _QueueItem | None:
        """The next message (retries first), `_END`, or None when the run stops or the connection failed."""
        if self.run.stop.is_set():
            return None
        if self.retry:
            return self.retry.popleft()
        if self.ended:
            return _END
        if not self.queue.empty():
            item = self.queue.get_nowait()
        else:
            fetched = await _get_unless(self.queue, self.run.stop, failed)
            if fetched is None:
                return None
            item = fetched
        if isinstance(item, _End):
            self.ended = True
        return item

    async def _settle(self, inflight: set[asyncio.Task[None]]) -> None:
        """Wait for outstanding PUBACKs; when stopping, only until the drain deadline."""
        if not inflight:
            return
        deadline = self.run.drain_deadline()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        _done, pending = await asyncio.wait(set(inflight), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def _get_unless(queue: asyncio.Queue[_QueueItem], *events: asyncio.Event) -> _QueueItem | None:
    """The next queue item, or None when one of `events` is set first."""
    get = asyncio.ensure_future(queue.get())
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait([get, *waits], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        # A cancelled get() leaves its item in the queue, so nothing is lost.
        if not get.done():
            get.cancel()
    if get.done() and not get.cancelled():
        return get.result()
    return None


def plan_connections(
    devices: tuple[SimDevice, ...], limit: int | None
) -> list[tuple[str, tuple[SimDevice, ...]]]:
    """Client ids and devices of each connection: one per device, or `limit` shared round-robin."""
    if limit is None or limit >= len(devices):
        return [(f"sim-{device.device_id}", (device,)) for device in devices]
    return [(f"sim-pool-{index + 1:04d}", devices[index::limit]) for index in range(limit)]


async def run_simulation(
    config: SimConfig,
    mqtt: MqttSettings,
    *,
    progress: TextIO | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    clock: Clock = utc_now,
) -> SimReport:
    """Publish the simulated fleet's readings until `count`/`duration` is reached or `stop` is set.

    SIGINT/SIGTERM set `stop` (when `handle_signals` and running in the main thread): no new
    message is published, outstanding PUBACKs are awaited for at most `config.drain_timeout` s.
    Raises `BrokerUnreachable` when no device connects within `config.connect_deadline` s.
    """
    stop = stop if stop is not None else asyncio.Event()
    traffic = Traffic(config, start=config.start or clock())
    stats = _Stats()
    began = time.monotonic()
    with ManifestWriter.open(config.manifest) as manifest, _StopOnSignals(stop, enabled=handle_signals):
        run = _Run(config=config, mqtt=mqtt, stats=stats, manifest=manifest, stop=stop)
        connections = _connections(run, traffic)
        by_device = {device.device_id: conn for conn in connections for device in conn.devices}
        try:
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(conn.serve()) for conn in connections]
                group.create_task(_watch_startup(run))
                if progress is not None:
                    group.create_task(_show_progress(run, progress, workers, began))
                await _produce(run, traffic, by_device, clock, began)
        except* BrokerUnreachable as group_error:
            raise group_error.exceptions[0] from None
    return SimReport(
        generated=stats.generated,
        acked=stats.acked,
        unacked=stats.generated - stats.acked,
        expected_stored=stats.expected_stored,
        expected_rejected=stats.expected_rejected,
        duplicates=stats.duplicates,
        reconnects=stats.reconnects,
        buffered=traffic.injector.pending(),
        elapsed=time.monotonic() - began,
        interrupted=stop.is_set(),
    )


def _connections(run: _Run, traffic: Traffic) -> list[_Connection]:
    passwords = run.config.device_passwords
    if passwords is not None:
        missing = [d.device_id for d in traffic.fleet.devices if d.device_id not in passwords]
        if missing:
            raise SimConfigError(
                f"{len(missing)} devices have no broker password (first: {missing[0]}); "
                "create them with --password-file"
            )
    plans = plan_connections(traffic.fleet.devices, run.config.connections)
    # Room for a few rounds of in-flight messages: enough to keep the pipe full, small enough to bound memory.
    size = max(16, 2 * run.config.max_inflight)
    return [
        _Connection(
            run=run,
            client_id=client_id,
            devices=devices,
            queue=asyncio.Queue(maxsize=size),
            backoff=Backoff(
                run.mqtt.reconnect_min_delay,
                run.mqtt.reconnect_max_delay,
                random.Random(f"{run.config.seed}/backoff/{client_id}"),
            ),
        )
        for client_id, devices in plans
    ]


async def _produce(
    run: _Run, traffic: Traffic, by_device: Mapping[str, _Connection], clock: Clock, began: float
) -> None:
    """Generate slot after slot on schedule and hand the messages to their connections."""
    config = run.config
    slot = 0
    try:
        while not run.stop.is_set():
            elapsed = time.monotonic() - began
            if config.duration is not None and elapsed >= config.duration:
                return
            while traffic.due(slot) <= elapsed:
                for message in traffic.messages(slot, clock()):
                    if not await _put(by_device[message.device_id].queue, message, run.stop):
                        return
                    run.stats.generated += 1
                    if config.count is not None and run.stats.generated >= config.count:
                        return
                slot += 1
            wait = traffic.due(slot) - (time.monotonic() - began)
            if config.duration is not None:
                wait = min(wait, config.duration - (time.monotonic() - began))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.stop.wait(), max(0.0, wait))
    finally:
        for conn in {id(conn): conn for conn in by_device.values()}.values():
            await _put(conn.queue, _END, run.stop)


async def _put(queue: asyncio.Queue[_QueueItem], item: _QueueItem, stop: asyncio.Event) -> bool:
    """Queue `item`, waiting for room (back-pressure); False when the run stops first."""
    if not queue.full():
        queue.put_nowait(item)
        return True
    put = asyncio.ensure_future(queue.put(item))
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({put, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if put.done():
        return True
    put.cancel()
    return False


async def _watch_startup(run: _Run) -> None:
    """Fail the run when no connection succeeds within the start-up deadline (unless stopped first)."""
    connected = asyncio.ensure_future(run.any_connected.wait())
    stopped = asyncio.ensure_future(run.stop.wait())
    done, _ = await asyncio.wait(
        {connected, stopped}, timeout=run.config.connect_deadline, return_when=asyncio.FIRST_COMPLETED
    )
    connected.cancel()
    stopped.cancel()
    if not done:
        run.stop.set()
        raise BrokerUnreachable(
            f"no simulated device could connect to the MQTT broker at {run.mqtt.host}:{run.mqtt.port} "
            f"within {run.config.connect_deadline:g} s (last error: {run.last_error})"
        )


async def _show_progress(run: _Run, stream: TextIO, workers: list[asyncio.Task[None]], began: float) -> None:
    """One updating line on a TTY, a line every few seconds otherwise; a final line at the end."""
    tty = stream.isatty()
    period = 0.5 if tty else 5.0
    window: deque[tuple[float, int]] = deque([(began, 0)], maxlen=max(2, int(5 / period) + 1))
    all_done = asyncio.ensure_future(asyncio.wait(workers))
    try:
        while not all_done.done():
            await asyncio.wait({all_done}, timeout=period)
            now = time.monotonic()
            window.append((now, run.stats.acked))
            line = _progress_line(run.stats, window, now - began)
            stream.write(f"\r{line}\x1b[K" if tty else line + "\n")
            stream.flush()
            if run.manifest is not None:
                run.manifest.flush()
    finally:
        all_done.cancel()
        if tty:
            stream.write("\n")
            stream.flush()


def _progress_line(stats: _Stats, window: deque[tuple[float, int]], elapsed: float) -> str:
    (t0, acked0), (t1, acked1) = window[0], window[-1]
    rate = (acked1 - acked0) / (t1 - t0) if t1 > t0 else 0.0
    return (
        f"sim: {stats.acked:,} acked / {stats.sent:,} sent / {stats.generated:,} generated, "
        f"{rate:,.1f} msg/s, {stats.connected} connected, {stats.reconnects} reconnects, "
        f"{stats.retries} retries, {elapsed:,.0f} s"
    )


class _StopOnSignals(contextlib.AbstractContextManager[None]):
    """Route SIGINT/SIGTERM to the stop event for the duration of the run (main thread only)."""

    def __init__(self, stop: asyncio.Event, *, enabled: bool) -> None:
        self._stop = stop
        self._installed: list[signal.Signals] = []
        self._enabled = enabled and threading.current_thread() is threading.main_thread()

    def __enter__(self) -> None:
        if not self._enabled:
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop.set)
            self._installed.append(signum)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)


@dataclass(frozen=True, slots=True)
class EnrolmentSummary:
    """What `enrol_fleet` did."""

    patients: int  # created or brought up to date
    enrolled: int  # devices newly enrolled to their simulated patient
    unchanged: int  # devices already enrolled to that patient


def enrol_fleet(
    fleet: Fleet, database_url: str, *, now: datetime, history: timedelta = ENROLMENT_HISTORY
) -> EnrolmentSummary:
    """Create the fleet's patients and enrol each device to its patient; running it twice changes nothing.

    A device is enrolled only when it is not currently enrolled to its simulated patient, from
    `now - history` (so that offline-buffered and backfilled readings resolve to the patient) or
    just after the end of its latest earlier enrolment.
    """
    from rpmgw.admin import enrol_device, list_enrolments, upsert_patient
    from rpmgw.db import check_current, make_engine, session_factory

    engine = make_engine(database_url)
    enrolled = unchanged = 0
    try:
        check_current(engine)
        with session_factory(engine).begin() as session:
            for patient in fleet.patients:
                upsert_patient(
                    session,
                    patient_id=patient.patient_id,
                    display_name=patient.display_name,
                    phone=patient.phone,
                    language=patient.language,
                    timezone=patient.timezone,
                )
            for device in fleet.devices:
                history_rows = list_enrolments(session, device.device_id)
                current = next((row for row in history_rows if row.valid_to is None), None)
                if current is not None and current.patient_id == device.patient.patient_id:
                    unchanged += 1
                    continue
                valid_from = _enrolment_start(history_rows, now - history)
                enrol_device(
                    session,
                    device_id=device.device_id,
                    patient_id=device.patient.patient_id,
                    valid_from=valid_from,
                    kind=device.kind,
                )
                enrolled += 1
    except RpmgwError as exc:
        raise EnrolmentError(f"enrolling the simulated devices failed: {exc}") from exc
    finally:
        engine.dispose()
    return EnrolmentSummary(patients=len(fleet.patients), enrolled=enrolled, unchanged=unchanged)


def _enrolment_start(history: Sequence[Enrolment], earliest: datetime) -> datetime:
    # History never overlaps: start after every earlier enrolment's start and end.
    boundaries = [row.valid_from for row in history] + [row.valid_to for row in history if row.valid_to]
    if not boundaries:
        return earliest
    return max(earliest, max(boundaries) + timedelta(seconds=1))
