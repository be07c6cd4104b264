"""The report's charts, drawn with matplotlib (Agg, no display) and returned as inline SVG.

Each chart carries its own caption line (run, machine, date) inside the image, so a
chart copied out of the report still says where its numbers come from. Figures are
built with matplotlib.figure.Figure, not pyplot: no global state between charts.
"""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from .analysis import Point, RunView, Series, level_label, merge_histograms, supports, time_series
from .scenarios import METRICS

REFERENCE_STYLE = {"color": "black", "linestyle": "--", "marker": "s"}
# one colour per model, none of them grey or black (the yardstick's) and none repeated before the 18th:
# tab10 without its grey, then tab20's lighter shades
_PALETTE = [c for i, c in enumerate(matplotlib.colormaps["tab10"].colors) if i != 7] + [
    c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i % 2 and i != 15
]
FLAG_RING = {"s": 120, "facecolors": "none", "edgecolors": "crimson", "linewidths": 1.2, "zorder": 5}
SPECTRUM = [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999]


def _figure(width: float = 7.5, height: float = 3.8) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.045, 1, 0.955))  # room for the caption line at the bottom
    return fig


def _svg(fig: Figure, caption: str) -> str:
    fig.text(0.005, 0.003, caption, fontsize=6.5, color="0.35", ha="left", va="bottom")
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "serverzoo"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]  # inline in HTML: no XML prolog or doctype


def _metric_scale(metric: str) -> tuple[float, str]:
    """Values are stored in their metric's unit; latency is shown in ms."""
    if metric == "p99_us":
        return 1e-3, METRICS[metric][0]
    return 1.0, METRICS[metric][0]


def _color(view: RunView, server: str) -> Any:
    """One colour per server in every chart of a report; the yardstick is black and dashed."""
    if server == view.reference:
        return REFERENCE_STYLE["color"]
    models = view.models
    return _PALETTE[models.index(server) % len(_PALETTE)] if server in models else "0.5"


def _style(view: RunView, server: str) -> dict[str, Any]:
    if server == view.reference:
        return dict(REFERENCE_STYLE)
    return {"marker": "o", "color": _color(view, server)}


def _legend(ax: Any, n: int) -> None:
    """Inside the axes for a few lines; to the right, outside, for many."""
    if n > 5:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=7)


def _log2_axis(ax: Any, levels: list[int]) -> None:
    if len(levels) > 1 and max(levels) / max(min(levels), 1) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _half_width(p: Point) -> float:
    """The 95% half-width to draw (none when unmeasured: the table says so)."""
    return p.estimate.half_width if p.estimate is not None and p.estimate.measured else 0.0


def throughput_chart(view: RunView, scenario: str, caption: str) -> str:
    """Closed loop: the scenario's metric against concurrency, one line per server, 95% intervals as error bars."""
    sc = view.scenarios[scenario]
    scale, label = _metric_scale(sc.metric)
    levels = view.levels(scenario)
    fig = _figure()
    ax = fig.add_subplot()
    for server in view.servers_in(scenario):
        xs, ys, lo, hi, bad = [], [], [], [], []
        for lv in levels:
            p = view.point(server, scenario, lv)
            if p is None or p.median is None:
                continue
            xs.append(lv)
            ys.append(p.median * scale)
            lo.append(min(_half_width(p), p.median) * scale)
            hi.append(_half_width(p) * scale)
            if p.flags:
                bad.append((lv, p.median * scale))
        if not xs:
            continue
        ax.errorbar(xs, ys, yerr=[lo, hi], label=server, capsize=3, **_style(view, server))
        if bad:
            ax.scatter(*zip(*bad), **FLAG_RING)
    _log2_axis(ax, levels)
    ax.set_xlabel("concurrency (connections)")
    ax.set_ylabel(label)
    ax.set_ylim(bottom=0)
    ax.set_title(f"{sc.title}: {label} by concurrency\n(bars: 95% interval; red ring: flagged cell)", fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax, len(view.servers_in(scenario)))
    return _svg(fig, caption)


