"""Capacity scenarios in the benchmark: the scenarios file, the bracket as an interval, the verdict,
and a tiny real run whose report ranks a concurrent model above iterative."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverzoo.bench import uncertainty
from serverzoo.bench.scenarios import ConfigError, Suite, load_suite
from serverzoo.bench.verdicts import Contender, decide

BASE = """
[run]
unstable_spread = 0.10
error_rate_limit = 0.01

[corpus]
seed = 7
files = ["1KiB"]

[presets.quick]
servers = "models"
repeat = 1
reference = false

[presets.full]
servers = "models"
repeat = 1
"""

CAPACITY = """
[scenarios.wait-capacity]
title = "Backend-bound: capacity at p90 < 300 ms"
mode = "capacity"
goal = "p90<300ms"
resolution = 0.5
paths = ["/_/work?wait=20"]
connection = "close"
metric = "capacity_rps"
reference = false
quick = { connections = 4, start = 40, duration = 0.5, warmup = 0.3, time = 20 }
full = false
"""


def _suite(tmp_path, text: str) -> Suite:
    path = tmp_path / "scenarios.toml"
    path.write_text(BASE + text)
    return load_suite(str(path))


def test_a_capacity_scenario_is_read_and_a_preset_may_leave_it_out(tmp_path: Path) -> None:
    suite = _suite(tmp_path, CAPACITY)
    sc = suite.scenarios("quick")["wait-capacity"]
    assert sc.mode == "capacity" and sc.goal == "p90<300ms" and sc.levels == (4,) and sc.connections == 4
    assert sc.search_start == 40 and sc.search_time == 20 and sc.search_resolution == 0.5
    assert sc.load_seconds == 20 and sc.level_key(4) == "c4"
    assert "wait-capacity" not in suite.scenarios("full")


@pytest.mark.parametrize(
    "change, message",
    [
        (('goal = "p90<300ms"\n', ""), "needs goal"),
        (('goal = "p90<300ms"', 'goal = "p90<300"'), "has no unit"),
        (('goal = "p90<300ms"', 'goal = "rps>10"'), "latency or error goal"),
        (('metric = "capacity_rps"', 'metric = "rps"'), "metric is capacity_rps"),
        (("connections = 4,", "concurrency = [4], connections = 4,"), "drop concurrency"),
        ((", time = 20", ""), "time must be a number"),
    ],
)
def test_capacity_scenario_mistakes_are_one_line_errors(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _suite(tmp_path, CAPACITY.replace(*change))
    assert "\n" not in str(info.value)


def test_search_keys_belong_to_capacity_scenarios(tmp_path: Path) -> None:
    closed = """
[scenarios.small]
title = "Small"
mode = "closed"
goal = "p99<5ms"
paths = ["/1KiB.bin"]
quick = { concurrency = [2], duration = 1.0 }
full = { concurrency = [2], duration = 1.0 }
"""
    with pytest.raises(ConfigError, match="goal applies to capacity scenarios"):
        _suite(tmp_path, closed)


def test_a_bracket_is_the_interval_and_separates_only_without_overlap() -> None:
    a, b = uncertainty.bracket(200, 210), uncertainty.bracket(100, 110)
    assert (a.low, a.high, a.value, a.method) == (200, 210, 205, "bracket")
    assert uncertainty.clearly_ahead(a, b) and not uncertainty.clearly_ahead(b, a)
    # one held at the rate the other failed at: ahead; overlapping brackets: not
    assert uncertainty.clearly_ahead(uncertainty.bracket(110, 120), b)
    assert not uncertainty.clearly_ahead(uncertainty.bracket(105, 115), b)
    with pytest.raises(ValueError):
        uncertainty.bracket(10, 10)


def test_capacity_verdict_ties_within_the_resolution() -> None:
    def c(name: str, held: float, failed: float) -> Contender:
        return Contender(name, uncertainty.bracket(held, failed), responses=500)

    win = decide("cap", [c("fast", 1000, 1050), c("slow", 500, 525)], "capacity_rps", True, 32, "p99<5ms, 32")
    assert win.kind == "winner" and win.winner == "fast" and "held a rate slow did not" in win.text
    assert "capacity searches" in win.confidence.lower()
    tie = decide("cap", [c("a", 1000, 1050), c("b", 1020, 1071), c("slow", 500, 525)], "capacity_rps", True)
    assert tie.kind == "tie" and tie.tie == ("b", "a")


@pytest.fixture
def out_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="serverzoo-bench-capacity-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_tiny_capacity_run_ranks_models_and_draws_their_curves(out_dir: str) -> None:
    scenarios = os.path.join(out_dir, "scenarios.toml")
    with open(scenarios, "w") as f:
        f.write(BASE + CAPACITY)
    proc = subprocess.run(
        [sys.executable, "-m", "serverzoo", "bench", "--scenarios-file", scenarios, "--models", "asyncio,iterative"],
        cwd=out_dir,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    [path] = glob.glob(os.path.join(out_dir, "results", "bench-*.json"))
    with open(path) as f:
        doc = json.load(f)
    loads = {c["server"]: c["load"] for c in doc["cells"]}
    for server, load in loads.items():
        assert load["schema"] == "serverzoo.capacity/1" and load["steps"], server
    # a new connection per request, 20 ms each: iterative near 1 / 0.020 = 50 req/s; asyncio's
    # 4 connections near 4 / 0.020 = 200 req/s, far beyond the bracket around iterative's
    held_i, failed_i = loads["iterative"]["bracket"]
    assert held_i is not None and failed_i is not None and held_i <= 60 and failed_i <= 120
    assert loads["asyncio"]["capacity_rps"] >= failed_i
    [verdict] = doc["verdicts"]
    # ranked by capacity; a busy machine may judge the generator the limit (then a tie at >= its figure)
    assert [r["server"] for r in verdict["ranking"]] == ["asyncio", "iterative"], verdict
    assert verdict["winner"] == "asyncio" or verdict["kind"] == "generator-limited", verdict
    with open(glob.glob(os.path.join(out_dir, "results", "*.md"))[0]) as f:
        md = f.read()
    assert "capacity search at p90<300ms" in md and f"Verdict: {verdict['text']}" in md
    for server, load in loads.items():  # the generator knew the server's PID: every step says what it spent
        assert all(step["server_cpu_percent"] is not None for step in load["steps"]), server
    if verdict["winner"] == "asyncio":  # iterative sleeps through its requests: it fails with its CPU idle
        assert "iterative failed the goal at" in md and "of its CPU idle" in md
    with open(glob.glob(os.path.join(out_dir, "results", "*.html"))[0]) as f:
        html = f.read()
    assert "latency against load, as each search walked it" in html


def test_repeated_searches_never_separate_finer_than_their_brackets() -> None:
    same = [uncertainty.bracket(100, 110)] * 3
    pooled = uncertainty.pool(same)
    assert pooled.method == "bracket" and (pooled.low, pooled.high) == (100, 110)
    slightly_better = uncertainty.pool([uncertainty.bracket(104, 114)] * 3)
    assert not uncertainty.clearly_ahead(slightly_better, pooled)
    spread = uncertainty.pool([uncertainty.bracket(100, 110), uncertainty.bracket(200, 210)])
    assert spread.half_width > 50  # two searches that disagree: their spread, not the bracket
