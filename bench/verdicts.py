"""Which model for which workload: a winner only when the data says so.

One verdict per scenario, at the level that matters (RunView.basis_level: the top
concurrency of a closed loop; in an open loop the highest offered rate models kept up
with). The rules, in order:

1. The yardstick (nginx) never competes. A cell that failed, degraded (errors, stalls,
   wrong answers, an unclean stop, an open-loop rate it fell behind) or, for a p99, holds
   fewer than the 100 responses a p99 needs, is excluded, with its reason.
2. Client-bound cells measured the load generator, not the server: their figure is a lower
   bound. For a throughput metric, N is the lowest such figure, and every model that
   reached N (or whose interval reaches it) is tied at >= N ("generator-limited"); if only
   one did and it is clearly ahead of the rest, it wins, by at least its margin. For a
   latency metric a client-bound cell is excluded.
3. Otherwise the leader wins only when clearly ahead of every other model: its lead over
   each beyond the 95% interval of their difference (bench.uncertainty.clearly_ahead), and
   its margin is its lead over the runner-up. Being ahead of the runner-up is not enough: a
   noisier cell further down may still be level with the leader. If not, the verdict is a
   tie of the leader and every model it is not clearly ahead of, with the margin that spans
   them. A cell whose noise was not measured separates nothing.

`margin` and `noise` are fractions (0.031 = 3.1%). Verdicts are stored in the run's JSON
(`verdicts`) and the report renders them from there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import uncertainty
from .analysis import Point, RunView, format_value, level_label, metric_unit, supports
from .results import Run
from .uncertainty import Estimate

KINDS = ("winner", "tie", "generator-limited", "none")


@dataclass(frozen=True)
class Contender:
    """One model's cell at the basis level, as the verdict sees it."""

    server: str
    estimate: Estimate | None  # None: nothing measured
    flags: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    responses: int = 0
    error_rate: float = 0.0
    achieved_rate: float | None = None

    @classmethod
    def of(cls, p: Point) -> Contender:
        return cls(
            p.server,
            p.estimate,
            tuple(p.flags),
            tuple(dict.fromkeys(p.reasons)),
            p.latency_count,
            p.error_rate,
            p.achieved_rate,
        )


@dataclass(frozen=True)
class Ranked:
    server: str
    estimate: Estimate
    client_bound: bool = False

    def to_dict(self) -> dict[str, Any]:
        e = self.estimate.to_dict()
        return {"server": self.server, **e, "client_bound": self.client_bound}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ranked:
        return cls(d["server"], Estimate.from_dict(d), bool(d.get("client_bound")))


@dataclass(frozen=True)
class Verdict:
    scenario: str
    kind: str  # one of KINDS
    winner: str | None
    tie: tuple[str, ...]  # the tied models, best first (empty unless a tie)
    margin: float | None  # winner: lead over the runner-up; tie: lead of the first over the last member
    noise: float | None  # winner: the combined relative half-width its lead had to exceed
    ceiling: float | None  # generator-limited: the lowest client-bound figure
    level: int | None
    level_label: str
    metric: str
    confidence: str
    ranking: tuple[Ranked, ...]
    excluded: tuple[tuple[str, str], ...]  # (server, reason)
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "kind": self.kind,
            "winner": self.winner,
            "tie": list(self.tie),
            "margin": _round(self.margin),
            "noise": _round(self.noise),
            "ceiling": self.ceiling,
            "basis": {"level": self.level, "label": self.level_label, "metric": self.metric},
            "confidence": self.confidence,
            "ranking": [r.to_dict() for r in self.ranking],
            "excluded": [{"server": s, "reason": r} for s, r in self.excluded],
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        basis = d["basis"]
        return cls(
            d["scenario"],
            d["kind"],
            d["winner"],
            tuple(d["tie"]),
            d["margin"],
            d.get("noise"),
            d.get("ceiling"),
            basis.get("level"),
            basis.get("label", ""),
            basis["metric"],
            d["confidence"],
            tuple(Ranked.from_dict(r) for r in d.get("ranking", [])),
            tuple((e["server"], e["reason"]) for e in d["excluded"]),
            d["text"],
        )