def open_loop_chart(view: RunView, scenario: str, caption: str) -> str:
    """Open loop: p99 against offered load; solid = corrected (from scheduled send), dotted = uncorrected;
    95% intervals as error bars, flagged cells ringed; cells with fewer than 100 responses are left out."""
    levels = view.levels(scenario)
    fig = _figure()
    ax = fig.add_subplot()
    for server in view.servers_in(scenario):
        pts = [view.point(server, scenario, lv) for lv in levels]
        pts = [
            p for p in pts if p is not None and p.median and p.metric == "p99_us" and supports(p.latency_count, 99.0)
        ]
        if not pts:
            continue
        ys = [p.median / 1e3 for p in pts]
        line = ax.errorbar(
            [p.level for p in pts],
            ys,
            yerr=[[min(_half_width(p), p.median * 0.99) / 1e3 for p in pts], [_half_width(p) / 1e3 for p in pts]],
            label=server,
            capsize=3,
            **_style(view, server),
        ).lines
        bad = [(p.level, y) for p, y in zip(pts, ys) if p.flags]
        if bad:
            ax.scatter(*zip(*bad), **FLAG_RING)
        unc = [p for p in pts if p.p99_uncorrected_us]
        if unc:
            ax.plot(
                [p.level for p in unc],
                [p.p99_uncorrected_us / 1e3 for p in unc],
                linestyle=":",
                color=line[0].get_color(),
                alpha=0.7,
            )
    ax.set_yscale("log")
    _log2_axis(ax, levels)
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("p99 latency (ms), log scale")
    ax.set_title(
        f"{view.scenarios[scenario].title}: p99 against offered load (red ring: flagged cell)\n"
        "solid: timed from the scheduled send (corrected); dotted: uncorrected",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(view.servers_in(scenario)))
    return _svg(fig, caption)


