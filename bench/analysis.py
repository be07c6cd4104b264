"""From a run's cells to the numbers a report shows: figures with their uncertainty, flags, ratios, deltas.

Pure functions over a typed run (bench.results; no plotting, no I/O), so the report,
`compare`, the verdicts and the tests all read a run the same way. Definitions used
throughout:

- a cell's figure is the scenario's metric, with a 95% interval (bench.uncertainty): from
  its repetitions, and within a repetition from batch means over the load generator's
  timeline slices (for a p99, each batch's p99 comes from its slices' merged histograms).
  Too few slices leave the noise unmeasured, and an unmeasured figure separates nothing.
- spread: (max - min) / 2 / median over a cell's repetitions; above the run's threshold the
  cell is flagged "unstable".
- a percentile is shown only when the responses behind it support it (p99 needs 100,
  p99.9 needs 1,000), and always with that count.
- ratios are taken at the level that matters (see basis_level) against a healthy baseline:
  nginx when it ran unflagged in the scenario, else the scenario's median unflagged model.
- a change between two runs is real when it exceeds a floor and stands out from the noise
  between server starts once every cell compared is taken into account (judge_changes: Welch
  p-values adjusted for the false discovery rate); a cell measured once has no noise between
  server starts, so the change is "unmeasured" and claims nothing.
- the network a run measured over (loopback, or an emulated link such as wan) is part of
  what a cell means: two runs over different links are never paired as before/after
  (deltas() refuses); a report puts them side by side instead.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from serverzoo.clients.loadgen import latency

from . import uncertainty
from .plan import REFERENCE
from .results import CellRecord, Load, Run
from .scenarios import METRICS, Scenario
from .uncertainty import Estimate

STALLS = ("read_timeout", "connect_timeout")  # a client left waiting past the scenario's timeout
WRONG = ("bad_status", "bad_length", "short_body", "corrupt_body", "bad_response")  # the answer itself was wrong
BEHIND_RATE = 0.9  # open loop: achieved below this fraction of the target rate = fell behind
DEGRADING = ("errors", "stalled", "wrong-answers", "unclean-stop", "fell-behind")
LATENCY_KEYS = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9), ("p99.99", 99.99))


def metric_value(load: dict[str, Any], metric: str) -> float | None:
    """The metric of a raw load document (the runner's progress line, before a run is read back)."""
    value = (load.get("latency_us") or {}).get("p99") if metric == "p99_us" else load.get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def format_value(metric: str, value: float | None) -> str:
    """The one formatting of a metric value, shared by tables, verdicts and tests."""
    if value is None:
        return "-"
    if metric == "p99_us":
        return f"{value / 1000:,.2f} ms"
    if metric == "mb_per_s":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def metric_unit(metric: str) -> str:
    """The unit a formatted value of the metric is in, where format_value does not say it ('ms' it does)."""
    return {"rps": "req/s", "mb_per_s": "MB/s", "capacity_rps": "req/s"}.get(metric, "")


def supports(responses: int, percentile: float) -> bool:
    """Whether `responses` values can name this percentile: at least one value beyond it (p99 needs 100)."""
    return responses * (1 - percentile / 100) >= 1 - 1e-9


def merge_histograms(encoded: Sequence[str]) -> Any:
    """One HdrHistogram of all of them (exact), or None when there are none or one cannot be decoded."""
    if not encoded:
        return None
    try:
        return latency.merge(encoded)
    except Exception:
        return None


# -- a cell over time -------------------------------------------------------------------

SERIES_MIN_S = 3.0  # a cell's measured window must be this long to be drawn over time
SERIES_MAX_POINTS = 60  # longer timelines are drawn in bins of adjacent slices


@dataclass(frozen=True)
class Series:
    """A cell's measured window over time: at the end of each bin, its throughput and p99."""

    t: list[float]  # seconds from the window's start
    rps: list[float]
    mb_per_s: list[float | None]
    p99_us: list[float | None]  # None: the bin has too few responses to name a p99


def time_series(load: Load, max_points: int = SERIES_MAX_POINTS) -> Series | None:
    """The cell's timeline as a Series, or None when it is shorter than SERIES_MIN_S or its slices
    do not say how long they were."""
    slices = load.timeline
    if not slices or any(s.seconds is None for s in slices):
        return None
    if sum(s.seconds or 0.0 for s in slices) < SERIES_MIN_S:
        return None
    per_bin = -(-len(slices) // max_points)
    out = Series([], [], [], [])
    end = 0.0
    for i in range(0, len(slices), per_bin):
        group = slices[i : i + per_bin]
        seconds = sum(s.seconds or 0.0 for s in group)
        requests = sum(s.requests for s in group)
        end += seconds
        out.t.append(round(end, 3))
        out.rps.append(requests / seconds)
        nbytes = [s.bytes for s in group]
        out.mb_per_s.append(sum(b for b in nbytes if b is not None) / seconds / 1e6 if None not in nbytes else None)
        hist = merge_histograms([s.histogram for s in group if s.histogram]) if supports(requests, 99.0) else None
        out.p99_us.append(float(hist.get_value_at_percentile(99)) if hist is not None else None)
    return out


# -- the network a run went over -----------------------------------------------------

LOOPBACK = "loopback"


class DifferentLinks(ValueError):
    """Two runs measured over different networks: their cells are not before/after of each other."""


def link_name(run: Run) -> str:
    return str(run.link["profile"]["name"]) if run.link else LOOPBACK


def link_identity(run: Run) -> tuple | None:
    """What makes two links the same: the profile's figures (its description aside)."""
    if run.link is None:
        return None
    return tuple(sorted((k, v) for k, v in run.link["profile"].items() if k != "description"))


def same_link(a: Run, b: Run) -> bool:
    return link_identity(a) == link_identity(b)


def link_summary(run: Run) -> str:
    """'40 ms RTT, 100 Mbit/s' for a link ('nothing added' for a bare veth); '' for loopback."""
    from serverzoo.clients.links.profiles import LinkProfile, ProfileError

    if run.link is None:
        return ""
    try:
        return LinkProfile(**run.link["profile"]).summary()
    except (TypeError, ProfileError):
        return "profile unreadable"


def link_text(run: Run) -> str:
    """One phrase for headers: where the run's traffic went."""
    link = run.link
    if link is None:
        return "loopback: server and load generator on this machine's loopback, no link"
    applied = "; ".join(link.get("applied") or []) or "nothing shaped"
    return (
        f"link {link_name(run)} ({link_summary(run)}): server on {link.get('server_addr', '?')} and load "
        f"generator on {link.get('client_addr', '?')}, two network namespaces; applied: {applied}"
    )


# -- one repetition's figure and its noise ---------------------------------------------


def repetition_estimate(load: Load, metric: str) -> Estimate:
    """The metric of one load run, with the interval its timeline slices give (batch means).

    Rates come from the slices' counts and lengths; a p99 from each batch's merged slice
    histograms, and only when every batch holds the 100 responses a p99 needs. Slices that
    do not say how long they were, or lack bytes or histograms, leave the noise unmeasured.
    """
    value = load.metric(metric)
    if value is None:
        raise ValueError(f"no {metric} in this load result")
    if metric == "capacity_rps":  # known to the search's bracket, and no finer
        c = load.capacity
        if c is None or c.held is None or c.failed is None or not c.held < c.failed:
            return uncertainty.single(value)  # no rate failed: only a lower bound
        return uncertainty.bracket(c.held, c.failed)
    slices = [s for s in load.timeline if s.requests or s.seconds]
    if metric == "p99_us":
        if not slices or any(s.histogram is None for s in slices):
            return uncertainty.single(value)
        batch_p99 = []
        for r in uncertainty.batch_ranges(len(slices)):
            hist = merge_histograms([slices[i].histogram for i in r])
            if hist is None or not supports(hist.get_total_count(), 99.0):
                return uncertainty.single(value)
            batch_p99.append(float(hist.get_value_at_percentile(99.0)))
        return uncertainty.from_batches(value, batch_p99)
    if not slices or any(s.seconds is None for s in slices):
        return uncertainty.single(value)
    if metric == "rps":
        amounts = [float(s.requests) for s in slices]
    elif any(s.bytes is None for s in slices):
        return uncertainty.single(value)
    else:
        amounts = [s.bytes / 1e6 for s in slices]
    durations = [s.seconds for s in slices]
    if sum(durations) <= 0:
        return uncertainty.single(value)
    return uncertainty.scaled(uncertainty.batch_means(amounts, durations), value)


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
    p99_uncorrected_us: float | None = None
    # idle connections: the active clients' p99 (median over repetitions) in the run without the idle set and with it
    p99_without_idle_us: float | None = None
    p99_with_idle_us: float | None = None
    loads: list[Load] = field(default_factory=list, repr=False)  # of the measured repetitions
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

    @property
    def client_bound(self) -> bool:
        return "client-bound" in self.flags

    @cached_property
    def estimate(self) -> Estimate | None:
        """The figure with its 95% interval (None when nothing was measured); worked out on first use."""
        if not self.loads:
            return None
        return uncertainty.pool([repetition_estimate(x, self.metric) for x in self.loads])

    @cached_property
    def _latency(self) -> tuple[dict[str, float], int]:
        """Percentiles over every measured response (merged histograms), else the median repetition's; and the
        count of responses they come from. Decoded on first use: the runner's per-cell summary needs none."""
        loads = self.loads
        hist = merge_histograms([x.histogram for x in loads]) if all(x.histogram for x in loads) else None
        if hist is not None and hist.get_total_count():
            values = {k: float(hist.get_value_at_percentile(q)) for k, q in LATENCY_KEYS}
            return values | {"max": float(hist.get_max_value())}, int(hist.get_total_count())
        if not loads:
            return {}, 0
        mid = sorted(loads, key=lambda x: x.latency_us.get("p99", 0.0))[(len(loads) - 1) // 2]
        return dict(mid.latency_us), mid.requests

    @property
    def latency_us(self) -> dict[str, float]:
        return self._latency[0]

    @property
    def latency_count(self) -> int:
        """How many responses the latency percentiles come from."""
        return self._latency[1]

    @property
    def supported(self) -> bool:
        """Whether the figure stands on enough responses: a p99 metric needs 100 (any throughput figure does)."""
        return self.metric != "p99_us" or supports(self.latency_count, 99.0)

    @property
    def p99_us(self) -> float | None:
        """The p99 over all responses, only when there are enough of them for one (100)."""
        return self.latency_us.get("p99") if supports(self.latency_count, 99.0) else None

    def percentile(self, key: str) -> float | None:
        q = dict(LATENCY_KEYS)[key]
        return self.latency_us.get(key) if supports(self.latency_count, q) else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _flag_problems(p: Point, cells: Sequence[CellRecord], error_rate_limit: float) -> None:
    stops = [c for c in cells if c.clean_stop is False]
    if stops:
        p.flags.append("unclean-stop")
        p.reasons += [c.stop_problem for c in stops if c.stop_problem]
    if p.error_rate > error_rate_limit:
        p.flags.append("errors")
    stalls = sum(p.error_classes.get(k, 0) for k in STALLS)
    if stalls:  # however few: a client waited past the timeout (starved behind others, or a stall)
        p.flags.append("stalled")
        timeout = next((c.load.timeout_s for c in cells if c.load and c.load.timeout_s), None)
        p.reasons.append(
            f"{stalls} requests unanswered after {timeout:g} s" if timeout else f"{stalls} requests timed out"
        )
    if p.left_waiting:  # starved within the window: waited far longer than every response that came back
        if "stalled" not in p.flags:
            p.flags.append("stalled")
        p.reasons.append(
            f"{p.left_waiting} requests still waiting when the window closed, more than "
            f"{latency.STALLED_BEYOND_SLOWEST}x as long as the slowest measured response"
        )
    wrong = {k: p.error_classes[k] for k in WRONG if p.error_classes.get(k)}
    if wrong:
        p.flags.append("wrong-answers")
        p.reasons.append("wrong responses: " + ", ".join(f"{k} {n}" for k, n in wrong.items()))


def build_point(cells: Sequence[CellRecord], scenario: Scenario, run: Run) -> Point:
    first = cells[0]
    metric = scenario.metric
    p = Point(first.server, first.scenario, first.level, metric, METRICS[metric][1], repetitions=len(cells))
    loads: list[Load] = []
    measured: list[CellRecord] = []
    for c in cells:
        load = c.load
        if load is not None:  # failed or not, what the generator saw counts toward errors
            p.requests += load.requests
            p.errors += load.error_total
            for name, count in load.errors.items():
                p.error_classes[name] = p.error_classes.get(name, 0) + count
            p.left_waiting += load.left_waiting
        value = load.metric(metric) if c.ok and load is not None else None
        if value is None or not load.requests:
            p.failures.append(c.error or "no successful request")
            continue
        loads.append(load)
        measured.append(c)
        p.values.append(value)
    _flag_problems(p, cells, run.error_rate_limit)
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
    if len(p.values) > 1 and p.spread > run.unstable_spread:
        p.flags.append("unstable")
    p.loads = loads
    p.rps = _median([x.rps or 0.0 for x in loads])
    p.mb_per_s = _median([x.mb_per_s or 0.0 for x in loads])
    unc = [x.latency_uncorrected_us.get("p99") for x in loads]
    p.p99_uncorrected_us = _median(unc) if unc and None not in unc else None
    if scenario.idle:
        pairs = [
            (c.load_without_idle.latency_us["p99"], c.load.latency_us["p99"])
            for c in measured
            if c.load is not None
            and c.load_without_idle is not None
            and c.load_without_idle.requests
            and "p99" in c.load_without_idle.latency_us
            and "p99" in c.load.latency_us
        ]
        if pairs:  # the same repetitions on both sides
            p.p99_without_idle_us = _median([a for a, _ in pairs])
            p.p99_with_idle_us = _median([b for _, b in pairs])
    cpu = [x.server_cpu_s for x in loads if x.server_cpu_s]
    p.cpu_s = _median(cpu)
    # the CPU rate over the request rate; runs from before the rate was stored: CPU over the window's requests
    p.requests_per_cpu_s = _median(
        [1 / c if (c := x.server_cpu_per_request_s) else x.requests / x.server_cpu_s for x in loads if x.server_cpu_s]
    )
    p.peak_rss = _median([x.peak_rss_bytes for x in loads if x.peak_rss_bytes])
    p.rss_at_ready = _median([c.rss_at_ready for c in measured if c.rss_at_ready])
    active = p.level if scenario.mode == "closed" else scenario.connections
    p.open_connections = active + scenario.idle + (scenario.slow_readers.count if scenario.slow_readers else 0)
    if p.peak_rss and p.rss_at_ready and p.open_connections:
        p.rss_per_connection = max(0.0, p.peak_rss - p.rss_at_ready) / p.open_connections
    if scenario.mode == "open":
        p.target_rate = _median([x.target_rate or 0.0 for x in loads])
        p.achieved_rate = _median([x.achieved_rate or 0.0 for x in loads])
        if p.target_rate and p.achieved_rate < BEHIND_RATE * p.target_rate:
            p.flags.append("fell-behind")
            p.reasons.append(f"achieved {p.achieved_rate:.0f} of {p.target_rate:.0f} req/s offered")
    bound = [x for x in loads if x.client_bound]
    if bound:
        p.flags.append("client-bound")
        for x in bound:
            p.reasons += [r for r in x.client_reasons if r not in p.reasons]
    p.histograms = [x.histogram for x in loads if x.histogram]
    return p


# -- a whole run -------------------------------------------------------------------


class RunView:
    """A run's points, indexed for the report, the verdicts and compare."""

    def __init__(self, run: Run, reference: str = REFERENCE) -> None:
        self.run = run
        self.reference = reference
        self.link = link_name(run)
        self.scenarios: dict[str, Scenario] = dict(run.scenarios)
        self.servers: list[str] = list(run.servers)
        groups: dict[tuple[str, str, int], list[CellRecord]] = {}
        for cell in run.cells:
            groups.setdefault((cell.server, cell.scenario, cell.level), []).append(cell)
        self.points: dict[tuple[str, str, int], Point] = {
            key: build_point(cells, self.scenarios[key[1]], run)
            for key, cells in groups.items()
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

    def flagged_in(self, server: str, scenario: str) -> bool:
        return any(p.flags for lv in self.levels(scenario) if (p := self.point(server, scenario, lv)))

    def basis_level(self, scenario: str) -> int | None:
        """The level verdicts and ratios rest on: where models differ, and which they were asked to reach.

        Closed loop: the top concurrency (at c=1 every model serves one connection and they are
        alike). Open loop: the highest offered rate at which at least two models kept up cleanly,
        else the top rate.
        """
        levels = self.levels(scenario)
        if not levels:
            return None
        if self.scenarios[scenario].mode == "closed":
            return levels[-1]
        for lv in reversed(levels):
            clean = [
                p
                for s in self.models
                if (p := self.point(s, scenario, lv)) and p.estimate and not p.failed and not p.degraded
            ]
            if len(clean) >= 2:
                return lv
        return levels[-1]

    def baseline(self, scenario: str, preferred: str | None = None) -> str | None:
        """What ratios are taken against: `preferred` (else nginx) when it ran unflagged in the scenario,
        else the median of the unflagged models at the basis level; None when every model is flagged."""
        level = self.basis_level(scenario)
        if level is None:
            return None
        for name in (preferred, self.reference):
            if name and name in self.servers_in(scenario) and not self.flagged_in(name, scenario):
                p = self.point(name, scenario, level)
                if p is not None and p.median and p.supported:
                    return name
        healthy = [
            (p.median, s)
            for s in self.models
            if not self.flagged_in(s, scenario)
            and (p := self.point(s, scenario, level)) is not None
            and p.median
            and p.supported
        ]
        if not healthy:
            return None
        healthy.sort()
        return healthy[(len(healthy) - 1) // 2][1]

    def ratio(self, server: str, scenario: str, baseline: str | None) -> float | None:
        """How many times better than the baseline at the basis level (None when either has no figure)."""
        level = self.basis_level(scenario)
        if baseline is None or level is None:
            return None
        a, b = self.point(server, scenario, level), self.point(baseline, scenario, level)
        if not a or not b or a.failed or b.failed or not (a.median and b.median and a.supported and b.supported):
            return None
        return a.median / b.median if a.higher_is_better else b.median / a.median

    def flagged_points(self) -> list[Point]:
        return [p for p in self.points.values() if p.flags]


def level_label(scenario: Scenario, level: int) -> str:
    if scenario.mode == "capacity":
        return f"{scenario.goal}, {level} connections"
    return f"c={level}" if scenario.mode == "closed" else f"{level} req/s offered"


def ratio_text(ratio: float | None) -> str:
    """pyperf's wording: '1.22x faster', '1.22x slower', 'same'."""
    if ratio is None:
        return "n/a"
    if abs(ratio - 1) < 0.005:
        return "same"
    return f"{ratio:.2f}x faster" if ratio > 1 else f"{1 / ratio:.2f}x slower"


# -- two runs ------------------------------------------------------------------------

REGRESSION, IMPROVEMENT, WITHIN_NOISE, UNMEASURED = "regression", "improvement", "within noise", "unmeasured"


@dataclass(frozen=True)
class Delta:
    server: str
    scenario: str
    level: int
    metric: str
    before: Estimate
    after: Estimate
    change: float  # fraction; positive = better on this metric
    verdict: str  # REGRESSION, IMPROVEMENT, WITHIN_NOISE or UNMEASURED
    why: str  # what the verdict rests on, in a few words
    adjusted_p: float | None = None  # the change's p-value adjusted for every cell compared (None: unmeasured)

    @property
    def regression(self) -> bool:
        return self.verdict == REGRESSION

    @property
    def improvement(self) -> bool:
        return self.verdict == IMPROVEMENT

    @property
    def noise(self) -> float | None:
        """The relative half-width a change had to exceed (None when unmeasured)."""
        hw = uncertainty.combined_half_width(self.before, self.after)
        return hw / abs(self.before.value) if self.before.value and hw != float("inf") else None


def _between_starts(e: Estimate) -> bool:
    """Whether an estimate saw the noise between server starts: two or more repetitions went into it."""
    return e.method in ("repetitions", "pooled") and e.measured


FALSE_DISCOVERY_RATE = 0.05  # of the changes a comparison reports, the share allowed to be luck


def judge_changes(
    cells: Sequence[tuple[Estimate, Estimate, bool]], floor: float
) -> list[tuple[str, str, float | None]]:
    """(verdict, why, adjusted p-value) for each cell (before, after, higher is better) of two runs, judged together.

    Two runs are two server starts, so only noise measured across server starts (repetitions)
    can tell a change from luck; a timeline's batches within one repetition cannot. Each cell's
    change gets Welch's two-sided p-value, and the p-values of all the cells so measured are
    adjusted together (Benjamini-Hochberg): one test at 5% per cell would call a few of 30 or 70
    unchanged cells changed by luck alone, and fail a regression gate on two runs of the same
    code. With the false discovery rate held at 5%, two runs of the same code fail the gate in
    at most 5% of comparisons, however many cells they share; a real change shows up as long as
    it stands out from the noise by more than the number of cells demands. A change must also
    exceed the floor, so a tiny but steady change is not called a regression.
    """
    tested = [i for i, (a, b, _) in enumerate(cells) if _between_starts(a) and _between_starts(b)]
    p_values = [uncertainty.difference_p_value(cells[i][0], cells[i][1]) for i in tested]
    adjusted = dict(zip(tested, _benjamini_hochberg(p_values)))
    family = len(tested)
    out: list[tuple[str, str, float | None]] = []
    for i, (before, after, higher_is_better) in enumerate(cells):
        q = adjusted.get(i)
        if q is None:
            out.append((UNMEASURED, "one repetition: the noise between server starts was not measured", None))
            continue
        change = uncertainty.lead(after, before, higher_is_better)
        p = p_values[tested.index(i)]
        beyond_alone = p < 1 - uncertainty.CONFIDENCE
        if abs(change) <= floor:
            out.append((WITHIN_NOISE, f"within the {floor:.0%} floor", q))
        elif q <= FALSE_DISCOVERY_RATE:
            why = (
                f"beyond the noise (p = {p:.2g}; {q:.2g} adjusted for {family} cells)"
                if family > 1
                else f"beyond the 95% interval of the difference (p = {p:.2g})"
            )
            out.append((REGRESSION if change < 0 else IMPROVEMENT, why, q))
        elif beyond_alone:
            out.append(
                (
                    WITHIN_NOISE,
                    f"alone beyond its 95% interval (p = {p:.2g}), not among {family} cells (adjusted {q:.2g})",
                    q,
                )
            )
        else:
            out.append((WITHIN_NOISE, "inside the cells' 95% intervals", q))
    return out


def _benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (scipy's false_discovery_control); none for no tests."""
    if not p_values:
        return []
    from scipy.stats import false_discovery_control  # slow to import; only comparisons need it

    return [float(q) for q in false_discovery_control(list(p_values), method="bh")]


def judge_change(before: Estimate, after: Estimate, higher_is_better: bool, floor: float) -> tuple[str, str]:
    """(verdict, why) for one cell measured in two runs, judged alone (a family of one)."""
    verdict, why, _ = judge_changes([(before, after, higher_is_better)], floor)[0]
    return verdict, why


def check_same_link(before: RunView, after: RunView) -> None:
    """DifferentLinks (one line) unless both runs went over the same network."""
    if not same_link(before.run, after.run):
        a, b = link_name(before.run), link_name(after.run)
        if a == b:  # one name, two profiles (an edited links table)
            a, b = f"{a} ({link_summary(before.run)})", f"{b} ({link_summary(after.run)})"
        raise DifferentLinks(f"{before.run.run_id} ran over {a} and {after.run.run_id} over {b}")


def deltas(before: RunView, after: RunView, floor: float = 0.05) -> list[Delta]:
    """Cell-by-cell changes for what both runs measured (failed cells are left out).
    DifferentLinks if the runs went over different networks: a link's effect is no regression."""
    check_same_link(before, after)
    pairs = []
    for key, b in after.points.items():
        a = before.points.get(key)
        if a is None or a.failed or b.failed or a.estimate is None or b.estimate is None or a.metric != b.metric:
            continue
        pairs.append((key, a, b))
    judged = judge_changes([(a.estimate, b.estimate, a.higher_is_better) for _, a, b in pairs], floor)
    out = [
        Delta(
            key[0],
            key[1],
            key[2],
            a.metric,
            a.estimate,
            b.estimate,
            uncertainty.lead(b.estimate, a.estimate, a.higher_is_better),
            verdict,
            why,
            q,
        )
        for (key, a, b), (verdict, why, q) in zip(pairs, judged)
    ]
    scen_order = {s: i for i, s in enumerate(after.scenarios)}
    serv_order = {s: i for i, s in enumerate(after.servers)}
    out.sort(key=lambda d: (scen_order.get(d.scenario, 99), serv_order.get(d.server, 99), d.level))
    return out


def newly_failed(before: RunView, after: RunView) -> list[tuple[str, str, int]]:
    """Cells that measured in the earlier run and fail in the later one (a regression of their own)."""
    check_same_link(before, after)
    return sorted(
        key for key, b in after.points.items() if b.failed and key in before.points and not before.points[key].failed
    )


def summarize(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-cell medians, spreads and flags, as stored beside the cells in the run file (after every cell, so
    nothing here decodes a histogram; the intervals are in the verdicts' rankings)."""
    view = RunView(Run.from_doc(doc, check=False))
    out = []
    for (server, scenario, level), p in sorted(view.points.items()):
        out.append(
            {
                "server": server,
                "scenario": scenario,
                "level": level,
                "metric": p.metric,
                "median": p.median,
                "min": p.lo,
                "max": p.hi,
                "spread": round(p.spread, 4),
                "n": len(p.values),
                "repetitions": p.repetitions,
                "flags": p.flags,
                "reasons": sorted(set(p.reasons)),
                "error_rate": round(p.error_rate, 6),
            }
        )
    return out
