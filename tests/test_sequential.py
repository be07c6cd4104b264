"""Sequential comparison (bench/sequential.py) on tables of made-up cells: which cells get another repetition."""

from __future__ import annotations

import math

import pytest

from serverzoo.bench.plan import build_plan
from serverzoo.bench.scenarios import load_suite
from serverzoo.bench.sequential import cell_estimate, exclusion, next_round, standings

SLICES = 10


def _timeline(rps: float, wobble: float) -> list[dict]:
    """Ten 0.1 s slices around rps, pairs alternating by +-wobble (a relative amount): five batches that differ."""
    return [{"t": (i + 1) / SLICES, "dt": 1 / SLICES, "requests": round(rps / SLICES * (1 + wobble * (-1) ** (i // 2))),
             "errors": 0, "bytes": 0, "p99_us": 900 + 10 * (i % 3)} for i in range(SLICES)]


def _cell(server: str, rps: float, rep: int = 1, wobble: float = 0.01, scenario: str = "small-keepalive",
          level: int = 32, client_bound: bool = False, errors: int = 0, status: str = "ok") -> dict:
    timeline = _timeline(rps, wobble)
    load = {"rps": rps, "requests": sum(t["requests"] for t in timeline), "errors": {"total": errors},
            "timeline": timeline, "client": {"client_bound": client_bound}, "latency_us": {"p99": 905}}
    return {"id": f"{server}/{scenario}/c{level}/r{rep}", "server": server, "scenario": scenario, "level": level,
            "repetition": rep, "status": status, "load": load if status == "ok" else None}


@pytest.fixture(scope="module")
def plan():
    return build_plan(load_suite(), "quick", models=["select", "asyncio", "threading", "gevent"],
                      scenarios=["small-keepalive"], reference=False)


def test_one_repetition_has_a_batch_means_interval():
    est = cell_estimate(_cell("select", 10_000, wobble=0.05)["load"], "rps")
    assert est.method == "batch-means" and est.n == 5
    assert est.value == 10_000 and 0 < est.relative_half_width < 0.1
    flat = cell_estimate(_cell("select", 10_000, wobble=0.0)["load"], "rps")
    assert flat.relative_half_width < 0.001


def test_a_percentile_has_an_interval_from_its_slices():
    est = cell_estimate(_cell("select", 10_000)["load"], "p99_us")
    assert est.value == 905 and est.measured and est.half_width > 0


def test_a_clear_leader_needs_no_more_repetitions(plan):
    cells = [_cell("select", 20_000), _cell("asyncio", 15_000), _cell("threading", 10_000)]
    assert next_round(plan, cells) == []


def test_close_contenders_are_repeated_and_the_clearly_behind_are_not(plan):
    cells = [_cell("select", 20_000, wobble=0.03), _cell("asyncio", 19_800, wobble=0.03),
             _cell("threading", 10_000)]
    again = next_round(plan, cells)
    assert sorted(c.id for c in again) == ["asyncio/small-keepalive/c32/r2", "select/small-keepalive/c32/r2"]


def test_repetitions_stop_at_three_precise_ones_or_at_max_repeat(plan):
    precise = [_cell(s, v, rep=r, wobble=0.001) for s, v in (("select", 20_000), ("asyncio", 20_010))
               for r in (1, 2, 3)]
    assert next_round(plan, precise) == []  # a tie, measured as precisely as asked
    noisy = [_cell(s, v * (1 + 0.1 * (-1) ** r), rep=r) for s, v in (("select", 20_000), ("asyncio", 20_010))
             for r in (1, 2, 3)]
    assert plan.adaptive.max_repeat == 3
    assert next_round(plan, noisy) == []  # still unsure, but max_repeat reached


def test_cells_that_cannot_decide_are_left_out_of_the_race(plan):
    cells = [_cell("select", 30_000, client_bound=True), _cell("asyncio", 20_000, errors=5000),
             _cell("gevent", 0, status="failed"), _cell("threading", 10_000)]
    entries, excluded = standings(plan, cells, "small-keepalive")
    assert [e.server for e in entries] == ["threading"]
    assert excluded == {"select": "client-bound", "asyncio": "degraded", "gevent": "failed"}
    assert next_round(plan, cells) == []  # nobody to race against


def test_an_open_loop_cell_that_did_not_keep_up_is_excluded():
    suite = load_suite()
    plan = build_plan(suite, "quick", models=["select"], scenarios=["wait-work"], reference=False)
    sc = plan.scenarios["wait-work"]
    record = _cell("select", 500, scenario="wait-work", level=1000)
    record["load"] |= {"achieved_rate": 500.0, "target_rate": 1000.0}
    assert exclusion(record, sc, 0.01) == "did not keep up"
    record["load"]["achieved_rate"] = 990.0
    assert exclusion(record, sc, 0.01) is None


def test_lower_is_better_for_latency():
    plan = build_plan(load_suite(), "quick", models=["select", "asyncio"], scenarios=["wait-work"], reference=False)
    cells = []
    for server, p99 in (("select", 11_000), ("asyncio", 30_000)):
        c = _cell(server, 1000, scenario="wait-work", level=1000)
        c["load"] |= {"achieved_rate": 1000.0, "target_rate": 1000.0, "latency_us": {"p99": p99}}
        for t in c["load"]["timeline"]:
            t["p99_us"] = p99 + (t["t"] * 10 % 3)
        cells.append(c)
    entries, _ = standings(plan, cells, "wait-work")
    assert [e.server for e in entries] == ["select", "asyncio"]
    assert math.isfinite(entries[0].estimate.half_width)
