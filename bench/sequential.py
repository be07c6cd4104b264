"""Sequential comparison: after the first pass, measure again only where the verdict is in doubt.

A benchmark's time is best spent where the answer is uncertain. After every cell has run
its first repetitions, each scenario's verdict is worked out as the report would
(bench/verdicts.py: at the level that matters, flagged cells left out, a winner only when
clearly ahead) and looked at as a race:

- a tie: the leader and every server it is not clearly ahead of get one more repetition;
- a winner: the winner and the runner-up get one more, since one repetition's interval
  (batch means over its timeline) sees the noise within a run but not the noise between
  server starts, which only repetitions show;
- generator-limited, or nothing served: more repetitions would not change it.

A server stops getting repetitions once it has three or more with an interval within the
preset's precision, or has max_repeat of them. Rounds repeat, closest races first, until no
cell needs more or the run's budget is spent. Servers clearly behind after the first pass
keep their one sample: their place is not in doubt.
"""

from __future__ import annotations

import math
from typing import Any

from .analysis import RunView
from .plan import BenchPlan, Cell
from .results import Run
from .uncertainty import Estimate, combined_half_width
from .verdicts import Verdict, scenario_verdict

MIN_INDEPENDENT = 3  # repetitions before a cell's interval counts as measured between server starts


def racers(verdict: Verdict) -> list[str]:
    """The servers whose order is still in doubt: the tie, or the winner and its runner-up."""
    if verdict.kind == "tie":
        return list(verdict.tie)
    if verdict.kind == "winner" and len(verdict.ranking) >= 2:
        return [verdict.ranking[0].server, verdict.ranking[1].server]
    return []


def needs_more(plan: BenchPlan, repetitions: int, estimate: Estimate) -> bool:
    if repetitions >= plan.adaptive.max_repeat:
        return False
    return repetitions < MIN_INDEPENDENT or estimate.relative_half_width > plan.adaptive.precision


def next_round(plan: BenchPlan, doc: dict[str, Any]) -> list[Cell]:
    """The cells to measure next (one more repetition each), closest races first; [] when done."""
    view = RunView(Run.from_doc(doc, check=False))
    todo: list[tuple[float, Cell]] = []
    for name, sc in plan.scenarios.items():
        if name not in view.scenarios or sc.mode == "capacity":  # another search would not narrow its bracket
            continue
        verdict = scenario_verdict(view, name)
        if verdict.level is None:
            continue
        ranked = {r.server: r.estimate for r in verdict.ranking}
        race = [s for s in racers(verdict) if s in ranked]
        if not race:
            continue
        leader = ranked[race[0]]
        for server in race:
            point = view.point(server, name, verdict.level)
            repetitions = point.repetitions if point is not None else 0
            estimate = ranked[server]
            if not needs_more(plan, repetitions, estimate):
                continue
            # closeness: the gap to the leader in units of their combined uncertainty (the leader: 0)
            width = combined_half_width(leader, estimate)
            gap = abs(leader.value - estimate.value)
            closeness = gap / width if width and math.isfinite(width) else 0.0
            todo.append((closeness, Cell(server, name, verdict.level, sc.level_key(verdict.level), repetitions + 1)))
    todo.sort(key=lambda t: t[0])
    return [cell for _, cell in todo]


def race_summary(plan: BenchPlan, doc: dict[str, Any]) -> list[str]:
    """One line per scenario: its verdict so far and how many repetitions its racers have, for the log."""
    view = RunView(Run.from_doc(doc, check=False))
    lines = []
    for name in plan.scenarios:
        if name not in view.scenarios:
            continue
        verdict = scenario_verdict(view, name)
        reps = []
        for server in racers(verdict):
            point = view.point(server, name, verdict.level) if verdict.level is not None else None
            reps.append(f"{server} x{point.repetitions if point else 0}")
        lines.append(f"{name}: {verdict.text}" + (f" [{', '.join(reps)}]" if reps else ""))
    return lines
