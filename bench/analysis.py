"""From a run's cells to the numbers a report shows: medians, spreads, flags, ratios, winners.

Pure functions over the run dict (no plotting, no I/O), so the report, `compare` and the
tests all read a run the same way. Definitions used throughout:

- spread: (max - min) / 2 / median over a cell's repetitions (0 with one repetition,
  which the report marks as "n=1": no spread was measured).
- a ratio to a baseline model is taken per level and combined per scenario with a
  geometric mean; "faster" means better on the scenario's metric (for a latency
  metric, lower).
- a change between two runs is beyond noise when the two cells' ranges (median +-
  spread) do not overlap and the change exceeds the floor threshold.
- the network a run measured over (loopback, or an emulated link such as wan) is part of
  what a cell means: two runs over different links are never paired as before/after
  (deltas() refuses); a report puts them side by side instead, rows labelled
  "iterative @loopback", "iterative @wan".
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable

from .scenarios import METRICS

BASELINE = "iterative"
STALLS = ("read_timeout", "connect_timeout")  # a client left waiting past the scenario's timeout
WRONG = ("bad_status", "bad_length", "short_body", "corrupt_body", "bad_response")  # the answer itself was wrong
BEHIND_RATE = 0.9  # open loop: achieved below this fraction of the target rate = fell behind
COLLAPSE = 0.5  # a model whose metric at its top level is below this fraction of its best level collapsed


# -- reading one load document --------------------------------------------------------

def metric_value(load: dict[str, Any], metric: str) -> float | None:
    if metric == "rps":
        return _num(load.get("rps"))
    if metric == "mb_per_s":
        return _num(load.get("mb_per_s"))
    if metric == "p99_us":
        return _num((load.get("latency_us") or {}).get("p99"))
    raise KeyError(metric)


def error_total(load: dict[str, Any]) -> int:
    errors = load.get("errors") or {}
    return int(errors.get("total", 0) or 0)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


# -- the network a run went over -----------------------------------------------------

LOOPBACK = "loopback"


class DifferentLinks(ValueError):
    """Two runs measured over different networks: their cells are not before/after of each other."""


def run_link(run: dict[str, Any]) -> dict[str, Any] | None:
    """The run's link record (profile, what was applied), or None for loopback (and runs older than links)."""
    return (run.get("config") or {}).get("link") or None


def link_name(run: dict[str, Any]) -> str:
    link = run_link(run)
    return str(link["profile"]["name"]) if link else LOOPBACK


def link_identity(run: dict[str, Any]) -> tuple | None:
    """What makes two links the same: the profile's figures (its description aside)."""
    link = run_link(run)
    if link is None:
        return None
    return tuple(sorted((k, v) for k, v in link["profile"].items() if k != "description"))


