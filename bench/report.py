"""`serverzoo report`: one or more runs -> a self-contained HTML page and a Markdown summary.

Everything shown is computed from the runs' cells by bench.analysis; the prose around
the numbers (who won, who failed and why) is assembled from that data, never written
in advance. With several runs, the last one is reported in full and each earlier one
is compared with it in a delta table, when both went over the same network; a run over
another link (loopback and wan, say) is put side by side with it instead, each row
labelled with its link ("iterative @loopback", "iterative @wan"), and nothing counts as a
regression there. Results of `serverzoo udp compare`, given among the runs in any order,
become its "TCP vs UDP" section (bench.tcp_vs_udp); a report of those alone is that section.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from typing import Any

import jinja2

from serverzoo.machine import machine_line

from . import agreement, explanations
from . import verdicts as verdict_rules
from .analysis import (
    Delta,
    Point,
    RunView,
    deltas,
    format_value,
    level_label,
    link_name,
    link_summary,
    link_text,
    metric_unit,
    ratio_text,
    same_link,
)
from .cards import ModelCard, model_cards
from .results import Run
from .scenarios import METRICS, Scenario
from .store import SCHEMA, read_result
from .tcp_vs_udp import TcpVsUdp, build_section
from .verdicts import Verdict

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def format_interval(p: Point) -> str:
    """'±2.1% (3 reps)', '±0.8% (5 batches)', or 'unmeasured': the 95% half-width and what it rests on."""
    e = p.estimate
    if e is None:
        return "-"
    if not e.measured:
        return "unmeasured"
    source = {"repetitions": f"{e.n} reps", "pooled": f"{e.n} reps", "batch-means": f"{e.n} batches"}.get(
        e.method, e.method
    )
    return f"±{e.relative_half_width * 100:.1f}% ({source})"


def format_percentile(p: Point, key: str = "p99") -> str:
    """'1.23 ms (n=5,432)'; '- (n=42)' when the responses are too few for that percentile."""
    value = p.percentile(key)
    count = f"n={p.latency_count:,}"
    return f"{format_value('p99_us', value)} ({count})" if value is not None else f"- ({count})"


def format_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f:
            return f"{n / f:,.1f} {unit}"
    return f"{n:,.0f} B"


@dataclass
class ScenarioSection:
    name: str
    info: Scenario
    metric_label: str
    levels: list[int]
    level_labels: list[str]
    rows: list[dict[str, Any]]
    verdict: Verdict | None
    baseline: str | None  # what the "vs" column is against (never a server flagged here)
    basis_label: str  # the level verdicts and ratios rest on
    placement: str  # where server and generator ran
    chart: str | None = None
    spectrum: str | None = None
    spectrum_level: str = ""
    over_time: list[tuple[str, str]] = field(default_factory=list)  # (level label, chart) of cells long enough
    idle_rows: list[dict[str, Any]] = field(default_factory=list)  # idle connections: active p99 without and with them


@dataclass
class DeltaTable:
    before: str
    after: str
    rows: list[Delta]
    regressions: int
    improvements: int
    unmeasured: int
    floor: float
    verdicts: list[agreement.Agreement] = field(default_factory=list)  # do the two runs pick the same models?

    @property
    def verdict_summary(self) -> str:
        return agreement.summary(self.verdicts)


@dataclass
class SideBySide:
    """Two runs over different networks, per scenario: a row per server and link, the later row
    saying how it compares with the earlier (a link's effect, not a regression)."""

    before: str
    after: str
    before_link: str
    after_link: str
    before_text: str
    after_text: str
    sections: list[dict[str, Any]]


@dataclass
class Report:
    run: Run
    view: RunView
    caption: str
    sections: list[ScenarioSection]
    summary_rows: list[dict[str, Any]]
    verdicts: list[Verdict]
    cards: list[ModelCard]
    flagged: list[Point]
    charts: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(("heatmap", "efficiency", "memory", "errors")))
    delta_tables: list[DeltaTable] = field(default_factory=list)
    side_by_side: list[SideBySide] = field(default_factory=list)
    memory_scenario: str | None = None
    network: str = ""  # where the reported run's traffic went (link_text)
    udp: list[TcpVsUdp] = field(default_factory=list)  # the "TCP vs UDP" section, one part per udp-compare result
    why: dict[str, str] = field(default_factory=dict)  # per scenario: what the servers spent that explains its verdict

    @property
    def summary(self) -> list[str]:
        """What to pick for what, and how sure, one line per scenario, from the verdicts."""
        return [
            summary_line(v, self.view.scenarios[v.scenario].title)
            + (f" {why}" if (why := self.why.get(v.scenario)) else "")
            for v in self.verdicts
            if v.scenario in self.view.scenarios
        ]

    @property
    def unseparated(self) -> list[Verdict]:
        """Verdicts whose top two figures include one with unmeasured noise: the run was too short to tell."""
        return [v for v in self.verdicts if any(not r.estimate.measured for r in v.ranking[:2])]


