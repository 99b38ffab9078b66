"""How the gateway's batch loop cuts batches: full, or `batch_max_wait` after the first message arrived.

The MQTT side is a stand-in here (the loop's batching is what is tested; the real broker path is in
tests/integration/test_gateway_e2e.py): messages are handed to the loop's queue as paho's thread would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from gateway.errors import StorageUnavailable
from gateway.ingest import BatchResult, IngestPipeline
from gateway.mqtt import InboundMessage, MqttConsumer
from gateway.service import Gateway
from gateway.wire import Reading, Rejection, WireLimits, parse


class _Consumer:
    def __init__(self, deliver: Callable[[list[InboundMessage]], None]) -> None:
        self.deliver = deliver
        self.connected = threading.Event()
        self.reconnects = 0
        self.acked: list[InboundMessage] = []

    def start(self) -> None:
        self.connected.set()

    def stop(self) -> None:
        self.connected.clear()

    def ack(self, messages: Sequence[InboundMessage]) -> int:
        self.acked.extend(messages)
        return len(messages)


def _gateway(
    batch_size: int,
    batch_max_wait: float,
    queue_size: int = 1000,
    pipeline: object = None,
    triage: Callable[[list[InboundMessage]], list[InboundMessage]] | None = None,
) -> tuple[Gateway, _Consumer]:
    """A gateway on a stand-in consumer; without a `pipeline` only batches are cut (none is processed)."""
    consumers: list[_Consumer] = []

    def factory(deliver: Callable[[list[InboundMessage]], None]) -> MqttConsumer:
        consumers.append(_Consumer(deliver))
        return cast(MqttConsumer, consumers[-1])

    gateway = Gateway(
        consumer_factory=factory,
        pipeline=cast(IngestPipeline, pipeline),
        batch_size=batch_size,
        batch_max_wait=batch_max_wait,
        queue_size=queue_size,
        triage=triage,
    )
    return gateway, consumers[0]


def _message(n: int, received_at: datetime) -> InboundMessage:
    return InboundMessage("rpm/devices/d-001/readings", b"{}", n, 1, 1, received_at)


def _collect_within(gateway: Gateway, seconds: float) -> list[InboundMessage] | None:
    """The batch `_collect` returns, or None if it had not returned after `seconds`."""
    result: list[list[InboundMessage]] = []
    thread = threading.Thread(target=lambda: result.append(gateway._collect()), daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else None


def test_a_batch_whose_first_message_already_waited_takes_the_queue_without_waiting() -> None:
    # An hour's batch wait: a loop that waited for it would not return within the test's deadline.
    gateway, consumer = _gateway(batch_size=100, batch_max_wait=3600)
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    for n in range(1, 31):
        consumer.deliver([_message(n, long_ago)])
    batch = _collect_within(gateway, 30)
    assert batch is not None, "the loop waited although the first message had waited longer than the limit"
    assert [m.mid for m in batch] == list(range(1, 31))


def test_a_batch_stops_at_its_size_and_the_rest_stays_queued_in_order() -> None:
    gateway, consumer = _gateway(batch_size=10, batch_max_wait=3600)
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    for n in range(1, 26):
        consumer.deliver([_message(n, long_ago)])
    batches = [_collect_within(gateway, 30) for _ in range(3)]
    assert [[m.mid for m in b] if b is not None else None for b in batches] == [
        list(range(1, 11)),
        list(range(11, 21)),
        list(range(21, 26)),
    ]


def test_a_fresh_first_message_waits_for_more_until_the_batch_is_old_enough() -> None:
    # Full at two: the loop returns as soon as the second message comes, if it waited for it.
    gateway, consumer = _gateway(batch_size=2, batch_max_wait=60.0)
    consumer.deliver([_message(1, datetime.now(UTC))])
    late: list[InboundMessage] = []

    def deliver_later() -> None:
        # Delivered while the loop is still collecting: it must join the first message's batch.
        message = _message(2, datetime.now(UTC))
        late.append(message)
        consumer.deliver([message])

    timer = threading.Timer(0.2, deliver_later)
    timer.start()
    batch = _collect_within(gateway, 30)
    timer.join()
    assert batch is not None
    assert [m.mid for m in batch] == [1, 2]


def test_history_is_reloaded_often_only_by_members_of_a_shared_subscription() -> None:
    from gateway.service import history_ttl

    assert history_ttl("rpm/devices/+/readings") == 3600.0
    assert history_ttl("$share/rpmgw/rpm/devices/+/readings") == 60.0
    assert history_ttl("$queue/rpm/devices/+/readings") == 60.0


@pytest.mark.parametrize(
    ("topic", "seconds", "expected"),
    [
        ("rpm/devices/+/readings", "30", None),  # sees every reading itself
        ("$share/rpmgw/rpm/devices/+/readings", "30", 30.0),
        ("$queue/rpm/devices/+/readings", "7.5", 7.5),
        ("$share/rpmgw/rpm/devices/+/readings", "0", None),  # turned off
    ],
)
def test_only_members_of_a_shared_subscription_recheck(
    topic: str, seconds: str, expected: float | None
) -> None:
    from gateway.service import peer_recheck_after
    from rpmgw.settings import Settings

    settings = Settings.model_validate(
        {"mqtt": {"topic": topic}, "gateway": {"peer_recheck_seconds": seconds}}
    )
    assert peer_recheck_after(settings) == expected


def test_a_full_queue_holds_paho_back_but_never_blocks_the_shutdown() -> None:
    gateway, consumer = _gateway(batch_size=10, batch_max_wait=1.0, queue_size=3)
    now = datetime.now(UTC)
    for n in range(1, 4):
        consumer.deliver([_message(n, now)])
    network_thread = threading.Thread(target=consumer.deliver, args=([_message(4, now)],), daemon=True)
    network_thread.start()
    network_thread.join(0.5)
    assert network_thread.is_alive(), "a full queue must hold the broker's messages back, not drop them"
    gateway.stop()
    network_thread.join(30)
    assert not network_thread.is_alive(), "stopping deadlocked on paho's thread waiting for a full queue"
    assert [m.mid for m in (_collect_within(gateway, 30) or [])] == [1, 2, 3]  # the 4th: redelivered later


def test_a_burst_larger_than_the_room_left_goes_in_as_room_is_made_in_order() -> None:
    gateway, consumer = _gateway(batch_size=4, batch_max_wait=0.0, queue_size=5)
    now = datetime.now(UTC)
    network_thread = threading.Thread(
        target=consumer.deliver, args=([_message(n, now) for n in range(1, 13)],), daemon=True
    )
    network_thread.start()
    batches: list[list[int]] = []
    while sum(map(len, batches)) < 12:
        batch = _collect_within(gateway, 30)
        assert batch is not None, "the loop did not return"
        assert len(batches) < 100, f"the burst did not get through: {batches}"
        if batch:
            batches.append([m.mid for m in batch])
    network_thread.join(30)
    assert not network_thread.is_alive(), "the network thread is still waiting with the burst delivered"
    assert [mid for batch in batches for mid in batch] == list(range(1, 13))
    assert batches[0] == [1, 2, 3, 4]  # what fitted at once, up to a batch
    assert max(map(len, batches)) <= 4


class _Pipeline:
    def __init__(self) -> None:
        self.processed: list[list[int]] = []
        self.rechecks: list[tuple[int, bool]] = []  # (batches processed by then, force)
        self.recheck_error: Exception | None = None
        self.failures = 0  # attempts to fail before processing succeeds
        self.looks: list[float] = []  # when `look_between_attempts` was called (monotonic)
        self.attempts: list[float] = []

    def process(self, batch: Sequence[InboundMessage]) -> BatchResult:
        self.attempts.append(time.monotonic())
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("injected: InfluxDB unreachable")
        self.processed.append([m.mid for m in batch])
        return BatchResult()

    def look_between_attempts(self) -> None:
        self.looks.append(time.monotonic())

    def recheck(self, *, force: bool = False) -> int:
        self.rechecks.append((len(self.processed), force))
        if self.recheck_error is not None:
            raise self.recheck_error
        return 0

    def close(self) -> None:
        pass


def test_the_pipeline_may_look_at_what_is_queued_without_taking_it() -> None:
    gateway, consumer = _gateway(batch_size=10, batch_max_wait=0.01)
    now = datetime.now(UTC)
    consumer.deliver([_message(n, now) for n in range(1, 4)])
    first, queued = gateway.queued(0)
    assert (first, [m.mid for m in queued]) == (0, [1, 2, 3])
    first, queued = gateway.queued(2)
    assert (first, [m.mid for m in queued]) == (2, [3])
    assert [m.mid for m in gateway._collect()] == [1, 2, 3]


def _run_until_a_batch_is_processed(pipeline: _Pipeline) -> _Consumer:
    """Three messages through the gateway's loop, stopped once the pipeline has processed a batch."""
    gateway, consumer = _gateway(batch_size=10, batch_max_wait=0.01, queue_size=100, pipeline=pipeline)
    gateway.between_batches = lambda: gateway.stop() if pipeline.processed else None
    consumer.deliver([_message(n, datetime.now(UTC)) for n in range(1, 4)])
    runner = threading.Thread(target=gateway.run, daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "the loop did not stop"
    return consumer


def test_the_loop_rechecks_after_each_batch_and_once_more_when_it_stops() -> None:
    pipeline = _Pipeline()
    pipeline.recheck_error = StorageUnavailable("injected: InfluxDB unreachable")  # logged, not fatal
    consumer = _run_until_a_batch_is_processed(pipeline)
    assert consumer.acked  # the failed recheck did not stop the batch's acknowledgement
    assert pipeline.rechecks[-2:] == [(1, False), (1, True)]


def test_a_batch_waiting_for_its_next_attempt_lets_the_pipeline_look_in_the_queue_meanwhile() -> None:
    """Between the attempts at a failed batch (0.5 s, then 1 s) the pipeline looks in the queue for
    critical readings every RETRY_LOOK_EVERY, not only once per attempt."""
    pipeline = _Pipeline()
    pipeline.failures = 2
    _run_until_a_batch_is_processed(pipeline)
    assert pipeline.processed == [[1, 2, 3]] and len(pipeline.attempts) == 3
    first, second, third = pipeline.attempts
    between_first = [t for t in pipeline.looks if first < t < second]
    between_second = [t for t in pipeline.looks if second < t < third]
    # Each wait is longer than RETRY_LOOK_EVERY: a look as it begins and another after the first step at
    # least, however slow the machine (3 and 5 when it keeps time).
    assert len(between_first) >= 2 and len(between_second) >= 2, (between_first, between_second)


def test_the_loop_calls_between_batches_after_each_batch_is_acknowledged() -> None:
    pipeline = _Pipeline()
    gateway, consumer = _gateway(batch_size=10, batch_max_wait=0.01, queue_size=100, pipeline=pipeline)
    seen: list[tuple[int, list[list[int]]]] = []

    def between() -> None:
        seen.append((len(consumer.acked), list(pipeline.processed)))
        if pipeline.processed:
            gateway.stop()

    gateway.between_batches = between
    consumer.deliver([_message(n, datetime.now(UTC)) for n in range(1, 4)])
    runner = threading.Thread(target=gateway.run, daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "the loop did not stop"
    assert seen[-1] == (3, [[1, 2, 3]])  # called once the batch was processed and acknowledged


def test_each_burst_is_parsed_on_arrival_and_queued_unparsed_if_parsing_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bursts: list[list[int]] = []

    def triage(messages: list[InboundMessage]) -> list[InboundMessage]:
        bursts.append([m.mid for m in messages])
        if messages[0].mid == 3:
            raise RuntimeError("injected: a bug in parsing")
        now = datetime.now(UTC)
        return [replace(m, parsed=parse(m.topic, m.payload, now=now, limits=WireLimits())) for m in messages]

    gateway, consumer = _gateway(batch_size=10, batch_max_wait=0.01, triage=triage)
    now = datetime.now(UTC)
    consumer.deliver([_message(1, now), _message(2, now)])
    consumer.deliver([_message(3, now)])
    assert bursts == [[1, 2], [3]]
    queued = gateway._collect()
    assert [m.mid for m in queued] == [1, 2, 3]  # nothing lost to the failure
    parsed: list[Reading | Rejection | None] = [m.parsed for m in queued]
    assert [type(p).__name__ for p in parsed] == ["Rejection", "Rejection", "NoneType"]  # b"{}" is no reading
    assert "could not parse 1 messages on arrival" in caplog.text
