"""The bounded queue between paho's network thread and the gateway's batch loop, many items at a time.

`queue.Queue` takes a lock and signals a condition per item on each side; the network thread hands
over a burst of up to a thousand readings at once and the loop takes up to a batch, so here each side
pays once per burst or batch instead (profiled: the per-message put and get were 3-4 % of a draining
gateway's CPU samples, and they woke the batch loop for every message).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Generic, TypeVar

T = TypeVar("T")


class Handoff(Generic[T]):
    """A FIFO of at most `maxsize` items; one producer and one consumer thread (more are safe, too)."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self._maxsize = maxsize
        self._items: deque[T] = deque()
        self._taken = 0  # items taken since the start: the position of the first waiting item
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    def qsize(self) -> int:
        """How many items wait."""
        return len(self._items)

    def put_many(self, items: Sequence[T], timeout: float) -> int:
        """Append `items` in order, waiting up to `timeout` seconds for room while the queue is full.

        Returns how many were taken: all of them, or (after the timeout) the first so many.
        """
        taken = 0
        deadline: float | None = None
        with self._lock:
            while taken < len(items):
                room = self._maxsize - len(self._items)
                if room > 0:
                    self._items.extend(items[taken : taken + room])
                    taken = min(len(items), taken + room)
                    self._not_empty.notify()
                    continue
                if deadline is None:
                    deadline = time.monotonic() + timeout
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._not_full.wait(remaining)
        return taken

    def peek(self, start: int) -> tuple[int, list[T]]:
        """The items at position `start` and after, oldest first, left in the queue, and the position of
        the first of them.

        An item's position is how many items were put before it: it stays the same while items before it
        are taken, so a consumer that looked at the queue up to some position can look at only what came
        since, whatever it took meanwhile. Taken items are gone: a `start` before the first waiting item
        starts there. Costs what it returns, not the length of the queue.
        """
        with self._lock:
            first = max(start, self._taken)
            count = self._taken + len(self._items) - first
            if count <= 0:
                return first, []
            newest_first = list(islice(reversed(self._items), count))
            newest_first.reverse()
            return first, newest_first

    def get_many(self, limit: int, timeout: float) -> list[T]:
        """Up to `limit` items, oldest first; waits up to `timeout` seconds for the first ([] if none)."""
        with self._lock:
            if not self._items:
                deadline = time.monotonic() + timeout
                while not self._items:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return []
                    self._not_empty.wait(remaining)
            items = self._items
            count = min(limit, len(items))
            taken = [items.popleft() for _ in range(count)]
            self._taken += count
            self._not_full.notify()
            return taken
