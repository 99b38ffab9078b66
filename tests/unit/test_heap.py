"""rpmgw.heap: the long-running processes' collector settings (run in a child, not to change pytest's)."""

from __future__ import annotations

import json
import subprocess
import sys

from rpmgw.heap import THRESHOLDS

_PROBE = """
import gc, json
from rpmgw import heap
before = gc.get_freeze_count()
cycle = []
cycle.append(cycle)  # a reference cycle made before settle(): collected by it, not frozen
ref = __import__("weakref").ref
class Box: pass
box = Box(); box.self = box; alive = ref(box); del box, cycle
heap.settle()
after = gc.get_freeze_count()
print(json.dumps({"before": before, "after": after, "threshold": gc.get_threshold(),
                  "cycle_collected": alive() is None}))
"""


def test_settle_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(result.stdout)
    assert probe["before"] == 0
    assert probe["after"] > 1_000  # the interpreter's and the imported modules' objects
    assert tuple(probe["threshold"]) == THRESHOLDS
    assert THRESHOLDS[0] > 700  # the point of it: fewer young collections than CPython's default
    assert probe["cycle_collected"]  # garbage is collected before the freeze, not kept for good


_KEEPER_PROBE = """
import gc, json, weakref
from rpmgw import heap
now = [0.0]
keeper = heap.Keeper(interval=2.0, clock=lambda: now[0])
class Box: pass
early = keeper.tidy()  # before the interval: nothing done
now[0] = 2.5
cycle = Box(); cycle.self = cycle; cycle_ref = weakref.ref(cycle); del cycle  # garbage when tidied
kept = Box(); kept_ref = weakref.ref(kept)  # alive when tidied, dropped afterwards
frozen_before = gc.get_freeze_count()
tidied = keeper.tidy()
frozen_after = gc.get_freeze_count()
del kept
again = keeper.tidy()  # the interval starts again
print(json.dumps({"early": early, "tidied": tidied, "again": again,
                  "cycle_collected": cycle_ref() is None, "kept_freed": kept_ref() is None,
                  "froze": frozen_after > frozen_before}))
"""


def test_the_keeper_collects_then_freezes_once_per_interval_and_frozen_objects_are_still_freed() -> None:
    result = subprocess.run([sys.executable, "-c", _KEEPER_PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(result.stdout)
    assert (probe["early"], probe["tidied"], probe["again"]) == (False, True, False)
    assert probe["cycle_collected"], "the collection must come before the freeze, or cycles stay for good"
    assert probe["froze"]
    assert probe["kept_freed"], "a frozen object must still be freed when its last reference goes"
