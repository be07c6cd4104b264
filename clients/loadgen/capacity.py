"""`serverzoo load --find-capacity`: the highest open-loop rate at which every goal holds.

The search walks the offered rate (requests/s, open loop, so latency is timed from each
request's scheduled send and a server that falls behind cannot hide it):

1. grow geometrically (x2) from the start rate until a step fails, or shrink (/2) until one
   holds when the start rate already fails;
2. bisect the bracket [highest that held, lowest that failed] at its geometric middle until
   the two are within the resolution (5%: the answer is known to that much).

A step holds when every goal is met on its measured window, no request failed (unless an
errors goal says how many may), and the achieved rate is within ACHIEVED_TOLERANCE of the
target: a server that completes less than it is offered is not keeping up, whatever its
latency says so far. Each step has a warm-up (connections opened, queues settled; excluded)
and a window long enough for the percentile asked: REQUIRED_TAIL responses beyond it, so
p99 needs 500 responses and p99.9 5,000. A step past capacity stops as soon as a goal is
proven lost (slo_watch), so overloaded steps are short. An overloaded step leaves the server
a backlog (requests sent and not yet answered; a server that takes connections one at a time
still has them queued), which would be charged to the next step: after a step that left
requests unanswered, the search pauses for as long as the server needs to answer them at the
rate it achieved (at most MAX_SETTLE_S). The whole search is bounded in steps and in time; a
step that would not fit in the time left ends it.

Search (the bracket and the next rate) and judge_step are pure; find_capacity runs the steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic, sleep

from serverzoo.machine import describe_machine

from .options import LoadOptions, OptionError
from .report import fmt_us
from .slo import ERRORS, LATENCY, RPS, Goal, parse_goals

SCHEMA = "serverzoo.capacity/1"
GROWTH = 2.0
ACHIEVED_TOLERANCE = 0.05  # a step must achieve at least 95% of its target rate
REQUIRED_TAIL = 5  # responses beyond the goal's percentile a step's window must hold
MIN_RESPONSES = 50
MIN_STEP_S = 1.0  # measured time of a step, at least
MIN_WARMUP_S = 0.5
WARMUP_SENDS = 2  # the warm-up lasts long enough for each connection to send this many requests
STEP_OVERHEAD_S = 0.5  # starting the worker processes and collecting their results, per step
MAX_SETTLE_S = 10.0  # the longest pause after an overloaded step for the server to work off its backlog
CURVE_PERCENTILES = ("p50", "p90", "p99", "p99.9")


@dataclass(frozen=True)
class SearchSettings:
    """How the search walks: where it starts, when the bracket is narrow enough, its bounds."""

    start: float = 100.0  # requests/s of the first step
    resolution: float = 0.05  # stop when the lowest failing rate is within this of the highest holding one
    max_steps: int = 20
    max_time_s: float = 180.0
    min_step_s: float = MIN_STEP_S
    min_warmup_s: float = MIN_WARMUP_S

    def validate(self) -> None:
        if not self.start > 0:
            raise OptionError(f"--search-start must be a positive rate (got {self.start:g})")
        if not 0.005 <= self.resolution <= 1:
            raise OptionError(f"--search-resolution must be between 0.005 and 1 (got {self.resolution:g})")
        if self.max_steps < 2:
            raise OptionError(f"--search-steps must be at least 2 (got {self.max_steps})")
        if not self.max_time_s > 0:
            raise OptionError("--search-time must be positive")


def required_responses(goals: list[Goal]) -> int:
    """Responses a step's window needs to judge every goal's percentile."""
    need = MIN_RESPONSES
    for g in goals:
        if g.measure == LATENCY and g.percentile is not None and g.percentile < 100:
            need = max(need, math.ceil(REQUIRED_TAIL / (1 - g.percentile / 100) - 1e-9))
    return need


class Search:
    """The bracket so far and the next rate to try (None when the search is over, with why)."""

    def __init__(self, settings: SearchSettings, floor: float) -> None:
        self.settings = settings
        self.floor = floor  # the lowest rate a step can offer
        self.held: float | None = None  # highest rate that held
        self.failed: float | None = None  # lowest rate that failed
        self.next_rate: float | None = max(settings.start, floor)
        self.reason = ""

    def record(self, rate: float, held: bool) -> None:
        if held:
            self.held = rate if self.held is None else max(self.held, rate)
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)
        self.next_rate = self._next()

    def _next(self) -> float | None:
        lo, hi = self.held, self.failed
        if hi is None:
            assert lo is not None
            return _round(lo * GROWTH)
        if lo is None:
            if hi <= self.floor:
                self.reason = f"no rate held, down to {hi:g} req/s (the lowest this run can offer)"
                return None
            return max(_round(hi / GROWTH), self.floor)
        if hi <= lo * (1 + self.settings.resolution):
            self.reason = f"resolved: {lo:g} req/s held, {hi:g} req/s did not"
            return None
        middle = _round(math.sqrt(lo * hi))
        if not lo < middle < hi:  # the bracket is narrower than the rounding
            self.reason = f"resolved: {lo:g} req/s held, {hi:g} req/s did not"
            return None
        return middle

    def stop(self, reason: str) -> None:
        self.next_rate = None
        self.reason = reason


def _round(rate: float) -> float:
    """Four significant digits: rates that print as they are."""
    return float(f"{rate:.4g}")


def step_lengths(rate: float, connections: int, need: int, settings: SearchSettings) -> tuple[float, float]:
    """(warm-up, measured) seconds of a step at rate."""
    warmup = max(settings.min_warmup_s, WARMUP_SENDS * connections / rate)
    return warmup, max(settings.min_step_s, need / rate)


def settle_seconds(doc: dict) -> float:
    """How long the server needs to answer what a step left unanswered, at the rate it achieved."""
    owed = doc["unfinished"]["count"]
    rate = doc["achieved_rate"] or 0.0
    if not owed:
        return 0.0
    return round(min(MAX_SETTLE_S, owed / rate if rate > 0 else MAX_SETTLE_S), 3)


def judge_step(goals: list[Goal], doc: dict, target: float) -> dict:
    """One row of the curve: the step's figures, its goals, and whether it held (and why not)."""
    section = doc["slo"]
    reasons = [c["verdict"] for c in section["goals"] if not c["passed"]]
    errors = doc["errors"]["total"]
    if errors and not any(g.measure == ERRORS for g in goals):
        reasons.append(f"{errors} requests failed (an errors goal such as errors<0.1% would allow some)")
    achieved = doc["achieved_rate"] or 0.0
    if achieved < (1 - ACHIEVED_TOLERANCE) * target:
        reasons.append(f"achieved {achieved:.1f} of {target:g} req/s (less than {100 - ACHIEVED_TOLERANCE * 100:g}%)")
    lat = doc["latency_us"]
    return {
        "target_rate": target,
        "achieved_rate": achieved,
        "requests": doc["requests"],
        "errors": errors,
        "elapsed_s": doc["elapsed_s"],
        "latency_us": {k: lat.get(k) for k in ("mean", *CURVE_PERCENTILES, "max")}
        | {c["goal"]: c["measured"] for c in section["goals"] if c["measure"] == LATENCY},
        "goals": section["goals"],
        "stopped_early": section["aborted"],
        "client_bound": doc["client"]["client_bound"],
        # what the server spent at this rate (known when the generator was given its PID): a step that failed
        # with the server's CPU busy ran out of CPU; one that failed with it idle waited for something else
        "server_cpu_percent": (doc.get("server") or {}).get("cpu_percent"),
        "held": not reasons,
        "reasons": reasons,
    }


