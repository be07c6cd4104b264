"""Why a verdict came out as it did: one or two sentences from what the servers spent.

A verdict says who is ahead; this module says what the cells measured that accounts for
it, from figures every cell already records: the server's CPU time (its whole process
tree), how many CPUs it was placed on, its requests, bytes and latencies. It never adds a
figure of its own and never guesses at code: each sentence states the measured figures and
the one reading they support. The readings, in the order they are tried:

- **More cores.** The faster model put clearly more cores to work (CPU time over wall
  time) on a placement that gave it more than one: it spread the work out. (Tried first:
  a one-process model on two CPUs leaves one idle by design, which is not waiting.)
- **Waiting, not working.** The slower model left much of its CPU idle while the faster
  one kept busy: it was held up (a connection it served alone, a lock, a blocking call),
  not by the cost of its work.
- **Neither short of CPU.** Then throughput in a closed loop is connections / latency,
  and the sentence gives both models' median latency.
- **Cheaper work.** Otherwise the slower model was busy: the one that spent less CPU per
  request (or per MB) is ahead, and when the two costs' ratio covers most of the lead, it
  says so.

A capacity verdict (the highest rate each model held at a latency goal) says whether the
runner-up ran out of CPU at the rate it failed at, or failed with CPU to spare (waiting).
Ties get the range of their members' CPU cost; generator-limited verdicts say how much of
their CPU the servers used at the generator's ceiling (their headroom); latency verdicts
say whether the runner-up's CPU was busy enough for requests to queue for it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .analysis import Point, RunView
from .verdicts import Verdict

BUSY = 0.75  # a server whose CPU was busy at least this fraction of the time was working, not waiting
IDLE_GAP = 0.15  # a utilisation this much lower than the leader's is "left its CPU idle"
MORE_CORES = 1.25  # the leader used at least this many times the runner-up's cores
ALIKE = 1.25  # tied models whose CPU costs are within this factor "spent alike"
MOST_OF_THE_GAP = 2 / 3  # a cost ratio covering this much of the lead "accounts for most of it"


@dataclass(frozen=True)
class Spend:
    """What one model spent in one cell, medians over its measured repetitions."""

    server: str
    cores_used: float  # server CPU seconds per wall second
    cores_given: int  # CPUs the server was placed on
    cpu_per_request_s: float
    cpu_per_mb_s: float | None
    p50_us: float | None

    @property
    def utilisation(self) -> float:
        return self.cores_used / self.cores_given if self.cores_given else 0.0

    @property
    def busy(self) -> str:
        """How busy its CPU was, in words: a percentage of one CPU, or cores of several."""
        if self.cores_given > 1:
            return f"{self.cores_used:.1f} of {self.cores_given} cores"
        return f"{self.utilisation:.0%}"

    def cost(self, metric: str) -> float | None:
        return self.cpu_per_mb_s if metric == "mb_per_s" else self.cpu_per_request_s


def spend(view: RunView, point: Point) -> Spend | None:
    """The point's spending, or None when its server CPU was not measured."""
    cores, per_request, per_mb = [], [], []
    for load in point.loads:
        per = load.server_cpu_per_request_s
        if per is None or load.server_cpu_percent is None:
            continue
        cores.append(load.server_cpu_percent / 100)
        per_request.append(per)
        if load.mb_per_s and load.rps:
            per_mb.append(load.server_cpu_percent / 100 / load.mb_per_s)
    if not cores:
        return None
    cpus = _cpus_given(view, point)
    if not cpus:
        return None
    return Spend(
        point.server,
        statistics.median(cores),
        cpus,
        statistics.median(per_request),
        statistics.median(per_mb) if per_mb else None,
        point.latency_us.get("p50"),
    )


def _cpus_given(view: RunView, point: Point) -> int:
    """How many CPUs the point's server was placed on (the machine's, when the cells do not say; 0: unknown)."""
    given = [
        len(c.server_cpus)
        for c in view.run.cells
        if (c.server, c.scenario, c.level) == (point.server, point.scenario, point.level) and c.server_cpus
    ]
    return max(given, default=0) or int(view.run.machine.get("cpus") or 0)


