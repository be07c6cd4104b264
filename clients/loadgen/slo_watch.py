"""--abort-on-fail: stop a run as soon as a goal can no longer be met, and not before. No I/O.

"Can no longer be met" is a proof, not a trend. Each worker's tick carries what its share of
the measured window has seen so far (responses, errors, and per latency goal the responses
already beyond the limit) and the most outcomes the rest of the window can still bring:

- with a request count (-n), the requests of its share not yet answered or failed;
- over an open loop (-R) with a duration, the requests owed now (on the wire or queued
  behind a busy connection) plus every arrival its schedule still holds before the window
  closes (Poisson schedules are played forward on a copy of their random generator).

Under a closed loop with a duration nothing bounds how many responses are still to come, so
no goal can be proven lost early there (command-line checks refuse that combination).

From those counts, the best case the rest of the window can bring:
- a percentile goal pQ<T is lost once the responses already at or beyond T outnumber what
  the largest possible window may hold beyond its percentile rank (the same rank HdrHistogram
  uses for the reported value): more responses can only add to both sides, and the bound
  is taken where the tail's allowance is largest;
- an error goal is lost once the errors so far are too many even if every outcome still to
  come is a success;
- a throughput goal is lost once even every outcome still possible, all successes, cannot
  reach the rate over the window's length (less a small allowance for the timers' slack).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .slo import ERRORS, LATENCY, Goal, format_value

WINDOW_SLACK = 0.01  # the measured window may close a little early on a worker's timer


def target_rank(percentile: float, count: int) -> int:
    """The rank (1-based) of the value HdrHistogram reports as the percentile of count values."""
    return max(int(min(percentile, 100.0) * count / 100 + 0.5), 1)


def violation_limits(goals: list[Goal]) -> list[tuple[float, bool]]:
    """(limit in us, strict) per latency goal, in order: what each worker counts beyond."""
    return [(g.limit, g.strict) for g in goals if g.measure == LATENCY]


class Tally:
    """A worker's count of measured latencies beyond each latency goal's limit, kept up to date
    by looking only at the values added since the last call (the array only grows)."""

    def __init__(self, limits: list[tuple[float, bool]]) -> None:
        self.limits = limits
        self.seen = 0
        self.beyond = [0] * len(limits)

    def update(self, values: Sequence[int]) -> list[int]:
        fresh = values[self.seen :]
        self.seen = len(values)
        for i, (limit, strict) in enumerate(self.limits):
            # at or above the limit breaks `<`; only above it breaks `<=`
            self.beyond[i] += sum(1 for v in fresh if v >= limit) if strict else sum(1 for v in fresh if v > limit)
        return list(self.beyond)


@dataclass(frozen=True)
class Progress:
    """The measured window so far, over every worker."""

    responses: int
    errors: int
    violations: tuple[int, ...]  # per latency goal, in the order of violation_limits
    remaining: int  # the most outcomes (responses or errors) the window can still bring
    window_s: float | None  # the measured window's length; None with a request count


def combine(ticks: list[dict | None], window_s: float | None) -> Progress | None:
    """One Progress from every worker's latest tick, once each is inside the measured window."""
    parts = [t.get("slo") if t else None for t in ticks]
    if not parts or any(p is None or p["remaining"] is None for p in parts):
        return None
    n = len(parts[0]["violations"])
    return Progress(
        sum(p["responses"] for p in parts),
        sum(p["errors"] for p in parts),
        tuple(sum(p["violations"][i] for p in parts) for i in range(n)),
        sum(p["remaining"] for p in parts),
        window_s,
    )


def lost_goal(goals: list[Goal], progress: Progress) -> dict | None:
    """The first goal the window can no longer meet, as {"goal", "reason"}; None if every one
    can still be met."""
    latency_index = 0
    for goal in goals:
        if goal.measure == LATENCY:
            reason = _latency_lost(goal, progress, progress.violations[latency_index])
            latency_index += 1
        elif goal.measure == ERRORS:
            reason = _errors_lost(goal, progress)
        else:
            reason = _rps_lost(goal, progress)
        if reason is not None:
            return {"goal": goal.text, "reason": reason}
    return None


def _latency_lost(goal: Goal, p: Progress, beyond: int) -> str | None:
    assert goal.percentile is not None
    most = p.responses + p.remaining  # the largest number of responses the window can end with
    allowed = most - target_rank(goal.percentile, most)  # responses that may lie above the rank
    if beyond <= allowed or beyond == 0:
        return None
    limit = format_value(goal, goal.limit)
    took = f"{limit} or more" if goal.strict else f"more than {limit}"
    return (
        f"{beyond} responses already took {took}; the window holds at most {most} responses, "
        f"of which no more than {allowed} may lie beyond its {goal.key}"
    )


def _errors_lost(goal: Goal, p: Progress) -> str | None:
    if not p.errors:
        return None
    best = p.errors / (p.errors + p.responses + p.remaining)  # every outcome still to come a success
    if goal.holds(best):
        return None
    return (
        f"{p.errors} requests already failed: at least {format_value(goal, best)} of the "
        f"{p.errors + p.responses + p.remaining} the window can hold at most"
    )


def _rps_lost(goal: Goal, p: Progress) -> str | None:
    if p.window_s is None:
        return None  # with a request count the window's length is not known in advance
    best = (p.responses + p.remaining) / (p.window_s * (1 - WINDOW_SLACK))
    if goal.holds(best):
        return None
    return (
        f"at most {p.responses + p.remaining} responses fit in the {p.window_s:g} s window: "
        f"{format_value(goal, best)} at best"
    )


class Watch:
    """The coordinator's side: fed every worker's latest tick, it remembers the first goal
    proven lost (with when, in seconds into the measured window)."""

    def __init__(self, goals: list[Goal], window_s: float | None) -> None:
        self.goals = goals
        self.window_s = window_s
        self.lost: dict | None = None

    def update(self, ticks: list[dict | None], at_s: float) -> bool:
        """True the first time a goal is found lost: the caller then stops the run."""
        if self.lost is not None:
            return False
        progress = combine(ticks, self.window_s)
        if progress is None:
            return False
        lost = lost_goal(self.goals, progress)
        if lost is None:
            return False
        self.lost = {**lost, "at_s": round(max(at_s, 0.0), 3)}
        return True
