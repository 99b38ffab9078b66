"""Garbage-collector settings for the long-running processes.

CPython's default thresholds (700, 10, 10) made the gateway spend a fifth of its time in the collector:
every batch allocates tens of thousands of short-lived objects, the young collections promote those
still alive mid-batch, and the promoted ones soon trigger a full collection, which walks every object
of the process (the interpreter, SQLAlchemy, pydantic, the history and enrolment caches). Profiled on
the bench's live workload: 16 µs of 78 µs per reading, nearly all of it in full collections, each a
pause of about a tenth of a second that lands on whichever reading is being processed.

`settle()` collects once, freezes what start-up built (it lives as long as the process, so no collection
need walk it again), and raises the first threshold so that a batch's objects are mostly gone before a
young collection looks at them. Reference cycles are still collected, just less often: the extra memory
is bounded by the first threshold (tens of thousands of objects).

`Keeper` goes on doing that while the process runs. What a busy gateway keeps (the history cache: a
reading per patient per measurement) still reached the old generations, and collecting them walked all of
it again: pauses of 20-90 ms (young generations) and 80-160 ms (full collections) a few times a minute at
5,000 readings/s, each landing on the batch in hand (gc callbacks timed in the bench). Every `interval`
seconds, at a point where the caller holds no reference cycle it will drop later, `tidy()` collects
everything not frozen (only what has come since the last time) and freezes what survived. A frozen
object is still freed when its last reference goes; only a frozen reference cycle would stay for good,
which is why the collection comes first and why the caller chooses the moment. (Connections replaced
after PostgreSQL or InfluxDB drop them leave no such cycle: tests/integration/test_heap_connections.py.)
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

# Young collection after this many net allocations of tracked objects (default 700); the older
# generations keep CPython's ratios-of-collections defaults scaled a little up.
THRESHOLDS = (20_000, 20, 10)


def settle() -> None:
    """Call once, when the process has built its long-lived objects and before its main loop."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


class Keeper:
    """Freezes, at most every `interval` seconds, what has survived since the last time (see above)."""

    def __init__(self, interval: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last = clock()

    def tidy(self) -> bool:
        """Collect and freeze if `interval` has passed; True if it did. Call it only where no reference
        cycle is held that will be dropped later (the gateway: between batches)."""
        if self._clock() - self._last < self._interval:
            return False
        gc.collect()
        gc.freeze()
        self._last = self._clock()
        return True
