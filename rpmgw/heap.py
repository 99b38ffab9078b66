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
"""

from __future__ import annotations

import gc

# Young collection after this many net allocations of tracked objects (default 700); the older
# generations keep CPython's ratios-of-collections defaults scaled a little up.
THRESHOLDS = (20_000, 20, 10)


def settle() -> None:
    """Call once, when the process has built its long-lived objects and before its main loop."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
