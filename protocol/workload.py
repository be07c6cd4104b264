"""The synthetic work endpoint, /_/work?cpu=N&wait=MS.

The CPU kernel is fixed pure-Python integer arithmetic, so one unit costs the same in
every model and holds the GIL the whole time, as real Python request handling does.
The wait is not done here: each model waits its own way (a thread sleeps, an event
loop schedules a timer), which is exactly what the benchmarks compare.
"""

from __future__ import annotations

from .limits import MAX_WORK_CPU, MAX_WORK_WAIT_MS
from .responses import WorkOrder

KERNEL_STEPS = 1000  # iterations per unit of cpu


class BadWork(ValueError):
    pass


def cpu_kernel(units: int) -> int:
    """Burn units * KERNEL_STEPS iterations of arithmetic; the result defeats any shortcut."""
    x = 0
    for i in range(units * KERNEL_STEPS):
        x = (x * 31 + i) & 0xFFFFFFFF
    return x


def parse_work_query(query: bytes) -> WorkOrder:
    """cpu and wait are optional non-negative integers; anything else is a 400."""
    values = {"cpu": 0, "wait": 0}
    if query:
        for pair in query.split(b"&"):
            if not pair:
                continue
            name, _, raw = pair.partition(b"=")
            key = name.decode("latin-1")
            if key not in values:
                raise BadWork(f"unknown parameter {key!r} (use cpu and wait)")
            if not raw.isdigit() or len(raw) > 9:
                raise BadWork(f"{key} must be a non-negative integer")
            values[key] = int(raw)
    if values["cpu"] > MAX_WORK_CPU:
        raise BadWork(f"cpu is at most {MAX_WORK_CPU}")
    if values["wait"] > MAX_WORK_WAIT_MS:
        raise BadWork(f"wait is at most {MAX_WORK_WAIT_MS} ms")
    return WorkOrder(values["cpu"], values["wait"] / 1000.0)