@dataclass
class UdpReport:
    """A report made of udp-compare results alone: the "TCP vs UDP" section and nothing else."""

    udp: list[TcpVsUdp]
    run: None = None


def summary_line(v: Verdict, title: str) -> str:
    """'Small files, keep-alive: pick select, 12.3% ahead of asyncio at c=32 (95% intervals from ...).'"""
    at = f" at {v.level_label}" if v.level_label else ""
    sure = f" ({v.confidence})"
    if v.kind == "none":
        return f"{title}: no model served it cleanly{at}."
    if v.winner and v.margin is None:
        return f"{title}: {v.winner}, the only model that served it cleanly{at}."
    if v.winner:
        lead = "at least " if v.kind == "generator-limited" else ""
        runner_up = next((r.server for r in v.ranking if r.server != v.winner), "the rest")
        return f"{title}: pick {v.winner}, {lead}{v.margin:.1%} ahead of {runner_up}{at}{sure}."
    if v.kind == "generator-limited":
        return (
            f"{title}: the load generator was the limit; {', '.join(v.tie)} all reached "
            f"{format_value(v.metric, v.ceiling)} {metric_unit(v.metric)}{at}: any of them, this run cannot rank "
            f"them{sure}."
        )
    within = f"within {v.margin:.0%}" if v.margin is not None else "noise unmeasured"
    return f"{title}: any of {', '.join(v.tie)} ({within}{at}): this run cannot separate them{sure}."


def caption_for(run: Run) -> str:
    prefix = "FIXTURE (synthetic numbers, not a measurement) | " if run.fixture else ""
    return (
        f"{prefix}run {run.run_id} over {link_name(run)} | {run.machine.get('hostname', '?')}: "
        f"{machine_line(run.machine)}"
    )


def placement(view: RunView, scenario: str) -> str:
    """Where the scenario's server and load generator ran, as its cells recorded it."""
    cells = [c for c in view.run.cells if c.scenario == scenario and (c.server_cpus or c.client_cpus)]
    if not cells:
        return "not recorded"
    servers = sorted({c.server_cpus for c in cells})
    clients = sorted({c.client_cpus for c in cells})

    def cpus(sets: list[tuple[int, ...]]) -> str:
        return " or ".join(",".join(map(str, s)) or "any" for s in sets)

    where = f"server on CPU {cpus(servers)}, load generator on CPU {cpus(clients)}"
    words = sorted({c.placement for c in cells if c.placement})
    text = f"{'; '.join(words)} ({where})" if words else where
    hosts = hosts_text(view, scenario)
    return f"{text}; {hosts}" if hosts else text


def hosts_text(view: RunView, scenario: str) -> str:
    """bench --cluster: which host ran the server and which the load generators, per server of the
    scenario when they differ ('' for a run on one machine)."""
    by_hosts: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for c in view.run.cells:
        if c.scenario == scenario and c.server_host:
            names = by_hosts.setdefault((c.server_host, c.client_hosts), [])
            if c.server not in names:
                names.append(c.server)
    parts = []
    for (server, clients), names in by_hosts.items():
        where = (
            f"server on host {server}, load generators on host{'s' if len(clients) > 1 else ''} "
            f"{', '.join(clients) or 'unrecorded'}"
        )
        parts.append(where if len(by_hosts) == 1 else f"{where} ({', '.join(names)})")
    return "; ".join(parts)


def _side_cell(p: Point | None, metric: str, against: Point | None = None) -> dict[str, Any]:
    if p is None:
        return {"value": "-", "vs": "", "flags": []}
    if p.failed or p.median is None:
        return {"value": "failed", "vs": "", "flags": []}
    vs = ""
    if against is not None and not against.failed and against.median and p.median:
        higher = METRICS[metric][1]
        vs = ratio_text(p.median / against.median if higher else against.median / p.median)
    return {"value": format_value(metric, p.median), "vs": vs, "flags": p.flags}


