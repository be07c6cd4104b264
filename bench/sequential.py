"""Sequential comparison: after the first pass, measure again only where contenders are close.

A benchmark's time is best spent where the answer is in doubt. After every cell has run
its first repetitions, each scenario's top level (the level its verdict is about: the
highest concurrency, or the highest offered rate) is looked at as a race:

- a cell's figure carries a 95% interval: batch means over its timeline's short slices
  for one repetition, the spread of its repetitions once there are several
  (bench/uncertainty.py);
- cells that cannot decide anything are left out: failed, client-bound (the generator set
  the figure), degraded (too many errors), or, in an open loop, not keeping up with the
  offered rate;
- the leader is the best of the rest, and its contenders are the servers it is not
  clearly ahead of (their intervals overlap the leader's);
- the leader and each contender get one more repetition (a fresh server: the noise between
  server starts shows only across repetitions) unless it already has three or more
  repetitions and an interval within the preset's precision, or has max_repeat repetitions.

Rounds repeat until no cell needs more or the run's budget is spent. Servers clearly
behind the leader after the first pass keep their one sample: their place is not in doubt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from .plan import Cell, Plan
from .scenarios import Scenario
from .uncertainty import DEFAULT_BATCHES, Estimate, batch_means, clearly_ahead, combined_half_width, from_samples, \
    pool, single

MIN_INDEPENDENT = 3  # repetitions before a cell's interval counts as measured between server starts
KEPT_UP = 0.95  # open loop: the share of the offered rate a server must reach to be ranked


def cell_estimate(load: dict[str, Any], metric: str, batches: int = DEFAULT_BATCHES) -> Estimate | None:
    """One repetition's figure with its batch-means interval, from the load result's timeline."""
    value = metric_of(load, metric)
    if value is None:
        return None
    timeline = [t for t in load.get("timeline") or [] if (t.get("dt") or 0) > 0]
    if metric in ("rps", "mb_per_s"):
        if not timeline:
            return single(value)
        key, scale = ("requests", 1.0) if metric == "rps" else ("bytes", 1e-6)
        est = batch_means([t.get(key, 0) * scale for t in timeline], [t["dt"] for t in timeline], batches)
        return Estimate(value, est.half_width, est.n, est.method)  # the generator's own figure, same window
    # a percentile: each batch's value is the request-weighted mean of its slices' percentiles
    slices = [t for t in timeline if t.get("p99_us") is not None and t.get("requests")]
    k = min(batches, len(slices))
    if k < 3:
        return single(value)
    values = []
    for b in range(k):
        part = slices[b * len(slices) // k:(b + 1) * len(slices) // k]
        weight = sum(t["requests"] for t in part)
        values.append(sum(t["p99_us"] * t["requests"] for t in part) / weight)
    spread = from_samples(values)
    return Estimate(value, spread.half_width, len(values), "batch-means")


def metric_of(load: dict[str, Any], metric: str) -> float | None:
    if metric == "p99_us":
        v = (load.get("latency_us") or {}).get("p99")
    else:
        v = load.get(metric)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def exclusion(record: dict[str, Any], sc: Scenario, error_rate_limit: float) -> str | None:
    """Why a cell cannot take part in deciding its scenario, or None."""
    if record.get("status") != "ok" or not record.get("load"):
        return "failed"
    load = record["load"]
    if (load.get("client") or {}).get("client_bound"):
        return "client-bound"
    errors = (load.get("errors") or {}).get("total", 0)
    attempts = load.get("requests", 0) + errors
    if not attempts or errors / attempts > error_rate_limit:
        return "degraded"
    if sc.mode == "open":
        achieved, target = load.get("achieved_rate"), load.get("target_rate")
        if achieved is None or not target or achieved < KEPT_UP * target:
            return "did not keep up"
    return None


@dataclass(frozen=True)
class Entry:
    """One server at one scenario's top level: its pooled estimate and how many repetitions it rests on."""

    server: str
    estimate: Estimate
    repetitions: int


def standings(plan: Plan, records: Sequence[dict[str, Any]], scenario: str) -> tuple[list[Entry], dict[str, str]]:
    """The eligible servers at the scenario's top level (best first), and the excluded ones with reasons."""
    sc = plan.scenarios[scenario]
    top = max(sc.levels)
    by_server: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["scenario"] == scenario and r["level"] == top:
            by_server.setdefault(r["server"], []).append(r)
    entries, excluded = [], {}
    for server, reps in by_server.items():
        reasons = [exclusion(r, sc, plan.run.error_rate_limit) for r in reps]
        bad = [x for x in reasons if x]
        if bad:
            excluded[server] = bad[0]
            continue
        estimates = [e for e in (cell_estimate(r["load"], sc.metric) for r in reps) if e is not None]
        if not estimates:
            excluded[server] = "no figure"
            continue
        entries.append(Entry(server, pool(estimates, MIN_INDEPENDENT), len(reps)))
    entries.sort(key=lambda e: e.estimate.value, reverse=sc.higher_is_better)
    return entries, excluded


def contenders(plan: Plan, entries: list[Entry], scenario: str) -> list[Entry]:
    """The leader and every server it is not clearly ahead of."""
    if not entries:
        return []
    hib = plan.scenarios[scenario].higher_is_better
    leader = entries[0]
    return [leader] + [e for e in entries[1:] if not clearly_ahead(leader.estimate, e.estimate, hib)]


def needs_more(plan: Plan, entry: Entry) -> bool:
    a = plan.adaptive
    if entry.repetitions >= a.max_repeat:
        return False
    return entry.repetitions < MIN_INDEPENDENT or entry.estimate.relative_half_width > a.precision


def next_round(plan: Plan, records: Sequence[dict[str, Any]]) -> list[Cell]:
    """The cells to measure next (one more repetition each), closest races first; [] when done."""
    todo: list[tuple[float, Cell]] = []
    for name, sc in plan.scenarios.items():
        entries, _ = standings(plan, records, name)
        race = contenders(plan, entries, name)
        if len(race) < 2:
            continue  # a clear leader, or nothing to compare
        leader = race[0].estimate
        for entry in race:
            if not needs_more(plan, entry):
                continue
            # closeness: the gap to the leader in units of their combined uncertainty (the leader: 0)
            gap = abs(leader.value - entry.estimate.value)
            width = combined_half_width(leader, entry.estimate)
            closeness = gap / width if width and math.isfinite(width) else 0.0
            top = max(sc.levels)
            todo.append((closeness, Cell(entry.server, name, top, sc.level_key(top), entry.repetitions + 1)))
    todo.sort(key=lambda t: t[0])
    return [cell for _, cell in todo]


def race_summary(plan: Plan, records: Sequence[dict[str, Any]], scenario: str) -> str:
    """One line: the scenario's leader and its contenders, for the progress log."""
    entries, excluded = standings(plan, records, scenario)
    race = contenders(plan, entries, scenario)
    if not race:
        return f"{scenario}: nothing ranked" + (f" ({len(excluded)} excluded)" if excluded else "")
    names = ", ".join(f"{e.server} (n={e.repetitions}, ±{e.estimate.relative_half_width:.1%})" for e in race)
    return f"{scenario}: {'clear leader' if len(race) == 1 else 'close'}: {names}"