def _round(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, 5)


def exclusion(c: Contender, metric: str, higher_is_better: bool) -> str | None:
    """Why this cell cannot decide a verdict, or None."""
    if c.estimate is None or "failed" in c.flags:
        return "failed: " + (c.reasons[0] if c.reasons else "nothing measured")
    problems = []
    if "errors" in c.flags:
        problems.append(f"{c.error_rate:.1%} of requests failed")
    if "stalled" in c.flags:
        problems.append(
            "stalled: "
            + next((r for r in c.reasons if "unanswered" in r or "waiting" in r), "requests left unanswered")
        )
    if "wrong-answers" in c.flags:
        problems.append("wrong answers")
    if "unclean-stop" in c.flags:
        problems.append("did not stop cleanly")
    if "fell-behind" in c.flags:
        problems.append(next((r for r in c.reasons if r.startswith("achieved")), "fell behind the offered rate"))
    if problems:
        return "degraded: " + "; ".join(problems)
    if metric == "p99_us" and not supports(c.responses, 99.0):
        return f"{c.responses} responses: too few for a p99 (100 needed)"
    if "client-bound" in c.flags and not higher_is_better:
        return "client-bound: the load generator's delay is in this latency"
    return None


def _confidence(ranked: Sequence[Ranked]) -> str:
    measured = [r.estimate for r in ranked if r.estimate.measured]
    if not measured:
        return "noise unmeasured (too few timeline slices or repetitions): nothing can be separated"
    reps = [e.n for e in measured if e.method in ("repetitions", "pooled")]
    batches = [e.n for e in measured if e.method == "batch-means"]
    parts = []
    if any(e.method == "bracket" for e in measured):
        parts.append(
            "capacity searches (each capacity known to its bracket: the highest rate that held and "
            "the lowest that failed)"
        )
    if reps:
        parts.append(f"{min(reps)}+ repetitions" if min(reps) != max(reps) else f"{reps[0]} repetitions")
    if batches:
        parts.append(f"{min(batches)} timeline batches of one repetition")
    unmeasured = len(ranked) - len(measured)
    tail = f"; {unmeasured} cell(s) with unmeasured noise" if unmeasured else ""
    if parts and all(e.method == "bracket" for e in measured):
        return parts[0][0].upper() + parts[0][1:] + tail
    return "95% intervals from " + " and ".join(parts) + tail


