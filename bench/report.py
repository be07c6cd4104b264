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

from .analysis import (BASELINE, Delta, Point, RunView, Verdict, deltas, level_label, link_name, link_summary,
                       link_text, ratio_text, same_link)
from .cards import ModelCard, model_cards
from .scenarios import METRICS
from .store import SCHEMA, read_result
from .tcp_vs_udp import TcpVsUdp, build_section

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def format_value(metric: str, value: float | None) -> str:
    """The one formatting of a metric value, shared by tables and tests."""
    if value is None:
        return "-"
    if metric == "p99_us":
        return f"{value / 1000:,.2f} ms"
    if metric == "mb_per_s":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def format_spread(p: Point) -> str:
    if not p.values:
        return "-"
    if len(p.values) < 2:
        return "n=1"
    return f"±{p.spread * 100:.1f}%"


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
    info: dict[str, Any]
    metric_label: str
    levels: list[int]
    level_labels: list[str]
    rows: list[dict[str, Any]]
    verdict: Verdict
    chart: str | None = None
    spectrum: str | None = None
    spectrum_level: str = ""


@dataclass
class DeltaTable:
    before: str
    after: str
    rows: list[Delta]
    regressions: int
    improvements: int
    floor: float


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
    run: dict[str, Any]
    view: RunView
    caption: str
    baseline: str
    sections: list[ScenarioSection]
    summary_rows: list[dict[str, Any]]
    geomean_row: dict[str, str]
    verdicts: list[Verdict]
    cards: list[ModelCard]
    flagged: list[Point]
    charts: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(("heatmap", "efficiency", "memory", "errors")))
    delta_tables: list[DeltaTable] = field(default_factory=list)
    side_by_side: list[SideBySide] = field(default_factory=list)
    memory_scenario: str | None = None
    network: str = ""  # where the reported run's traffic went (link_text)
    udp: list[TcpVsUdp] = field(default_factory=list)  # the "TCP vs UDP" section, one part per udp-compare result


@dataclass
class UdpReport:
    """A report made of udp-compare results alone: the "TCP vs UDP" section and nothing else."""

    udp: list[TcpVsUdp]
    run: None = None


def caption_for(run: dict[str, Any]) -> str:
    m = run.get("machine") or {}
    prefix = "FIXTURE (synthetic numbers, not a measurement) | " if run.get("fixture") else ""
    return f"{prefix}run {run['run_id']} over {link_name(run)} | {m.get('hostname', '?')}: {machine_line(m)}"


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
        if other is None or other["metric"] != info["metric"]:
            continue
        levels = sorted(set(before.levels(name)) | set(after.levels(name)))
        rows = []
        for server in servers:
            pa = [before.point(server, name, lv) for lv in levels]
            pb = [after.point(server, name, lv) for lv in levels]
            if not any(pa + pb):
                continue
            ref = server == after.reference
            rows.append({"label": f"{server} @{a}", "reference": ref,
                         "cells": [_side_cell(p, info["metric"]) for p in pa]})
            rows.append({"label": f"{server} @{b}", "reference": ref,
                         "cells": [_side_cell(p, info["metric"], q) for p, q in zip(pb, pa)]})
        if rows:
            sections.append({"scenario": name, "info": info, "metric_label": METRICS[info["metric"]][0],
                             "level_labels": [level_label(info, lv) for lv in levels], "rows": rows})
    return SideBySide(before.run["run_id"], after.run["run_id"], a, b, link_text(before.run), link_text(after.run),
                      sections)