def same_link(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return link_identity(a) == link_identity(b)


def link_summary(run: dict[str, Any]) -> str:
    """'40 ms RTT, 100 Mbit/s' for a link ('nothing added' for a bare veth); '' for loopback."""
    from serverzoo.clients.links.profiles import LinkProfile, ProfileError

    link = run_link(run)
    if link is None:
        return ""
    try:
        return LinkProfile(**link["profile"]).summary()
    except (TypeError, ProfileError):
        return "profile unreadable"


def link_text(run: dict[str, Any]) -> str:
    """One phrase for headers: where the run's traffic went."""
    link = run_link(run)
    if link is None:
        return "loopback: server and load generator on this machine's loopback, no link"
    applied = "; ".join(link.get("applied") or []) or "nothing shaped"
    return (f"link {link_name(run)} ({link_summary(run)}): server on {link.get('server_addr', '?')} and load "
            f"generator on {link.get('client_addr', '?')}, two network namespaces; applied: {applied}")


# -- one cell across its repetitions ------------------------------------------------

@dataclass
class Point:
    """One server x scenario x level, over its repetitions."""

    server: str
    scenario: str
    level: int
    metric: str
    higher_is_better: bool
    values: list[float] = field(default_factory=list)  # the metric, one per measured repetition
    repetitions: int = 0
    failures: list[str] = field(default_factory=list)
    median: float | None = None
    lo: float | None = None
    hi: float | None = None
    spread: float = 0.0
    rps: float | None = None
    mb_per_s: float | None = None
    p99_us: float | None = None
    p99_uncorrected_us: float | None = None
    latency_us: dict[str, float] = field(default_factory=dict)  # of the median repetition
    requests: int = 0
    errors: int = 0
    error_classes: dict[str, int] = field(default_factory=dict)
    left_waiting: int = 0  # requests still owed when a window closed, older than its slowest response
    cpu_s: float | None = None
    requests_per_cpu_s: float | None = None
    peak_rss: float | None = None
    rss_at_ready: float | None = None
    rss_per_connection: float | None = None
    open_connections: int = 0
    target_rate: float | None = None
    achieved_rate: float | None = None
    histograms: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # client-bound reasons, failures, unclean stops

    @property
    def failed(self) -> bool:
        return "failed" in self.flags

    @property
    def error_rate(self) -> float:
        total = self.requests + self.errors
        return self.errors / total if total else 0.0

    @property
    def degraded(self) -> bool:
        return any(f in self.flags for f in DEGRADING)


DEGRADING = ("errors", "stalled", "wrong-answers", "unclean-stop", "fell-behind")


def _median_index(values: list[float]) -> int:
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(order) - 1) // 2]