def side_by_side(before: RunView, after: RunView) -> SideBySide:
    """Rows 'server @link' for two runs over different networks, scenario by scenario."""
    a, b = link_name(before.run), link_name(after.run)
    if a == b:  # one name, two profiles
        a, b = f"{a} ({link_summary(before.run)})", f"{b} ({link_summary(after.run)})"
    sections = []
    servers = after.servers + [s for s in before.servers if s not in after.servers]
    for name, info in after.scenarios.items():
        other = before.scenarios.get(name)
        if other is None or other.metric != info.metric:
            continue
        levels = sorted(set(before.levels(name)) | set(after.levels(name)))
        rows = []
        for server in servers:
            pa = [before.point(server, name, lv) for lv in levels]
            pb = [after.point(server, name, lv) for lv in levels]
            if not any(pa + pb):
                continue
            ref = server == after.reference
            rows.append(
                {"label": f"{server} @{a}", "reference": ref, "cells": [_side_cell(p, info.metric) for p in pa]}
            )
            rows.append(
                {
                    "label": f"{server} @{b}",
                    "reference": ref,
                    "cells": [_side_cell(p, info.metric, q) for p, q in zip(pb, pa)],
                }
            )
        if rows:
            sections.append(
                {
                    "scenario": name,
                    "info": info,
                    "metric_label": METRICS[info.metric][0],
                    "level_labels": [level_label(info, lv) for lv in levels],
                    "rows": rows,
                }
            )
    return SideBySide(before.run.run_id, after.run.run_id, a, b, link_text(before.run), link_text(after.run), sections)


def _section(
    view: RunView, name: str, info: Scenario, verdict: Verdict | None, preferred: str | None
) -> ScenarioSection:
    levels = view.levels(name)
    baseline = view.baseline(name, preferred)
    basis = view.basis_level(name)
    rows = []
    for server in view.servers_in(name):
        cells = []
        for lv in levels:
            p = view.point(server, name, lv)
            cells.append(
                None
                if p is None
                else {
                    "value": format_value(info.metric, p.median) if p.supported else f"- (n={p.latency_count:,})",
                    "interval": format_interval(p) if p.supported else "-",
                    "p99": format_percentile(p),
                    "flags": p.flags,
                    "point": p,
                    "errors": p.errors,
                    "error_rate": f"{p.error_rate:.2%}" if p.errors else "0",
                }
            )
        ratio = view.ratio(server, name, baseline) if server != baseline else None
        rows.append(
            {
                "server": server,
                "cells": cells,
                "reference": server == view.reference,
                "vs_baseline": "baseline" if server == baseline else ratio_text(ratio),
            }
        )
    return ScenarioSection(
        name,
        info,
        METRICS[info.metric][0],
        levels,
        [level_label(info, lv) for lv in levels],
        rows,
        verdict,
        baseline,
        level_label(info, basis) if basis is not None else "-",
        placement(view, name),
        idle_rows=idle_cost_rows(view, name, levels) if info.idle else [],
    )


def idle_cost_rows(view: RunView, scenario: str, levels: list[int]) -> list[dict[str, Any]]:
    """Per server, per level: the active clients' p99 without the idle set, with it, and how many times
    higher it was with it (empty if no cell ran both)."""
    rows = []
    for server in view.servers_in(scenario):
        cells = []
        for lv in levels:
            p = view.point(server, scenario, lv)
            if p is None or p.p99_without_idle_us is None or p.p99_with_idle_us is None:
                cells.append(None)
                continue
            without, with_ = p.p99_without_idle_us, p.p99_with_idle_us
            cells.append(
                {
                    "without": format_value("p99_us", without),
                    "with": format_value("p99_us", with_),
                    "times": f"{with_ / without:.2f}x" if without > 0 else "-",
                }
            )
        if any(cells):
            rows.append({"server": server, "cells": cells})
    return rows


