"""The synthetic bench run (fixtures/bench_run_fixture.json) with one scenario's cells made long.

The fixture's cells last one second; a report draws a cell over time only when it ran
for a few seconds. stretched_fixture() repeats that scenario's timeline slices to the
length asked and gives one cell a stall (a slice with a handful of slow responses), as
a synthetic case for the charts over time. Like the fixture, every number is invented.
"""

from __future__ import annotations

import copy
import json
import os

from serverzoo.clients.loadgen.latency import encode, histogram_of

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bench_run_fixture.json")
STALLED_CELL = ("threading", 2)  # (server, repetition) of the stretched scenario's cells that stalls


def stretched_fixture(scenario: str = "small-keepalive", repeats: int = 5) -> dict:
    with open(FIXTURE) as f:
        doc = json.load(f)
    doc = copy.deepcopy(doc)
    for cell in doc["cells"]:
        if cell["scenario"] != scenario or not cell.get("load"):
            continue
        load = cell["load"]
        slices = load["timeline"] * repeats
        out, start = [], 0
        for i, s in enumerate(slices):
            length = s["end_ns"] - s["start_ns"]
            piece = dict(s, start_ns=start, end_ns=start + length, t=round((start + length) / 1e9, 3))
            if (cell["server"], cell["repetition"]) == STALLED_CELL and i == len(slices) // 2:
                piece.update(requests=4, bytes=4 * 1024, histogram=encode(histogram_of([250_000] * 4)))
            out.append(piece)
            start += length
        load["timeline"] = out
        load["elapsed_s"] = start / 1e9
        load["requests"] = sum(p["requests"] for p in out)
    return doc