def build_point(cells: list[dict[str, Any]], scenario: dict[str, Any], run_settings: dict[str, Any]) -> Point:
    first = cells[0]
    metric = scenario["metric"]
    p = Point(first["server"], first["scenario"], first["level"], metric, METRICS[metric][1],
              repetitions=len(cells))
    loads, measured = [], []
    for c in cells:
        load = c.get("load")
        if load:  # failed or not, what the generator saw counts toward errors
            p.requests += int(load.get("requests", 0) or 0)
            p.errors += error_total(load)
            for name, count in (load.get("errors") or {}).items():
                if name != "total" and isinstance(count, int) and count:
                    p.error_classes[name] = p.error_classes.get(name, 0) + count
            p.left_waiting += int((load.get("unfinished") or {}).get("longer_than_max", 0) or 0)
        value = metric_value(load, metric) if c.get("status") == "ok" and load else None
        if value is None or not load.get("requests"):
            p.failures.append(c.get("error") or "no successful request")
            continue
        loads.append(load)
        measured.append(c)
        p.values.append(value)
    stops = [c.get("server_process") or {} for c in cells]
    if any(s.get("clean_stop") is False for s in stops):
        p.flags.append("unclean-stop")
        p.reasons += [s.get("problem", "") for s in stops if s.get("clean_stop") is False and s.get("problem")]
    if p.error_rate > run_settings.get("error_rate_limit", 0.01):
        p.flags.append("errors")
    stalls = sum(p.error_classes.get(k, 0) for k in STALLS)
    if stalls:  # however few: a client waited past the timeout (starved behind others, or a stall)
        p.flags.append("stalled")
        timeout = next((c["load"]["options"].get("timeout_s") for c in cells
                        if c.get("load") and c["load"].get("options")), None)
        p.reasons.append(f"{stalls} requests unanswered after {timeout:g} s" if timeout else
                         f"{stalls} requests timed out")
    if p.left_waiting:  # starved within the window: waited longer than every response that came back
        if "stalled" not in p.flags:
            p.flags.append("stalled")
        p.reasons.append(f"{p.left_waiting} requests still waiting when the window closed, longer than the "
                         f"slowest measured response")
    wrong = {k: p.error_classes[k] for k in WRONG if p.error_classes.get(k)}
    if wrong:
        p.flags.append("wrong-answers")
        p.reasons.append("wrong responses: " + ", ".join(f"{k} {n}" for k, n in wrong.items()))
    if not p.values:
        p.flags.append("failed")
        p.reasons += p.failures
        return p
    if p.failures:
        p.flags.append("failed")  # some repetitions failed: the median would hide it
        p.reasons += p.failures
    p.median = statistics.median(p.values)
    p.lo, p.hi = min(p.values), max(p.values)
    p.spread = (p.hi - p.lo) / 2 / p.median if p.median else 0.0
    if len(p.values) > 1 and p.spread > run_settings.get("unstable_spread", 0.10):
        p.flags.append("unstable")
    mid = loads[_median_index(p.values)]
    p.latency_us = {k: float(v) for k, v in (mid.get("latency_us") or {}).items() if _num(v) is not None}
    p.rps = statistics.median(_num(x.get("rps")) or 0.0 for x in loads)
    p.mb_per_s = statistics.median(_num(x.get("mb_per_s")) or 0.0 for x in loads)
    p.p99_us = statistics.median(_num((x.get("latency_us") or {}).get("p99")) or 0.0 for x in loads)
    unc = [_num((x.get("latency_uncorrected_us") or {}).get("p99")) for x in loads if x.get("latency_uncorrected_us")]
    p.p99_uncorrected_us = statistics.median(unc) if unc and None not in unc else None
    efficiency, rss, rss_ready, cpu = [], [], [], []
    for c, x in zip(measured, loads):
        server = x.get("server") or {}
        if _num(server.get("cpu_s")):
            cpu.append(server["cpu_s"])
            efficiency.append(int(x.get("requests", 0)) / server["cpu_s"])
        if _num(server.get("peak_rss_bytes")):
            rss.append(server["peak_rss_bytes"])
        ready = (c.get("server_process") or {}).get("rss_at_ready_bytes")
        if _num(ready):
            rss_ready.append(ready)
    p.cpu_s = statistics.median(cpu) if cpu else None
    p.requests_per_cpu_s = statistics.median(efficiency) if efficiency else None
    p.peak_rss = statistics.median(rss) if rss else None
    p.rss_at_ready = statistics.median(rss_ready) if rss_ready else None
    active = p.level if scenario["mode"] == "closed" else scenario["connections"]
    slow = scenario.get("slow_readers") or {}
    p.open_connections = active + scenario.get("idle", 0) + slow.get("count", 0)
    if p.peak_rss and p.rss_at_ready and p.open_connections:
        p.rss_per_connection = max(0.0, p.peak_rss - p.rss_at_ready) / p.open_connections
    if scenario["mode"] == "open":
        p.target_rate = statistics.median(_num(x.get("target_rate")) or 0.0 for x in loads)
        p.achieved_rate = statistics.median(_num(x.get("achieved_rate")) or 0.0 for x in loads)
        if p.target_rate and p.achieved_rate < BEHIND_RATE * p.target_rate:
            p.flags.append("fell-behind")
            p.reasons.append(f"achieved {p.achieved_rate:.0f} of {p.target_rate:.0f} req/s offered")
    bound = [x for x in loads if (x.get("client") or {}).get("client_bound")]
    if bound:
        p.flags.append("client-bound")
        for x in bound:
            p.reasons += [r for r in (x["client"].get("reasons") or []) if r not in p.reasons]
    p.histograms = [x["histogram"] for x in loads if isinstance(x.get("histogram"), str)]
    return p


# -- a whole run -------------------------------------------------------------------

@dataclass
class Verdict:
    """Per scenario: who won, who came second, and who failed or degraded, with why."""

    scenario: str
    ranking: list[tuple[str, float]]  # clean models, best first, with their geometric-mean score
    failed: dict[str, list[str]]
    degraded: dict[str, list[str]]
    client_bound: list[str]  # among the ranked: the generator was the limit somewhere

    @property
    def winner(self) -> tuple[str, float] | None:
        return self.ranking[0] if self.ranking else None

    @property
    def runner_up(self) -> tuple[str, float] | None:
        return self.ranking[1] if len(self.ranking) > 1 else None