def check_search(opts: LoadOptions, goals: list[Goal]) -> None:
    """OptionError (one line) for a search that cannot mean anything."""
    if not goals:
        raise OptionError("--find-capacity searches for the highest rate that meets the goals: give --slo")
    if any(g.measure == RPS for g in goals):
        raise OptionError("--find-capacity finds the rate itself: give latency or error goals, not an rps goal")
    if opts.requests is not None:
        raise OptionError("--find-capacity sizes each step itself: drop -n (-d sets a step's shortest window)")
    if opts.conn_mode == "pipeline":
        raise OptionError("--find-capacity walks an open-loop rate; pipelining is a closed-loop setting")
    if opts.think_s:
        raise OptionError("--find-capacity walks an open-loop rate; --think is a closed-loop setting")


def find_capacity(opts: LoadOptions, settings: SearchSettings, on_step: Callable[[dict], None] | None = None) -> dict:
    """Run the search (module docstring) and return its document (schema serverzoo.capacity/1).

    opts gives the server, targets, connections and goals (opts.slos); its rate, duration and
    warm-up are set per step. on_step(row) is called after every step.
    Raises OptionError, LoadError as run_load does.
    """
    from .coordinator import load_session

    goals = parse_goals(opts.slos)
    check_search(opts, goals)
    settings.validate()
    need = required_responses(goals)
    floor = float(opts.workers or 1)
    search = Search(settings, floor)
    rows: list[dict] = []
    began = monotonic()
    probe = dataclasses.replace(opts, rate=search.next_rate, duration=settings.min_step_s, abort_on_fail=True)
    with load_session(probe) as session:
        while search.next_rate is not None:
            rate = search.next_rate
            if len(rows) >= settings.max_steps:
                search.stop(f"step limit: {settings.max_steps} steps taken")
                break
            warmup, window = step_lengths(rate, opts.connections, need, settings)
            if monotonic() - began + warmup + window + STEP_OVERHEAD_S > settings.max_time_s:
                search.stop(
                    f"time limit: a step at {rate:g} req/s ({warmup + window:.1f} s) would end after "
                    f"{settings.max_time_s:g} s"
                )
                break
            step = dataclasses.replace(
                opts, rate=rate, duration=window, warmup_s=warmup, requests=None, abort_on_fail=True, live=False
            )
            try:
                result = session.measure(step)
            except KeyboardInterrupt:  # Ctrl-C while the step's workers started: nothing measured
                result = {"interrupted": True}
            if result["interrupted"]:  # Ctrl-C: the step is cut short and the search ends with it
                search.stop(f"interrupted during the step at {rate:g} req/s")
                break
            row = judge_step(goals, result, rate)
            row["step"] = len(rows) + 1
            row["settle_s"] = settle_seconds(result) if not row["held"] else 0.0
            rows.append(row)
            search.record(rate, row["held"])
            if on_step is not None:
                on_step(row)
            try:
                sleep(min(row["settle_s"], max(0.0, settings.max_time_s - (monotonic() - began))))
            except KeyboardInterrupt:
                search.stop(f"interrupted after the step at {rate:g} req/s")
                break
    doc = _document(opts, settings, goals, search, rows, elapsed=monotonic() - began, need=need)
    if session.served is not None:
        session.served.add_to(doc)
    return doc


