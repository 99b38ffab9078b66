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
