"""Service-level goals (`--slo 'p99<10ms'`): parsing, and the end-of-run check. No I/O.

A goal is one measure, a comparison and a limit:

    pN<LIMIT    a latency percentile (p50, p90, p99, p99.9, ...) below LIMIT (us, ms or s);
                over an open loop the corrected latency, timed from each request's scheduled
                send, so a stalled server cannot hide behind a slow generator
    errors<X%   failed requests as a share of every request that ended in the window
    rps>N       verified responses per second over the measured window

`<=` and `>=` are accepted too. A latency or error goal is an upper bound and a throughput
goal a lower one, so a goal written the other way round is refused rather than guessed at.
The percentile is the one the result reports (latency.summary: the histogram's value,
never above the exact maximum), so the check agrees with the figures printed beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import latency

LATENCY, ERRORS, RPS = "latency", "errors", "rps"
UPPER_OPS, LOWER_OPS = ("<", "<="), (">", ">=")
LATENCY_UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}
EXAMPLES = "write p99<10ms, errors<0.1% or rps>5000"

_GOAL = re.compile(r"^\s*(?P<measure>[^<>=\s]*)\s*(?P<op><=|>=|<|>|=+)\s*(?P<value>.*?)\s*$")
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_LATENCY_VALUE = re.compile(rf"^{_NUMBER}\s*(us|ms|s)?$")
_ERRORS_VALUE = re.compile(rf"^{_NUMBER}\s*(%)?$")
_RPS_VALUE = re.compile(rf"^{_NUMBER}\s*(k)?$")
_PERCENTILE = re.compile(rf"^p{_NUMBER}$")


class SloError(ValueError):
    """A goal that cannot be read; the message is one line and names the bad part."""


@dataclass(frozen=True)
class Goal:
    """One goal. limit is in microseconds (latency), a fraction of requests (errors), or
    requests/s (rps); percentile is set for latency goals only."""

    text: str  # as the user wrote it, without spaces
    measure: str  # LATENCY, ERRORS or RPS
    op: str  # <, <=, > or >=
    limit: float
    percentile: float | None = None

    @property
    def upper(self) -> bool:
        """True when the goal caps its measure (latency, errors), False when it floors it (rps)."""
        return self.op in UPPER_OPS

    @property
    def strict(self) -> bool:
        return self.op in ("<", ">")

    def holds(self, measured: float) -> bool:
        return {
            "<": measured < self.limit,
            "<=": measured <= self.limit,
            ">": measured > self.limit,
            ">=": measured >= self.limit,
        }[self.op]

    @property
    def key(self) -> str:
        """The result's name for the measure: p99, errors, rps."""
        return latency.percentile_key(self.percentile) if self.percentile is not None else self.measure


def parse_goal(text: str) -> Goal:
    """'p99<10ms' -> Goal; SloError naming the bad part for anything else."""
    m = _GOAL.match(text)
    if not m or not m.group("measure"):
        raise SloError(f"{text!r} is not a goal: no measure before a comparison ({EXAMPLES})")
    measure, op, value = m.group("measure"), m.group("op"), m.group("value")
    compact = f"{measure}{op}{value.replace(' ', '')}"
    if op not in UPPER_OPS + LOWER_OPS:
        raise SloError(f"{text!r}: comparison {op!r} is not one of <, <=, >, >= ({EXAMPLES})")
    if not value:
        raise SloError(f"{text!r}: no limit after {op!r} ({EXAMPLES})")
    lowered = measure.lower()
    if _PERCENTILE.match(lowered):
        percentile = float(lowered[1:])
        if not 0 < percentile <= 100:
            raise SloError(f"{text!r}: percentile {measure!r} must be above p0 and at most p100")
        _check_direction(text, op, upper=True, what="a latency goal")
        return Goal(compact, LATENCY, op, _latency_limit(text, value, op), percentile)
    if lowered == "errors":
        _check_direction(text, op, upper=True, what="an error goal")
        return Goal(compact, ERRORS, op, _error_limit(text, value, op))
    if lowered == "rps":
        _check_direction(text, op, upper=False, what="a throughput goal")
        return Goal(compact, RPS, op, _rps_limit(text, value, op))
    raise SloError(f"{text!r}: unknown measure {measure!r} (use a percentile such as p99 or p99.9, errors, or rps)")


def parse_goals(texts: list[str]) -> list[Goal]:
    return [parse_goal(t) for t in texts]


def _check_direction(text: str, op: str, upper: bool, what: str) -> None:
    if upper and op not in UPPER_OPS:
        raise SloError(f"{text!r}: {what} is an upper bound; write < or <=, not {op!r}")
    if not upper and op not in LOWER_OPS:
        raise SloError(f"{text!r}: {what} is a lower bound; write > or >=, not {op!r}")


def _latency_limit(text: str, value: str, op: str) -> float:
    m = _LATENCY_VALUE.match(value)
    if not m:
        raise SloError(f"{text!r}: latency limit {value!r} is not a number with a unit such as 10ms, 500us or 1.5s")
    if m.group(2) is None:
        raise SloError(f"{text!r}: latency limit {value!r} has no unit (us, ms or s)")
    limit = float(m.group(1)) * LATENCY_UNITS_US[m.group(2)]
    if limit <= 0 and op == "<":
        raise SloError(f"{text!r}: no latency is below {value!r}")
    return limit