def _document(
    opts: LoadOptions,
    settings: SearchSettings,
    goals: list[Goal],
    search: Search,
    rows: list[dict],
    *,
    elapsed: float,
    need: int,
) -> dict:
    warnings = []
    held = [r for r in rows if r["held"]]
    best = max(held, key=lambda r: r["target_rate"]) if held else None
    failed = [r for r in rows if not r["held"]]
    limit = min(failed, key=lambda r: r["target_rate"]) if failed else None
    if limit is not None and limit["client_bound"]:
        warnings.append(
            f"the load generator was the limit in the lowest step that failed ({limit['target_rate']:g} "
            f"req/s, see client_bound): the capacity found may be the generator's, not the server's"
        )
    if search.failed is None and rows:
        warnings.append("no step failed: the capacity is at least the highest rate tried")
    return {
        "schema": SCHEMA,
        "tool": "serverzoo load --find-capacity",
        "machine": describe_machine(),
        "options": opts.to_dict(),
        "url": opts.url,
        "goals": [g.text for g in goals],
        "search": dataclasses.asdict(settings)
        | {"growth": GROWTH, "achieved_tolerance": ACHIEVED_TOLERANCE, "required_responses": need},
        "capacity_rps": best["target_rate"] if best else None,
        "bracket": [search.held, search.failed],
        "resolved": search.reason.startswith("resolved"),
        "stopped": search.reason,
        "elapsed_s": round(elapsed, 3),
        "steps": rows,
        "server_process": None,
        "link": None,
        "warnings": warnings,
    }


def capacity_text(doc: dict) -> str:
    """The curve the search walked, in rate order, and its answer."""
    o = doc["options"]
    goals = ", ".join(doc["goals"])
    lines = [
        f"Capacity search @ {doc['url']}: {goals}; {o['connections']} connections, open loop "
        f"({o['arrivals']} arrivals), {len(doc['steps'])} steps in {doc['elapsed_s']:.1f} s"
    ]
    lines.append(
        f"  {'step':>4} {'target/s':>10} {'achieved/s':>11} "
        + "".join(f"{k:>9}" for k in CURVE_PERCENTILES)
        + f" {'errors':>7}  held"
    )
    for r in sorted(doc["steps"], key=lambda r: r["target_rate"]):
        lat = r["latency_us"]
        mark = "yes" if r["held"] else "no: " + "; ".join(r["reasons"])
        lines.append(
            f"  {r['step']:>4} {r['target_rate']:>10,.1f} {r['achieved_rate']:>11,.1f} "
            + "".join(f"{fmt_us(lat.get(k)):>9}" for k in CURVE_PERCENTILES)
            + f" {r['errors']:>7}  {mark}"
        )
    if doc["capacity_rps"] is not None:
        hi = doc["bracket"][1]
        above = f"; {hi:,.4g} req/s did not" if hi is not None else ""
        ended = "" if doc["resolved"] else f"; the search ended early: {doc['stopped']}"
        lines.append(
            f"Capacity: {doc['capacity_rps']:,.4g} req/s at {goals} (the highest rate that held{above}{ended})"
        )
    else:
        lines.append(f"Capacity: none found at {goals} ({doc['stopped']})")
    for w in doc["warnings"]:
        lines.append(f"Warning: {w}")
    return "\n".join(lines)
