"""The gateway's queue between paho's thread and the batch loop: order, bounds and waiting."""

from __future__ import annotations

import threading
import time

import pytest

from gateway.handoff import Handoff


def test_items_come_out_in_order_up_to_the_limit_asked_for() -> None:
    handoff: Handoff[int] = Handoff(100)
    assert handoff.put_many([1, 2, 3], timeout=0) == 3
    assert handoff.put_many([4, 5], timeout=0) == 2
    assert handoff.qsize() == 5
    assert handoff.get_many(2, timeout=0) == [1, 2]
    assert handoff.get_many(10, timeout=0) == [3, 4, 5]
    assert handoff.qsize() == 0


def test_peek_shows_what_waits_from_a_position_on_and_takes_nothing() -> None:
    handoff: Handoff[int] = Handoff(100)
    handoff.put_many([1, 2, 3], timeout=0)
    assert handoff.peek(0) == (0, [1, 2, 3])
    handoff.put_many([4], timeout=0)
    assert handoff.peek(3) == (3, [4])  # only what came since
    assert handoff.peek(9) == (9, [])
    assert handoff.qsize() == 4
    assert handoff.get_many(2, timeout=0) == [1, 2]
    # Positions stay: what was at 3 is still at 3 once two were taken; before the first is the first.
    handoff.put_many([5], timeout=0)
    assert handoff.peek(3) == (3, [4, 5])
    assert handoff.peek(0) == (2, [3, 4, 5])
    assert handoff.get_many(10, timeout=0) == [3, 4, 5]
    assert handoff.peek(0) == (5, [])


def test_a_full_queue_takes_what_fits_and_reports_how_much_after_the_timeout() -> None:
    handoff: Handoff[int] = Handoff(3)
    assert handoff.put_many([1, 2, 3, 4, 5], timeout=0.05) == 3
    assert handoff.put_many([6], timeout=0) == 0
    assert handoff.get_many(10, timeout=0) == [1, 2, 3]


def test_get_waits_for_the_first_item_and_returns_nothing_when_none_comes() -> None:
    handoff: Handoff[str] = Handoff(10)
    assert handoff.get_many(5, timeout=0.05) == []
    timer = threading.Timer(0.1, handoff.put_many, args=(["a", "b"], 0))
    timer.start()
    assert handoff.get_many(5, timeout=30) == ["a", "b"]
    timer.join()


def test_a_waiting_put_goes_on_as_soon_as_room_is_made() -> None:
    handoff: Handoff[int] = Handoff(2)
    taken: list[int] = []
    producer = threading.Thread(target=lambda: taken.append(handoff.put_many([1, 2, 3, 4], timeout=30)))
    producer.start()
    received: list[int] = []
    deadline = time.monotonic() + 30
    while len(received) < 4 and time.monotonic() < deadline:
        received += handoff.get_many(1, timeout=1)
    producer.join(30)
    assert received == [1, 2, 3, 4]
    assert taken == [4]


def test_a_queue_must_hold_something() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Handoff(0)