def _error_limit(text: str, value: str, op: str) -> float:
    m = _ERRORS_VALUE.match(value)
    if not m:
        raise SloError(f"{text!r}: error limit {value!r} is not a percentage such as 0.1%")
    if m.group(2) is None:
        raise SloError(f"{text!r}: error limit {value!r} needs a % sign (a share of requests, such as 0.1%)")
    percent = float(m.group(1))
    if percent > 100:
        raise SloError(f"{text!r}: error limit {value!r} is above 100%")
    if percent == 0 and op == "<":
        raise SloError(f"{text!r}: no error rate is below 0%; write errors<=0% for none at all")
    return percent / 100


def _rps_limit(text: str, value: str, op: str) -> float:
    m = _RPS_VALUE.match(value)
    if not m:
        raise SloError(f"{text!r}: throughput limit {value!r} is not a rate in requests/s such as 5000 or 5k")
    limit = float(m.group(1)) * (1000 if m.group(2) else 1)
    if limit == 0 and op == ">=":
        raise SloError(f"{text!r}: every run has rps>=0; give a positive limit")
    return limit


# -- the check at the end --------------------------------------------------------------------
def measured_value(goal: Goal, doc: dict) -> float | None:
    """The goal's measure in a load result (serverzoo.load/1), in the goal's unit; None when
    nothing was measured that it could be read from."""
    outcomes = doc["requests"] + doc["errors"]["total"]
    if goal.measure == ERRORS:
        return doc["errors"]["total"] / outcomes if outcomes else None
    if goal.measure == RPS:
        return float(doc["rps"]) if doc["elapsed_s"] > 0 else None
    lat = doc["latency_us"]
    if not lat.get("count"):
        return None
    if goal.key in lat:
        return lat[goal.key]
    # a percentile the summary did not carry: read it from the window's histogram the same way
    hist = latency.decode(doc["histogram"])
    raw = latency.RawStats(lat["count"], 0, lat.get("min"), lat["max"])
    return latency.summary(hist, raw, [goal.percentile])[goal.key]


def check_goal(goal: Goal, doc: dict) -> dict:
    """One goal against a result: measured, passed, and the margin (positive: room to spare;
    negative: missed by that much), in the goal's unit and relative to the limit."""
    measured = measured_value(goal, doc)
    passed = measured is not None and goal.holds(measured)
    margin = None if measured is None else (goal.limit - measured if goal.upper else measured - goal.limit)
    return {
        "goal": goal.text,
        "measure": goal.measure,
        "percentile": goal.percentile,
        "op": goal.op,
        "limit": goal.limit,
        "unit": UNITS[goal.measure],
        "measured": measured,
        "passed": passed,
        "margin": margin,
        "margin_ratio": round(margin / goal.limit, 6) if margin is not None and goal.limit else None,
        "verdict": verdict_text(goal, measured, passed),
    }


UNITS = {LATENCY: "us", ERRORS: "fraction", RPS: "req/s"}


def format_value(goal: Goal, value: float) -> str:
    if goal.measure == LATENCY:
        from .report import fmt_us

        return fmt_us(value)
    if goal.measure == ERRORS:
        return f"{value * 100:.3g}%"
    return f"{value:,.1f} req/s"


def verdict_text(goal: Goal, measured: float | None, passed: bool) -> str:
    """'p99<10ms: met (p99 8.12ms, 1.88ms to spare)' or '... NOT met (p99 12.50ms, 2.50ms over)'."""
    if measured is None:
        return f"{goal.text}: NOT met (nothing measured)"
    gap = format_value(goal, abs(measured - goal.limit))
    if goal.limit:
        gap += f" ({abs(measured - goal.limit) / goal.limit * 100:.0f}%)"
    side = "to spare" if passed else ("over" if goal.upper else "short")
    state = "met" if passed else "NOT met"
    return f"{goal.text}: {state} ({goal.key} {format_value(goal, measured)}; {gap} {side})"


def slo_section(goals: list[Goal], doc: dict, aborted: dict | None = None) -> dict:
    """The result's "slo" entry: each goal checked, whether all held, and what stopped the run
    early (--abort-on-fail), if anything did. The goal that stopped it counts as failed: it
    had been shown unreachable for the whole window, whatever the shortened window says."""
    checks = [check_goal(g, doc) for g in goals]
    if aborted is not None:
        for c in checks:
            if c["goal"] == aborted["goal"] and c["passed"]:
                c["passed"] = False
                c["verdict"] = f"{c['goal']}: NOT met (run stopped early: {aborted['reason']})"
    return {"goals": checks, "passed": all(c["passed"] for c in checks), "aborted": aborted}


def slo_text(section: dict) -> str:
    """The summary's lines for the goals, one per goal (an early stop is among the warnings)."""
    lines = [f"SLO {'met' if section['passed'] else 'NOT MET'}:"]
    lines += [f"  {c['verdict']}" for c in section["goals"]]
    return "\n".join(lines)


def exit_status(doc: dict, exit_slo: int) -> int:
    """A load run's exit status: exit_slo when a goal was not met; else 1 when requests failed,
    unless an error goal was given and held (it says how many failures are acceptable); else 0."""
    section = doc.get("slo")
    if section is not None and not section["passed"]:
        return exit_slo
    tolerated = section is not None and any(c["measure"] == ERRORS for c in section["goals"])
    return 1 if doc["errors"]["total"] and not tolerated else 0