def build_report(runs: list[dict[str, Any]], baseline: str = BASELINE, plots: bool = True,
                 noise_floor: float = 0.05) -> Report:
    run = runs[-1]
    view = RunView(run)
    caption = caption_for(run)
    if baseline not in view.servers:
        baseline = view.models[0] if view.models else baseline
    sections = []
    for name, info in view.scenarios.items():
        levels = view.levels(name)
        if not levels:
            continue
        rows = []
        for server in view.servers_in(name):
            cells = []
            for lv in levels:
                p = view.point(server, name, lv)
                cells.append(None if p is None else {
                    "value": format_value(info["metric"], p.median), "spread": format_spread(p),
                    "p99": format_value("p99_us", p.p99_us), "flags": p.flags, "point": p,
                    "errors": p.errors, "error_rate": f"{p.error_rate:.2%}" if p.errors else "0",
                })
            rows.append({"server": server, "cells": cells, "reference": server == view.reference,
                         "vs_baseline": ratio_text(view.ratio(server, name, baseline)) if server != baseline else "-",
                         "vs_reference": (ratio_text(view.ratio(server, name, view.reference))
                                          if view.reference in view.servers_in(name) and server != view.reference
                                          else "-")})
        section = ScenarioSection(name, info, METRICS[info["metric"]][0], levels,
                                  [level_label(info, lv) for lv in levels], rows, view.verdict(name))
        if plots:
            from . import plots as charts

            section.chart = (charts.throughput_chart(view, name, caption) if info["mode"] == "closed"
                             else charts.open_loop_chart(view, name, caption))
            section.spectrum = charts.spectrum_chart(view, name, levels[-1], caption)
            section.spectrum_level = level_label(info, levels[-1])
        sections.append(section)

    summary_rows = []
    for name in view.scenarios:
        if not view.levels(name):
            continue
        summary_rows.append({"scenario": name, "cells": {
            s: ratio_text(view.ratio(s, name, baseline)) if any(view.point(s, name, lv) for lv in view.levels(name))
            else "" for s in view.servers}})
    geo = {}
    for s in view.servers:
        covered = sum(view.ratio(s, sc, baseline) is not None for sc in view.scenarios)
        most = max(sum(view.ratio(x, sc, baseline) is not None for sc in view.scenarios) for x in view.servers)
        # a mean over fewer scenarios than the others' is not the same figure: say so
        geo[s] = ratio_text(view.overall_ratio(s, baseline)) + (f" ({covered} of {most})" if covered < most else "")
    report = Report(run, view, caption, baseline, sections, summary_rows, geo, [s.verdict for s in sections],
                    model_cards(view.config["servers"]), sorted(view.flagged_points(),
                                                                key=lambda p: (p.scenario, p.server, p.level)))
    if plots:
        from . import plots as charts

        report.charts["heatmap"] = charts.heatmap_chart(view, baseline, caption)
        report.charts["efficiency"] = charts.efficiency_chart(view, caption)
        memory = charts.memory_chart(view, caption)
        if memory:
            report.charts["memory"], report.memory_scenario = memory
        report.charts["errors"] = charts.errors_chart(view, caption)
    report.network = link_text(run)
    for before in runs[:-1]:
        if not same_link(before, run):  # never paired as before/after: the difference is the link's
            report.side_by_side.append(side_by_side(RunView(before), view))
            continue
        rows = deltas(RunView(before), view, floor=noise_floor)
        report.delta_tables.append(DeltaTable(before["run_id"], run["run_id"], rows,
                                              sum(d.regression for d in rows), sum(d.improvement for d in rows),
                                              noise_floor))
    return report


def _environment() -> jinja2.Environment:
    # "report.html.j2": the templates' own names end in .j2, so "html" alone would escape nothing
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=jinja2.select_autoescape(["html", "html.j2"]),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["value"] = lambda value, metric: format_value(metric, value)
    env.filters["bytes"] = format_bytes
    env.filters["pct"] = lambda v: f"{v * 100:+.1f}%"
    env.filters["mdcell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    env.globals["level_label"] = level_label
    env.globals["metric_label"] = lambda m: METRICS[m][0]
    from .profile_report import where_the_time_goes  # `serverzoo bench --profile`'s section (it uses this module)

    env.globals["where_the_time_goes"] = where_the_time_goes
    return env


def render(report: Report | UdpReport, template: str) -> str:
    """template: "report.html.j2" or "report.md.j2"; a report without a bench run uses its udp_ twin."""
    if report.run is None:
        template = "udp_" + template
    return _environment().get_template(template).render(r=report, esc=html.escape)


def build_any(docs: list[dict[str, Any]], baseline: str = BASELINE, plots: bool = True,
              noise_floor: float = 0.05) -> Report | UdpReport:
    """Bench runs (in their order) and udp-compare results (in theirs), told apart by schema."""
    runs = [d for d in docs if d.get("schema") == SCHEMA]
    udp = [build_section(d, plots=plots) for d in docs if d.get("schema") != SCHEMA]
    if not runs:
        return UdpReport(udp)
    report = build_report(runs, baseline=baseline, plots=plots, noise_floor=noise_floor)
    report.udp = udp
    return report


def write_documents(docs: list[dict[str, Any]], html_path: str | None, md_path: str | None,
                    baseline: str = BASELINE, noise_floor: float = 0.05) -> list[str]:
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


def write_reports(paths: list[str], html_path: str | None, md_path: str | None, baseline: str = BASELINE,
                  noise_floor: float = 0.05) -> list[str]:
    """Read the runs (bench runs and udp-compare results), write the requested files, return their paths."""
    return write_documents([read_result(p) for p in paths], html_path, md_path, baseline=baseline,
                           noise_floor=noise_floor)