def build_report(runs: list[Run], baseline: str | None = None, plots: bool = True, noise_floor: float = 0.05) -> Report:
    """The report of the last run (earlier ones: delta tables or side by side). `baseline`: a server to take
    ratios against where it ran unflagged (default: nginx, else each scenario's median model)."""
    run = runs[-1]
    view = RunView(run)
    caption = caption_for(run)
    verdicts = {v.scenario: v for v in verdict_rules.of_run(run, view)}
    sections = []
    for name, info in view.scenarios.items():
        levels = view.levels(name)
        if not levels:
            continue
        section = _section(view, name, info, verdicts.get(name), baseline)
        if plots:
            from . import plots as charts

            section.chart = (
                charts.throughput_chart(view, name, caption)
                if info.mode == "closed"
                else charts.capacity_chart(view, name, caption)
                if info.mode == "capacity"
                else charts.open_loop_chart(view, name, caption)
            )
            section.spectrum = charts.spectrum_chart(view, name, levels[-1], caption)
            section.spectrum_level = level_label(info, levels[-1])
            for lv in levels:
                chart = charts.timeseries_chart(view, name, lv, caption)
                if chart is not None:
                    section.over_time.append((level_label(info, lv), chart))
        sections.append(section)
    summary_rows = [
        {
            "scenario": sec.name,
            "baseline": sec.baseline,
            "level": sec.basis_label,
            "cells": {row["server"]: row["vs_baseline"] for row in sec.rows},
        }
        for sec in sections
    ]
    report = Report(
        run,
        view,
        caption,
        sections,
        summary_rows,
        list(verdicts.values()),
        model_cards(view.run.servers),
        sorted(view.flagged_points(), key=lambda p: (p.scenario, p.server, p.level)),
    )
    if plots:
        from . import plots as charts

        report.charts["heatmap"] = charts.heatmap_chart(view, {s.name: s.baseline for s in sections}, caption)
        report.charts["efficiency"] = charts.efficiency_chart(view, caption)
        memory = charts.memory_chart(view, caption)
        if memory:
            report.charts["memory"], report.memory_scenario = memory
        report.charts["errors"] = charts.errors_chart(view, caption)
    report.why = {v.scenario: why for v in verdicts.values() if (why := explanations.explain(v, view))}
    report.network = link_text(run)
    for before in runs[:-1]:
        if not same_link(before, run):  # never paired as before/after: the difference is the link's
            report.side_by_side.append(side_by_side(RunView(before), view))
            continue
        before_view = RunView(before)
        rows = deltas(before_view, view, floor=noise_floor)
        report.delta_tables.append(
            DeltaTable(
                before.run_id,
                run.run_id,
                rows,
                sum(d.regression for d in rows),
                sum(d.improvement for d in rows),
                sum(d.verdict == "unmeasured" for d in rows),
                noise_floor,
                agreement.compare(verdict_rules.of_run(before, before_view), list(verdicts.values())),
            )
        )
    return report


def _environment() -> jinja2.Environment:
    # "report.html.j2": the templates' own names end in .j2, so "html" alone would escape nothing
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["value"] = lambda value, metric: format_value(metric, value)
    env.filters["bytes"] = format_bytes
    env.filters["pct"] = lambda v: f"{v * 100:+.1f}%"
    env.filters["margin"] = lambda v: "-" if v is None else f"{v * 100:.1f}%"
    env.filters["noise"] = lambda v: "unmeasured" if v is None else f"±{v * 100:.1f}%"
    env.filters["mdcell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    env.globals["level_label"] = level_label
    env.globals["verdict_label"] = agreement.label
    env.globals["metric_label"] = lambda m: METRICS[m][0]
    from .profile_report import where_the_time_goes  # `serverzoo bench --profile`'s section (it uses this module)

    env.globals["where_the_time_goes"] = where_the_time_goes
    return env


def render(report: Report | UdpReport, template: str) -> str:
    """template: "report.html.j2" or "report.md.j2"; a report without a bench run uses its udp_ twin."""
    if report.run is None:
        template = "udp_" + template
    return _environment().get_template(template).render(r=report, esc=html.escape)


def build_any(
    docs: list[dict[str, Any]], baseline: str | None = None, plots: bool = True, noise_floor: float = 0.05
) -> Report | UdpReport:
    """Bench runs (in their order) and udp-compare results (in theirs), told apart by schema; the documents
    have been checked by store.read_result."""
    runs = [Run.from_doc(d, check=False) for d in docs if d.get("schema") == SCHEMA]
    udp = [build_section(d, plots=plots) for d in docs if d.get("schema") != SCHEMA]
    if not runs:
        return UdpReport(udp)
    report = build_report(runs, baseline=baseline, plots=plots, noise_floor=noise_floor)
    report.udp = udp
    return report


def write_documents(
    docs: list[dict[str, Any]],
    html_path: str | None,
    md_path: str | None,
    baseline: str | None = None,
    noise_floor: float = 0.05,
) -> list[str]:
    """Write the requested files from results already read (and checked); return their paths."""
    report = build_any(docs, baseline=baseline, plots=html_path is not None, noise_floor=noise_floor)
    written = []
    for path, template in ((html_path, "report.html.j2"), (md_path, "report.md.j2")):
        if path is None:
            continue
        text = render(report, template)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".part"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        written.append(path)
    return written


def write_reports(
    paths: list[str], html_path: str | None, md_path: str | None, baseline: str | None = None, noise_floor: float = 0.05
) -> list[str]:
    """Read the runs (bench runs and udp-compare results), write the requested files, return their paths."""
    return write_documents(
        [read_result(p) for p in paths], html_path, md_path, baseline=baseline, noise_floor=noise_floor
    )