def capacity_chart(view: RunView, scenario: str, caption: str) -> str:
    """Capacity search: the goal's latency against the offered rate at every step each model's search
    walked (filled: the step held; hollow: it did not), the goal as a line, each capacity as a tick."""
    sc = view.scenarios[scenario]
    goal = sc.goal or ""
    level = max(sc.levels)
    fig = _figure()
    ax = fig.add_subplot()
    limit_ms = None
    for server in view.servers_in(scenario):
        # every repetition's search, failed ones too (no rate held: the curve still says how it went)
        searches = [
            c.load.capacity
            for c in view.run.cells
            if c.server == server
            and c.scenario == scenario
            and c.level == level
            and c.load is not None
            and c.load.capacity is not None
        ]
        if not searches:
            continue
        search = searches[0]  # the first repetition's walk
        steps = [s for s in search.steps if s.latency_us.get(goal) or s.latency_us.get("p99")]
        if not steps:
            continue
        xs = [s.target_rate for s in steps]
        ys = [(s.latency_us.get(goal) or s.latency_us["p99"]) / 1e3 for s in steps]
        style = _style(view, server)
        color = style["color"]
        ax.plot(
            xs,
            ys,
            label=f"{server}" + (f" ({search.rate:,.4g} req/s)" if search.rate else " (none held)"),
            color=color,
            linestyle=style.get("linestyle", "-"),
        )
        held = [(x, y) for x, y, s in zip(xs, ys, steps, strict=True) if s.held]
        failed = [(x, y) for x, y, s in zip(xs, ys, steps, strict=True) if not s.held]
        if held:
            ax.scatter(*zip(*held, strict=True), color=color, marker=style["marker"], zorder=3)
        if failed:
            ax.scatter(
                *zip(*failed, strict=True), facecolors="none", edgecolors=color, marker=style["marker"], zorder=3
            )
        if search.rate:
            ax.axvline(search.rate, color=color, alpha=0.35, linewidth=1)
    try:
        from serverzoo.clients.loadgen.slo import LATENCY, parse_goal

        parsed = parse_goal(goal)
        if parsed.measure == LATENCY:
            limit_ms = parsed.limit / 1e3
    except ValueError:
        limit_ms = None
    if limit_ms:
        ax.axhline(limit_ms, color="crimson", linestyle="--", linewidth=1, label=f"goal {goal}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("offered load (requests/s), log scale")
    measure = goal.split("<")[0] if "<" in goal else "p99"
    ax.set_ylabel(f"{measure} latency (ms), log scale")
    ax.set_title(
        f"{sc.title}: latency against load, as each search walked it\n(filled: the step held; hollow: it "
        "did not; vertical line: the capacity found)",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(view.servers_in(scenario)) + 1)
    return _svg(fig, caption)


def _spectrum(point: Point) -> tuple[list[float], list[float]]:
    """Percentile -> latency (us), only as far as the responses support (p99.9 needs 1,000): from the merged
    histograms when readable, else the saved percentiles."""
    hist = merge_histograms(point.histograms)
    if hist is not None and hist.get_total_count():
        n = hist.get_total_count()
        qs = [q for q in SPECTRUM if supports(n, q)]
        return qs, [float(hist.get_value_at_percentile(q)) for q in qs]
    pairs = [(50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p99.9"), (99.99, "p99.99")]
    got = [(q, v) for q, k in pairs if (v := point.percentile(k)) is not None]
    return [q for q, _ in got], [v for _, v in got]


def spectrum_chart(view: RunView, scenario: str, level: int, caption: str) -> str:
    """HdrHistogram-style percentile spectrum on a log 1/(1-p) axis, latency on a log axis."""
    fig = _figure()
    ax = fig.add_subplot()
    ticks = [50, 90, 99, 99.9, 99.99, 99.999]
    for server in view.servers_in(scenario):
        p = view.point(server, scenario, level)
        if p is None or p.failed:
            continue
        qs, vals = _spectrum(p)
        xs = [1 / (1 - q / 100) if q < 100 else 1e6 for q in qs]
        keep = [(x, v / 1e3) for x, v in zip(xs, vals) if v > 0]
        if keep:
            flagged = bool(p.flags)
            style = _style(view, server) | ({"linestyle": ":"} if flagged else {})
            label = f"{server} (n={p.latency_count:,}{', flagged' if flagged else ''})"
            ax.plot(*zip(*keep), label=label, **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([1 / (1 - q / 100) for q in ticks])
    ax.set_xticklabels([f"{q:g}%" for q in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms), log scale")
    ax.set_title(
        f"{view.scenarios[scenario].title}: latency spectrum at "
        f"{level_label(view.scenarios[scenario], level)}\n(each line ends where its responses end; "
        "dotted: a flagged cell)",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(view.servers_in(scenario)))
    return _svg(fig, caption)


def timeseries_chart(view: RunView, scenario: str, level: int, caption: str) -> str | None:
    """Throughput (top) and p99 (bottom) over each cell's measured window at one level, a line per
    cell (repetitions of a server share its colour, later ones fainter), so warm-up effects,
    pauses and stalls show; None when no cell there ran long enough (analysis.SERIES_MIN_S)."""
    sc = view.scenarios[scenario]
    by_server: dict[str, list[tuple[int, Series]]] = {}
    for c in view.run.cells:
        if c.scenario == scenario and c.level == level and c.ok and c.load is not None:
            series = time_series(c.load)
            if series is not None:
                by_server.setdefault(c.server, []).append((c.repetition, series))
    if not by_server:
        return None
    bytes_metric = sc.metric == "mb_per_s"
    fig = _figure(width=6.0, height=5.2)  # narrower than the others, larger type: read on a phone too
    top, bottom = fig.subplots(2, 1, sharex=True)
    servers = [s for s in view.servers_in(scenario) if s in by_server]
    p99_values: list[float] = []
    for server in servers:
        style = {"color": _color(view, server), "linestyle": "--" if server == view.reference else "-"}
        for i, (_rep, series) in enumerate(sorted(by_server[server], key=lambda x: x[0])):
            label = server if i == 0 else None
            alpha = 1.0 if i == 0 else 0.45
            throughput = series.mb_per_s if bytes_metric else series.rps
            top.plot(
                series.t,
                [float("nan") if v is None else v for v in throughput],
                label=label,
                alpha=alpha,
                linewidth=1.2,
                **style,
            )
            p99 = [float("nan") if v is None else v / 1e3 for v in series.p99_us]
            p99_values += [v for v in p99 if not math.isnan(v)]
            bottom.plot(series.t, p99, alpha=alpha, linewidth=1.2, **style)
    top.set_ylabel("MB/s" if bytes_metric else "requests/s")
    top.set_ylim(bottom=0)
    bottom.set_ylabel("p99 (ms)")
    if p99_values and max(p99_values) / max(min(p99_values), 1e-3) >= 20:
        bottom.set_yscale("log")  # a stall's spike would flatten the rest on a linear axis
    else:
        bottom.set_ylim(bottom=0)
    bottom.set_xlabel("seconds into the measured window")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9)
        ax.yaxis.label.set_size(10)
    bottom.xaxis.label.set_size(10)
    top.set_title(
        f"{sc.title} at {level_label(sc, level)}: each cell over time\n"
        f"(later repetitions fainter; gaps: too few responses for a p99)",
        fontsize=10,
    )
    _legend(top, len(servers))
    return _svg(fig, caption)


def _grouped_bars(
    view: RunView,
    values: dict[str, dict[str, float]],
    ylabel: str,
    title: str,
    caption: str,
    log: bool = False,
    flagged: set[tuple[str, str]] = frozenset(),
) -> str:
    """values: group (x) -> server -> value; one bar per server in each group; (group, server) pairs in
    `flagged` get a crimson outline."""
    groups = list(values)
    servers = [s for s in view.servers if any(s in values[g] for g in groups)]
    fig = _figure(min(11.0, max(7.5, 0.9 * len(groups) * max(1, len(servers)) / 4)), 4.0)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(servers))
    for i, server in enumerate(servers):
        xs = [g + (i - (len(servers) - 1) / 2) * width for g in range(len(groups))]
        ys = [values[g].get(server, 0.0) for g in groups]
        kw = {"hatch": "//"} if server == view.reference else {}
        bars = ax.bar(xs, ys, width=width, label=server, color=_color(view, server), **kw)
        for bar, g in zip(bars, groups):
            if (g, server) in flagged:
                bar.set_edgecolor("crimson")
                bar.set_linewidth(1.5)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=7, rotation=15)
    if log and any(v > 0 for g in groups for v in values[g].values()):
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    _legend(ax, len(servers))
    return _svg(fig, caption)


def efficiency_chart(view: RunView, caption: str) -> str | None:
    """Requests per CPU-second of the server process tree, at each scenario's top level."""
    values: dict[str, dict[str, float]] = {}
    flagged = set()
    for sc in view.scenarios:
        levels = view.levels(sc)
        if not levels:
            continue
        row = {}
        for server in view.servers_in(sc):
            p = view.point(server, sc, levels[-1])
            if p and p.requests_per_cpu_s:
                row[server] = p.requests_per_cpu_s
                if p.flags:
                    flagged.add((sc, server))
        if row:
            values[sc] = row
    if not values:
        return None
    return _grouped_bars(
        view,
        values,
        "requests per server CPU-second (log)",
        "CPU efficiency at each scenario's highest level (higher: less CPU per request;\nred outline: flagged cell)",
        caption,
        log=True,
        flagged=flagged,
    )


def memory_chart(view: RunView, caption: str) -> tuple[str, str] | None:
    """Peak RSS growth per open connection in the scenario that holds the most connections."""
    best = None
    for sc in view.scenarios:
        for lv in view.levels(sc):
            for server in view.servers_in(sc):
                p = view.point(server, sc, lv)
                if p and p.rss_per_connection is not None and (best is None or p.open_connections > best[2]):
                    best = (sc, lv, p.open_connections)
    if best is None:
        return None
    sc, lv, conns = best
    points = [
        p for s in view.servers_in(sc) if (p := view.point(s, sc, lv)) is not None and p.rss_per_connection is not None
    ]
    rows = [(p.server + (" (flagged)" if p.flags else ""), p.rss_per_connection / 1024) for p in points]
    fig = _figure(7.5, 0.35 * len(rows) + 1.6)
    ax = fig.add_subplot()
    ax.barh(
        [s for s, _ in rows],
        [v for _, v in rows],
        height=0.6,
        color=[_color(view, p.server) for p in points],
        edgecolor=["crimson" if p.flags else "none" for p in points],
        linewidth=1.5,
    )
    for i, (_, v) in enumerate(rows):
        ax.text(v, i, f" {v:,.1f}", va="center", fontsize=7)
    ax.invert_yaxis()
    positive = [v for _, v in rows if v > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_xscale("log")
    ax.set_xlabel("KiB per open connection" + (" (log)" if ax.get_xscale() == "log" else ""))
    ax.set_title(
        f"Memory per open connection in {sc} ({conns} connections): (peak RSS - RSS at start) / connections", fontsize=9
    )
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig, caption), sc


def heatmap_chart(view: RunView, baselines: dict[str, str | None], caption: str) -> str | None:
    """Servers x scenarios, colour = ratio to the scenario's baseline on a log scale (green better), annotated;
    grey = failed or no healthy baseline. The colour bar is labelled in times ("2x"), not logarithms."""
    scenarios = list(view.scenarios)
    servers = [
        s for s in view.servers if any(view.levels(sc) and view.point(s, sc, view.levels(sc)[0]) for sc in scenarios)
    ]
    if not servers or not scenarios:
        return None
    grid: list[list[float]] = []
    labels: list[list[str]] = []
    for server in servers:
        row, text = [], []
        for sc in scenarios:
            present = any(view.point(server, sc, lv) for lv in view.levels(sc))
            basis = view.basis_level(sc)
            p = view.point(server, sc, basis) if basis is not None else None
            failed = present and (p is None or p.failed)
            r = view.ratio(server, sc, baselines.get(sc))
            flagged = view.flagged_in(server, sc)
            if not present:
                row.append(math.nan)
                text.append("")
            elif failed or r is None:
                row.append(math.nan)
                text.append("failed" if failed else "n/a\n(no healthy\nbaseline)")
            else:
                row.append(math.log2(r))
                text.append((f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x") + ("*" if flagged else ""))
        grid.append(row)
        labels.append(text)
    finite = [abs(v) for row in grid for v in row if not math.isnan(v)]
    span = min(max([*finite, 1.0]), 3.0)  # colours saturate at 8x so that 1.3x stays visible
    fig = _figure(max(7.5, 1.0 * len(scenarios) + 2), 0.42 * len(servers) + 1.8)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="0.85")
    im = ax.imshow(grid, cmap=cmap, norm=TwoSlopeNorm(0.0, -span, span), aspect="auto")
    ax.set_xticks(range(len(scenarios)))
    ax.set_yticks(range(len(servers)))
    ax.set_yticklabels(servers, fontsize=8)
    for i, row in enumerate(labels):
        for j, t in enumerate(row):
            ax.text(j, i, t, ha="center", va="center", fontsize=7)
    ax.set_xticklabels(
        [f"{sc}\nvs {baselines.get(sc) or '-'}" for sc in scenarios], fontsize=7, rotation=20, ha="right"
    )
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    ticks = list(range(-int(span), int(span) + 1))
    bar.ax.yaxis.set_major_locator(FixedLocator(ticks))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{2.0**v:g}x"))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    bar.set_label("times better than the scenario's baseline", fontsize=7)
    ax.set_title(
        "The matrix: times better than each scenario's baseline at its deciding level (* = a flagged cell)", fontsize=9
    )
    return _svg(fig, caption)


def errors_chart(view: RunView, caption: str) -> str:
    """Failed requests by class, per server, summed over scenarios and levels."""
    totals: dict[str, dict[str, int]] = {}
    for (server, _sc, _lv), p in view.points.items():
        for cls, n in p.error_classes.items():
            totals.setdefault(server, {}).setdefault(cls, 0)
            totals[server][cls] += n
    servers = [s for s in view.servers if s in totals]
    fig = _figure(7.5, 0.35 * max(1, len(servers)) + 1.8)
    ax = fig.add_subplot()
    if not servers:
        ax.text(0.5, 0.5, "no failed requests in this run", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
        ax.set_title("Errors by class", fontsize=10)
        return _svg(fig, caption)
    classes = sorted({c for t in totals.values() for c in t})
    left = [0] * len(servers)
    for cls in classes:
        counts = [totals[s].get(cls, 0) for s in servers]
        ax.barh(servers, counts, left=left, label=cls, height=0.6)
        left = [a + b for a, b in zip(left, counts)]
    ax.invert_yaxis()
    ax.set_xlabel("failed requests (all scenarios and levels)")
    ax.set_title("Errors by class", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="x")
    return _svg(fig, caption)


# -- TCP vs UDP (from `serverzoo udp compare` results) ------------------------------------------------
UDP_SERIES = {"UDP received": 0, "UDP clean up to (sweep)": 9, "TCP stream goodput": 1}
RTT_SERIES = {"udp": ("UDP", 0), "keep-alive": ("TCP keep-alive", 1), "fresh": ("TCP fresh connection", 2)}


def _place_axes(doc: dict[str, Any], n_series: int) -> tuple[Figure, Any, list[float], float]:
    """A figure with one group of n_series bars per place; places not built are labelled so."""
    places = doc["places"]
    fig = _figure(max(7.5, 1.2 * len(places) + 1.5), 4.0)
    ax = fig.add_subplot()
    ax.set_xticks(range(len(places)))
    ax.set_xticklabels([p["place"] + ("\n(not built)" if "unavailable" in p else "") for p in places], fontsize=7)
    ax.set_xlim(-0.5, len(places) - 0.5)  # places without bars keep their slot
    for i, p in enumerate(places):
        if "unavailable" in p:
            ax.text(
                i,
                0.5,
                "not built here",
                transform=ax.get_xaxis_transform(),
                rotation=90,
                ha="center",
                va="center",
                fontsize=7,
                color="0.4",
            )
    width = 0.8 / n_series
    offsets = [(k - (n_series - 1) / 2) * width for k in range(n_series)]
    return fig, ax, offsets, width


def udp_rate_chart(doc: dict[str, Any], caption: str) -> str | None:
    """Per place: what UDP delivered at the offered rate, where its loss began, and one TCP stream's goodput."""
    measured = [(i, p) for i, p in enumerate(doc["places"]) if "unavailable" not in p]
    if not measured:
        return None
    palette = matplotlib.colormaps["tab10"].colors
    fig, ax, offsets, width = _place_axes(doc, len(UDP_SERIES))
    low = doc["options"]["sweep_from_bps"] / 1e6
    for (label, colour), dx in zip(UDP_SERIES.items(), offsets):
        xs, ys = [], []
        for i, p in measured:
            value = {
                "UDP received": p["udp_stream"]["receiver"]["throughput_bps"],
                "UDP clean up to (sweep)": p["udp_sweep"]["summary"]["max_clean_bps"],
                "TCP stream goodput": p["tcp_stream"]["sender"]["goodput_bps"],
            }[label]
            if value:
                xs.append(i + dx)
                ys.append(value / 1e6)
            elif label == "UDP clean up to (sweep)":
                ax.text(
                    i + dx,
                    0.03,
                    f"lossy from {low:g} Mbit/s",
                    transform=ax.get_xaxis_transform(),
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    color="0.3",
                )
        ax.bar(xs, ys, width=width, label=label, color=palette[colour])
    for i, p in measured:
        rx = p["udp_stream"]["receiver"]
        if rx["lost"] and rx["throughput_bps"]:
            ax.text(
                i + offsets[0],
                rx["throughput_bps"] / 1e6,
                f"{rx['loss_percent']:.2f}% lost",
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=6,
                color="crimson",
            )
        if not p["tcp_stream"]["receiver"]["complete"]:
            ax.text(
                i + offsets[2],
                p["tcp_stream"]["sender"]["goodput_bps"] / 1e6 or 1,
                "NOT every byte",
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=6,
                color="crimson",
            )
    ax.axhline(
        doc["options"]["rate_bps"] / 1e6,
        color="0.45",
        linestyle=":",
        linewidth=1,
        label=f"UDP offered ({doc['options']['rate_bps'] / 1e6:g} Mbit/s)",
    )
    return _finish_log_chart(
        fig,
        ax,
        "Mbit/s (log)",
        "TCP vs UDP: what each delivered, per path (red: UDP datagrams lost at the offered rate)",
        caption,
    )


def _finish_log_chart(fig, ax, ylabel: str, title: str, caption: str) -> str:
    """The TCP-vs-UDP charts' common ending: a log y axis, its grid and legend, the SVG."""
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=7)
    return _svg(fig, caption)


def udp_rtt_chart(doc: dict[str, Any], caption: str) -> str | None:
    """Per place: request/response RTT, bar = p50, tick = p99, for UDP, TCP keep-alive and a fresh TCP connection."""
    from serverzoo.clients.udp.compare import rtt_by_kind

    measured = [(i, rtt_by_kind(p)) for i, p in enumerate(doc["places"]) if "unavailable" not in p]
    if not measured:
        return None
    palette = matplotlib.colormaps["tab10"].colors
    fig, ax, offsets, width = _place_axes(doc, len(RTT_SERIES))
    p99_labelled = False
    for (kind, (label, colour)), dx in zip(RTT_SERIES.items(), offsets):
        xs, p50, p99 = [], [], []
        for i, by_kind in measured:
            q = by_kind.get(kind, {}).get("rtt_ms", {})
            if q.get("p50") and q.get("p99"):
                xs.append(i + dx)
                p50.append(q["p50"])
                p99.append(q["p99"])
            failed = by_kind.get(kind, {}).get("failed")
            if failed:
                ax.text(
                    i + dx,
                    q.get("p99") or q.get("p50") or 1,
                    f" {failed} lost",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    color="crimson",
                )
        ax.bar(xs, p50, width=width, label=f"{label}: p50", color=palette[colour])
        ax.vlines(xs, p50, p99, color="black", linewidth=0.8)
        ax.scatter(xs, p99, marker="_", s=80, color="black", zorder=5, label=None if p99_labelled else "p99")
        p99_labelled = True
    return _finish_log_chart(
        fig,
        ax,
        "round trip (ms, log)",
        "TCP vs UDP: request/response round trip per path (bar: p50, tick: p99; red: requests lost)",
        caption,
    )
