"""Sequential comparison (bench/sequential.py) on tables of made-up cells: which cells get another repetition."""

from __future__ import annotations

import pytest

from serverzoo.bench.plan import build_plan
from serverzoo.bench.scenarios import load_suite
from serverzoo.bench.sequential import next_round
from serverzoo.bench.store import SCHEMA

SLICES = 10


def _timeline(rps: float, wobble: float) -> list[dict]:
    """Ten 0.1 s slices around rps, pairs alternating by +-wobble (a relative amount): five batches that differ."""
    return [
        {
            "t": (i + 1) / SLICES,
            "dt": 1 / SLICES,
            "requests": round(rps / SLICES * (1 + wobble * (-1) ** (i // 2))),
            "errors": 0,
            "bytes": 0,
        }
        for i in range(SLICES)
    ]


def _cell(
    server: str, rps: float, rep: int = 1, wobble: float = 0.01, client_bound: bool = False, errors: int = 0
) -> dict:
    timeline = _timeline(rps, wobble)
    requests = sum(t["requests"] for t in timeline)
    load = {
        "rps": rps,
        "mb_per_s": 0.0,
        "requests": requests,
        "errors": {"total": errors},
        "latency_us": {"p50": 400, "p99": 900},
        "timeline": timeline,
        "client": {"client_bound": client_bound, "reasons": ["worker 0 used 95% of a CPU"] if client_bound else []},
    }
    return {
        "id": f"{server}/small-keepalive/c32/r{rep}",
        "server": server,
        "model": server,
        "scenario": "small-keepalive",
        "level": 32,
        "level_key": "c32",
        "repetition": rep,
        "status": "ok",
        "error": None,
        "load": load,
        "server_process": {"clean_stop": True},
    }


@pytest.fixture(scope="module")
def plan():
    return build_plan(
        load_suite(),
        "quick",
        models=["select", "asyncio", "threading", "gevent"],
        scenarios=["small-keepalive"],
        reference=False,
    )


def _round(plan, cells: list[dict]) -> list[str]:
    doc = {"schema": SCHEMA, "run_id": "made-up", "config": plan.to_config(), "cells": cells}
    return sorted(c.id for c in next_round(plan, doc))


def test_close_contenders_are_repeated_and_the_clearly_behind_are_not(plan):
    cells = [_cell("select", 20_000, wobble=0.03), _cell("asyncio", 19_800, wobble=0.03), _cell("threading", 10_000)]
    assert _round(plan, cells) == ["asyncio/small-keepalive/c32/r2", "select/small-keepalive/c32/r2"]


def test_a_winner_from_one_repetition_is_checked_against_its_runner_up(plan):
    """One repetition's interval sees no noise between server starts: the first two get more."""
    cells = [_cell("select", 20_000), _cell("asyncio", 15_000), _cell("threading", 10_000)]
    assert _round(plan, cells) == ["asyncio/small-keepalive/c32/r2", "select/small-keepalive/c32/r2"]
    confirmed = cells + [_cell(s, v, rep=r) for s, v in (("select", 20_000), ("asyncio", 15_000)) for r in (2, 3)]
    assert _round(plan, confirmed) == []  # three repetitions each, a clear lead


def test_repetitions_stop_at_three_precise_ones_or_at_max_repeat(plan):
    precise = [
        _cell(s, v, rep=r, wobble=0.001) for s, v in (("select", 20_000), ("asyncio", 20_010)) for r in (1, 2, 3)
    ]
    assert _round(plan, precise) == []  # a tie, measured as precisely as asked
    noisy = [
        _cell(s, v * (1 + 0.1 * (-1) ** r), rep=r)
        for s, v in (("select", 20_000), ("asyncio", 20_010))
        for r in (1, 2, 3)
    ]
    assert plan.adaptive.max_repeat == 3
    assert _round(plan, noisy) == []  # still unsure, but max_repeat reached


def test_a_generator_limited_scenario_gets_no_more_repetitions(plan):
    cells = [
        _cell("select", 30_000, client_bound=True),
        _cell("asyncio", 29_000, client_bound=True),
        _cell("threading", 10_000),
    ]
    assert _round(plan, cells) == []


def test_a_degraded_leader_does_not_lead_the_race(plan):
    cells = [
        _cell("select", 30_000, errors=5_000),
        _cell("asyncio", 20_000, wobble=0.03),
        _cell("gevent", 19_900, wobble=0.03),
        _cell("threading", 10_000),
    ]
    assert _round(plan, cells) == ["asyncio/small-keepalive/c32/r2", "gevent/small-keepalive/c32/r2"]