@dataclass(frozen=True)
class Limit:
    """Where one model's capacity search ended: the rate it failed at and what its CPU did there and below."""

    server: str
    failed: float | None  # the lowest rate that failed the goal
    busy_at_failure: float | None  # utilisation (0-1) of its CPUs in the step that failed
    busy_at: Mapping[float, float]  # utilisation by rate, for the steps that held


def limit(view: RunView, point: Point) -> Limit | None:
    """The point's capacity search (its median one over repetitions), or None when it has none."""
    searches = sorted((load.capacity for load in point.loads if load.capacity is not None), key=lambda c: c.rate or 0.0)
    cpus = _cpus_given(view, point)
    if not searches or not cpus:
        return None
    search = searches[len(searches) // 2]
    busy = {s.target_rate: s.server_cpu_percent / 100 / cpus for s in search.steps if s.server_cpu_percent is not None}
    held = {s.target_rate for s in search.steps if s.held}
    return Limit(
        point.server,
        search.failed,
        busy.get(search.failed) if search.failed is not None else None,
        {rate: u for rate, u in busy.items() if rate in held},
    )


def capacity_reading(winner: Limit, runner_up: Limit) -> str | None:
    """Why the winner held a rate the runner-up failed at: whether the runner-up ran out of CPU there
    or failed with CPU to spare (pure: tested with made-up searches)."""
    failed, busy = runner_up.failed, runner_up.busy_at_failure
    if failed is None or busy is None:
        return None
    at = f"{runner_up.server} failed the goal at {failed:,.0f} req/s"
    if busy >= BUSY:
        there = min((r for r in winner.busy_at if r >= failed), default=None)
        other = (
            f", where {winner.server} held {there:,.0f} req/s with its CPU {winner.busy_at[there]:.0%} busy"
            if there is not None
            else ""
        )
        return f"{at} with its CPU {busy:.0%} busy: it ran out of CPU{other}."
    return (
        f"{at} with {1 - busy:.0%} of its CPU idle: its requests waited for something other than CPU (a free "
        f"thread or process, a lock, a blocking call), not for the cost of their work."
    )


def explain(verdict: Verdict, view: RunView) -> str | None:
    """One or two sentences on why the verdict came out so, or None when the figures cannot say."""
    if verdict.level is None:
        return None
    if verdict.metric == "capacity_rps":
        return _explain_capacity(verdict, view)
    spends = {}
    for r in verdict.ranking:
        p = view.point(r.server, verdict.scenario, verdict.level)
        if p is not None and (s := spend(view, p)) is not None:
            spends[r.server] = s
    return reading(verdict, spends, view.scenarios[verdict.scenario].higher_is_better)


def _explain_capacity(verdict: Verdict, view: RunView) -> str | None:
    """A capacity verdict's winner held a rate the runner-up failed at: say what failed the runner-up."""
    if verdict.kind != "winner" or verdict.level is None or len(verdict.ranking) < 2:
        return None
    found = []
    for r in verdict.ranking[:2]:
        p = view.point(r.server, verdict.scenario, verdict.level)
        found.append(limit(view, p) if p is not None else None)
    lead, other = found
    return capacity_reading(lead, other) if lead is not None and other is not None else None


def reading(verdict: Verdict, spends: Mapping[str, Spend], higher_is_better: bool) -> str | None:
    """The sentence for a verdict, given what each ranked model spent (pure: tested with made-up figures)."""
    if len(verdict.ranking) < 2:
        return None
    if verdict.kind == "generator-limited":
        return _headroom([spends[s] for s in _members(verdict) if s in spends])
    if verdict.kind == "tie":
        return _tie([spends[s] for s in verdict.tie if s in spends], verdict.metric)
    if verdict.kind != "winner" or verdict.winner is None or verdict.margin is None:
        return None
    runner_up = next(r.server for r in verdict.ranking if r.server != verdict.winner)
    if verdict.winner not in spends or runner_up not in spends:
        return None
    if not higher_is_better:
        return _latency(spends[verdict.winner], spends[runner_up])
    return _throughput(spends[verdict.winner], spends[runner_up], verdict.metric, verdict.margin)


def _members(v: Verdict) -> Sequence[str]:
    return (v.winner,) if v.winner else v.tie


def _throughput(lead: Spend, other: Spend, metric: str, margin: float) -> str | None:
    if lead.cores_given > 1 and lead.cores_used >= MORE_CORES * other.cores_used:
        return (
            f"{lead.server} put {lead.cores_used:.1f} cores to work against {other.server}'s "
            f"{other.cores_used:.1f}: it spread the work over more than one core."
        )
    if other.utilisation < BUSY and lead.utilisation >= other.utilisation + IDLE_GAP:
        return (
            f"{other.server} left {1 - other.utilisation:.0%} of its CPU idle while {lead.server} kept "
            f"{lead.utilisation:.0%} of its own busy: {other.server} was held up by waiting, not by the cost "
            f"of its work."
        )
    if lead.utilisation < BUSY and other.utilisation < BUSY:
        latency = (
            f", and {other.server}'s median response took {_ms(other.p50_us)} against {_ms(lead.p50_us)}"
            if lead.p50_us and other.p50_us
            else ""
        )
        return (
            f"Neither was short of CPU ({lead.server} {lead.busy}, {other.server} {other.busy}): in a closed "
            f"loop throughput is connections / latency{latency}."
        )
    a, b = lead.cost(metric), other.cost(metric)
    if not (a and b):
        return None
    covers = (b / a - 1) / margin if margin > 0 else 0.0
    tail = ", which accounts for most of the lead" if covers >= MOST_OF_THE_GAP else ""
    opening = "Both kept their CPU busy" if lead.utilisation >= BUSY else "CPU busy"
    return (
        f"{opening} ({lead.server} {lead.busy}, {other.server} {other.busy}); {lead.server} spent "
        f"{_cost(a)} of CPU {_per(metric)} against {other.server}'s {_cost(b)}{tail}."
    )


def _latency(lead: Spend, other: Spend) -> str:
    if other.utilisation >= BUSY:
        return (
            f"{other.server}'s CPU was busy ({other.busy}) at this rate, {lead.server}'s {lead.busy}: "
            f"{other.server}'s requests queued for the CPU."
        )
    return (
        f"Neither was short of CPU ({lead.server} {lead.busy}, {other.server} {other.busy}): {other.server}'s longer tail comes from how it schedules waiting requests, "
        f"not from the cost of its work."
    )


def _tie(members: Sequence[Spend], metric: str) -> str | None:
    costs = [c for s in members if (c := s.cost(metric))]
    if len(costs) < 2:
        return None
    busy = [s.utilisation for s in members]
    figures = (
        f"{_cost_range(min(costs), max(costs))} of CPU {_per(metric)}, their CPU "
        f"{_span([f'{b:.0%}' for b in (min(busy), max(busy))])} busy"
    )
    if max(costs) <= ALIKE * min(costs):
        return f"Alike in what they spent: {figures}."
    if max(busy) < BUSY:
        return f"None was short of CPU ({figures}): what they spend per request did not decide this load."
    return f"They spent {figures}."


def _headroom(members: Sequence[Spend]) -> str | None:
    if not members:
        return None
    used = ", ".join(f"{s.server} {s.busy}" for s in sorted(members, key=lambda s: s.utilisation))
    if all(s.utilisation >= BUSY for s in members):
        return (
            f"The servers were busy too at that ceiling ({used}): the limit may be theirs as much as the generator's."
        )
    return f"At that ceiling the servers were not busy ({used}): they had room the generator could not fill."


def _span(texts: Sequence[str]) -> str:
    return texts[0] if texts[0] == texts[-1] else f"{texts[0]}-{texts[-1]}"


def _per(metric: str) -> str:
    return "per MB" if metric == "mb_per_s" else "per request"


def _cost(seconds: float) -> str:
    return _cost_range(seconds, seconds)


def _cost_range(low_s: float, high_s: float) -> str:
    """'7.2-9.2 µs', '0.66-0.82 ms', or one figure when both ends read the same."""
    scale, unit, digits = (1e3, "ms", 2) if high_s >= 1e-3 else (1e6, "µs", 1)
    low, high = f"{low_s * scale:.{digits}f}", f"{high_s * scale:.{digits}f}"
    return f"{low} {unit}" if low == high else f"{low}-{high} {unit}"


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"