class RunView:
    """A run's points, indexed for the report."""

    def __init__(self, run: dict[str, Any], reference: str = "nginx") -> None:
        self.run = run
        self.reference = reference
        self.config = run["config"]
        self.link = link_name(run)
        self.scenarios: dict[str, dict[str, Any]] = self.config["scenarios"]
        self.servers: list[str] = list(self.config["servers"])
        groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for cell in run["cells"]:
            groups.setdefault((cell["server"], cell["scenario"], cell["level"]), []).append(cell)
        self.points: dict[tuple[str, str, int], Point] = {
            key: build_point(cells, self.scenarios[key[1]], self.config["run"]) for key, cells in groups.items()
            if key[1] in self.scenarios
        }

    @property
    def models(self) -> list[str]:
        """Servers under test, the yardstick left out."""
        return [s for s in self.servers if s != self.reference]

    def levels(self, scenario: str) -> list[int]:
        return sorted({k[2] for k in self.points if k[1] == scenario})

    def point(self, server: str, scenario: str, level: int) -> Point | None:
        return self.points.get((server, scenario, level))

    def servers_in(self, scenario: str) -> list[str]:
        present = {k[0] for k in self.points if k[1] == scenario}
        return [s for s in self.servers if s in present]

    def score(self, server: str, scenario: str) -> float | None:
        """Geometric mean over the scenario's levels of the median metric (None if any level failed)."""
        pts = [self.point(server, scenario, lv) for lv in self.levels(scenario)]
        if not pts or any(p is None or p.failed or not p.median for p in pts):
            return None
        return geomean(p.median for p in pts)

    def ratio(self, server: str, scenario: str, baseline: str = BASELINE) -> float | None:
        """How many times better than the baseline (geometric mean over common levels)."""
        ratios = []
        higher = METRICS[self.scenarios[scenario]["metric"]][1]
        for lv in self.levels(scenario):
            a, b = self.point(server, scenario, lv), self.point(baseline, scenario, lv)
            if not a or not b or a.failed or b.failed or not a.median or not b.median:
                continue
            ratios.append(a.median / b.median if higher else b.median / a.median)
        return geomean(ratios)

    def overall_ratio(self, server: str, baseline: str = BASELINE) -> float | None:
        return geomean(self.ratio(server, sc, baseline) for sc in self.scenarios)

    def verdict(self, scenario: str) -> Verdict:
        failed: dict[str, list[str]] = {}
        degraded: dict[str, list[str]] = {}
        scored = []
        client_bound = []
        higher = METRICS[self.scenarios[scenario]["metric"]][1]
        levels = self.levels(scenario)
        for server in self.servers_in(scenario):
            if server == self.reference:
                continue
            pts = [self.point(server, scenario, lv) for lv in levels]
            if any(p is None or p.failed for p in pts):
                failed[server] = sorted({r for p in pts if p for r in p.failures} or {"no successful measurement"})
                continue
            why = []
            for p in pts:
                lv = level_label(self.scenarios[scenario], p.level)
                if "errors" in p.flags:
                    why.append(f"{p.error_rate:.1%} errors at {lv}")
                if "stalled" in p.flags:
                    stalls = sum(p.error_classes.get(k, 0) for k in STALLS) + p.left_waiting
                    why.append(f"{stalls} requests left unanswered at {lv}")
                if "wrong-answers" in p.flags:
                    why.append(f"wrong responses at {lv}")
                if "unclean-stop" in p.flags:
                    why.append(f"did not stop cleanly at {lv}")
                if "fell-behind" in p.flags:
                    why.append(f"fell behind at {lv} ({p.achieved_rate:.0f} req/s achieved)")
            if higher and len(pts) > 1:
                best = max(p.median for p in pts)
                top = pts[-1]
                if best and top.median < COLLAPSE * best:
                    why.append(f"collapsed under load: {top.median / best:.0%} of its best at "
                               f"{level_label(self.scenarios[scenario], top.level)}")
            if why:
                degraded[server] = why
                continue
            score = self.score(server, scenario)
            if score is not None:
                scored.append((server, score))
                if any("client-bound" in p.flags for p in pts):
                    client_bound.append(server)
        scored.sort(key=lambda t: t[1], reverse=higher)
        return Verdict(scenario, scored, failed, degraded, client_bound)

    def flagged_points(self) -> list[Point]:
        return [p for p in self.points.values() if p.flags]