def decide(
    scenario: str,
    contenders: Sequence[Contender],
    metric: str,
    higher_is_better: bool,
    level: int | None = None,
    label: str = "",
) -> Verdict:
    """The verdict among these contenders (the yardstick already left out)."""
    excluded, clean = [], []
    for c in contenders:
        why = exclusion(c, metric, higher_is_better)  # not None whenever the estimate is
        if why or c.estimate is None:
            excluded.append((c.server, why or "failed: nothing measured"))
        else:
            clean.append(Ranked(c.server, c.estimate, "client-bound" in c.flags))
    sign = 1 if higher_is_better else -1
    clean.sort(key=lambda r: (-sign * r.estimate.value, r.server))
    at = f" at {label}" if label else ""

    def verdict(
        kind: str,
        winner: str | None,
        tie: Sequence[str],
        margin: float | None,
        noise: float | None,
        ceiling: float | None,
        text: str,
        ranking: Sequence[Ranked],
    ) -> Verdict:
        return Verdict(
            scenario,
            kind,
            winner,
            tuple(tie),
            margin,
            noise,
            ceiling,
            level,
            label,
            metric,
            _confidence(ranking),
            tuple(ranking),
            tuple(excluded),
            text,
        )

    if not clean:
        return verdict("none", None, (), None, None, None, "no model served it cleanly" + at, clean)
    if len(clean) == 1:
        return verdict(
            "winner",
            clean[0].server,
            (),
            None,
            None,
            None,
            f"{clean[0].server}: the only model that served it cleanly{at}",
            clean,
        )
    bound = [r for r in clean if r.client_bound]
    if bound:  # only for a throughput metric; exclusion() took them out of a latency verdict
        ceiling = min(r.estimate.value for r in bound)
        reached = [r for r in clean if r.client_bound or r.estimate.high >= ceiling]
        rest = [r for r in clean if r not in reached]
        ranking = reached + rest
        if len(reached) == 1 and rest and all(uncertainty.clearly_ahead(reached[0].estimate, r.estimate) for r in rest):
            margin = uncertainty.lead(reached[0].estimate, rest[0].estimate)
            return verdict(
                "generator-limited",
                reached[0].server,
                (),
                margin,
                None,
                ceiling,
                f"{reached[0].server}, at least {margin:.1%} ahead of {rest[0].server}{at} (the load "
                f"generator was its limit at {format_value(metric, ceiling)})",
                ranking,
            )
        if len(reached) > 1:
            names = [r.server for r in reached]
            shown = format_value(metric, ceiling)
            return verdict(
                "generator-limited",
                None,
                names,
                None,
                None,
                ceiling,
                f"generator-limited: every model that reached {shown} {metric_unit(metric)} is tied at >= "
                f"{shown}{at}: {', '.join(names)}",
                ranking,
            )
        clean = ranking
    leader, runner_up = clean[0], clean[1]
    # a winner is clearly ahead of every other model, not just the next by value: a noisy cell further
    # down may still be level with it
    level_with_leader = [
        r for r in clean[1:] if not uncertainty.clearly_ahead(leader.estimate, r.estimate, higher_is_better)
    ]
    if not level_with_leader:
        margin = uncertainty.lead(leader.estimate, runner_up.estimate, higher_is_better)
        if "bracket" in (leader.estimate.method, runner_up.estimate.method):
            return verdict(
                "winner",
                leader.server,
                (),
                margin,
                None,
                None,
                f"{leader.server}, {margin:.1%} ahead of {runner_up.server} (it held a rate "
                f"{runner_up.server} did not){at}",
                clean,
            )
        noise = uncertainty.combined_half_width(leader.estimate, runner_up.estimate) / abs(runner_up.estimate.value)
        return verdict(
            "winner",
            leader.server,
            (),
            margin,
            noise,
            None,
            f"{leader.server}, {margin:.1%} ahead of {runner_up.server} (noise ±{noise:.1%}){at}",
            clean,
        )
    tie = [leader, *level_with_leader]
    margin = uncertainty.lead(leader.estimate, tie[-1].estimate, higher_is_better)
    within = f"within {margin:.0%}" if math.isfinite(margin) else "noise unmeasured"
    return verdict(
        "tie",
        None,
        [r.server for r in tie],
        margin,
        None,
        None,
        f"tie: {', '.join(r.server for r in tie)} ({within}){at}",
        clean,
    )


def scenario_verdict(view: RunView, scenario: str) -> Verdict:
    sc = view.scenarios[scenario]
    level = view.basis_level(scenario)
    label = level_label(sc, level) if level is not None else ""
    contenders = (
        [Contender.of(p) for s in view.models if (p := view.point(s, scenario, level)) is not None]
        if level is not None
        else []
    )
    return decide(scenario, contenders, sc.metric, sc.higher_is_better, level, label)


def compute(view: RunView) -> list[Verdict]:
    """One verdict per scenario that has cells, in the run's scenario order."""
    return [scenario_verdict(view, name) for name in view.scenarios if view.levels(name)]


def of_run(run: Run, view: RunView) -> list[Verdict]:
    """The verdicts stored in the run, or, for a run written before verdicts were, computed now."""
    if run.stored_verdicts is not None:
        return [Verdict.from_dict(d) for d in run.stored_verdicts]
    return compute(view)


def run_verdicts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdicts of a run document as the runner stores them in its JSON."""
    return [v.to_dict() for v in compute(RunView(Run.from_doc(doc, check=False)))]