def level_label(scenario: dict[str, Any], level: int) -> str:
    return f"c={level}" if scenario["mode"] == "closed" else f"{level} req/s offered"


def ratio_text(ratio: float | None) -> str:
    """pyperf's wording: '1.22x faster', '1.22x slower', 'same'."""
    if ratio is None:
        return "n/a"
    if abs(ratio - 1) < 0.005:
        return "same"
    return f"{ratio:.2f}x faster" if ratio > 1 else f"{1 / ratio:.2f}x slower"


# -- two runs ------------------------------------------------------------------------

@dataclass
class Delta:
    server: str
    scenario: str
    level: int
    metric: str
    before: float
    after: float
    change: float  # fraction; positive = better on this metric
    noise: float  # the fraction the change must exceed to count
    beyond_noise: bool

    @property
    def regression(self) -> bool:
        return self.beyond_noise and self.change < 0

    @property
    def improvement(self) -> bool:
        return self.beyond_noise and self.change > 0


def check_same_link(before: RunView, after: RunView) -> None:
    """DifferentLinks (one line) unless both runs went over the same network."""
    if not same_link(before.run, after.run):
        a, b = link_name(before.run), link_name(after.run)
        if a == b:  # one name, two profiles (an edited links table)
            a, b = f"{a} ({link_summary(before.run)})", f"{b} ({link_summary(after.run)})"
        raise DifferentLinks(f"{before.run['run_id']} ran over {a} and {after.run['run_id']} over {b}")


def deltas(before: RunView, after: RunView, floor: float = 0.05) -> list[Delta]:
    """Cell-by-cell changes for what both runs measured (failed cells are left out).
    DifferentLinks if the runs went over different networks: a link's effect is no regression."""
    check_same_link(before, after)
    out = []
    for key, b in after.points.items():
        a = before.points.get(key)
        if a is None or a.failed or b.failed or not a.median or not b.median:
            continue
        if a.metric != b.metric:
            continue
        change = (b.median / a.median - 1) if a.higher_is_better else (a.median / b.median - 1)
        # ranges [median - spread, median + spread] that overlap are within each run's own noise
        noise = max(floor, a.spread + b.spread)
        out.append(Delta(key[0], key[1], key[2], a.metric, a.median, b.median, change, noise,
                         abs(change) > noise))
    scen_order = {s: i for i, s in enumerate(after.scenarios)}
    serv_order = {s: i for i, s in enumerate(after.servers)}
    out.sort(key=lambda d: (scen_order.get(d.scenario, 99), serv_order.get(d.server, 99), d.level))
    return out


def newly_failed(before: RunView, after: RunView) -> list[tuple[str, str, int]]:
    """Cells that measured in the earlier run and fail in the later one (a regression of their own)."""
    check_same_link(before, after)
    return sorted(key for key, b in after.points.items()
                  if b.failed and key in before.points and not before.points[key].failed)


def summarize(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-cell medians, spreads and flags, as stored beside the cells in the run file."""
    view = RunView(run)
    out = []
    for (server, scenario, level), p in sorted(view.points.items()):
        out.append({"server": server, "scenario": scenario, "level": level, "metric": p.metric,
                    "median": p.median, "min": p.lo, "max": p.hi, "spread": round(p.spread, 4),
                    "n": len(p.values), "repetitions": p.repetitions, "flags": p.flags,
                    "reasons": sorted(set(p.reasons)), "error_rate": round(p.error_rate, 6)})
    return out
