"""The "Where the time goes" section: profiles of several models, per scenario, as HTML and Markdown.

Per scenario: a table of the per-request figures, a stacked chart of them (CPU user and
system; voluntary and involuntary switches; system calls by name), one sentence per
model derived from its figures, and the flame graphs. Every figure links to the code
that causes it (code_links.py: file and line range found with inspect), whose source
is included in the section, so the HTML stays self-contained.

py-spy's SVGs are interactive (their own script zooms and searches). Inlined into the
page their scripts and element ids would collide with each other and with the report,
so each is embedded as a data: URL in a sandboxed iframe. A data: document always has
an opaque origin of its own, so its script cannot reach the report; the sandbox also
forbids navigating the page, popups and forms. It allows scripts, and "same origin",
which for a data: document is still that opaque origin (without it the graph's own
script fails on the history API and draws nothing).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
from markupsafe import Markup

from .code_links import ROLE_TITLES, CodeRef, code_for
from .report import format_bytes

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
TOP_SYSCALLS = 5  # named in the chart; the rest are "other"
_SVG_SIZE = re.compile(rb'<svg[^>]*?\bheight="(\d+)"')


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


# -- one sentence per model, from its figures -------------------------------------------


def explain(r: dict[str, Any]) -> str:
    """What the figures say about the model, in one sentence built only from them."""
    parts = []
    cpu = r.get("cpu_us_per_request")
    if cpu:
        total = cpu["user"] + cpu["system"]
        share = cpu["system"] / total if total else 0.0
        parts.append(f"{total:.0f} µs of CPU per request, {share:.0%} of it in the kernel")
    cs = r.get("context_switches_per_request")
    if cs:
        parts.append(f"{cs['voluntary']:.2f} voluntary switches per request{_why_switches(r, cs['voluntary'])}")
    calls = r.get("syscalls_per_request")
    if calls:
        top = ", ".join(f"{name} {n:.2g}" for name, n in list(calls.items())[:3])
        parts.append(f"{r['syscalls_total_per_request']:.3g} system calls per request ({top})")
    created = _creation(r)
    if created:
        parts.append(created)
    mem = r.get("rss_per_idle_connection_bytes")
    if mem is not None:
        pss = r.get("pss_per_idle_connection_bytes")
        extra = f" (PSS {format_bytes(pss)}: the rest is shared with the parent)" if pss and pss < mem * 0.7 else ""
        parts.append(f"{format_bytes(mem)} of RSS per idle connection{extra}")
    elif r.get("idle_memory") and r["idle_memory"].get("held") is not None:
        held = r["idle_memory"]["held"]
        parts.append(f"holds only {held} connection{'s' if held != 1 else ''} at once")
    if not parts:
        return f"{r['server']}: no figures (skipped: {'; '.join(r.get('skipped', {}).values()) or 'all passes'})."
    return f"{r['server']}: " + "; ".join(parts) + "."


# calls a thread sleeps in, as strace counted them: where the voluntary switches happen. A loop sleeps
# in its selector (non-blocking accept and recv return at once); a blocking socket with a timeout
# sleeps in poll; only without either does it sleep in accept or recv itself.
SELECTOR_CALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6")
BLOCKING_CALLS = ("accept4", "accept", "recvfrom", "read", "wait4", "clock_nanosleep")


def _sleeps_in(r: dict[str, Any]) -> str:
    calls = r.get("syscalls_per_request") or {}
    for group in (SELECTOR_CALLS, BLOCKING_CALLS):
        found = sorted((c for c in group if calls.get(c, 0) >= 0.02), key=lambda c: -calls[c])
        if found:
            return f"{found[0]} ({calls[found[0]]:.2g}/request)"
    return "blocking calls"


def _why_switches(r: dict[str, Any], voluntary: float) -> str:
    threads, procs = r.get("threads_peak") or 0, r.get("processes_peak") or 0
    if voluntary < 0.1:
        return ": the loop nearly always finds work ready, so it seldom sleeps"
    if threads > procs:  # several threads in one process
        futex = (r.get("syscalls_per_request") or {}).get("futex")
        gil = f", and wait for the GIL in futex ({futex:.2g}/request under strace)" if futex else ""
        return f": threads sleep in {_sleeps_in(r)}{gil}"
    if procs > 1:
        return f": each process sleeps in {_sleeps_in(r)} until its client is back"
    return f": the one thread sleeps in {_sleeps_in(r)} until a client has something for it"


def _creation(r: dict[str, Any]) -> str | None:
    per_proc, per_thread = r.get("processes_created_per_connection"), r.get("threads_created_per_connection")
    syscalls_pass = (r.get("passes") or {}).get("syscalls") or {}
    conns = syscalls_pass.get("connections_accepted") or syscalls_pass.get("connections")
    if per_proc is None or per_thread is None:
        return None
    if per_proc >= 0.5:
        return f"{per_proc:.2f} processes created per connection (a fork each)"
    if per_thread >= 0.5:
        return f"{per_thread:.2f} threads created per connection (a thread each)"
    if r.get("processes_created") == 0 and r.get("threads_created") == 0:
        return f"no thread or process created for {conns} connection{'s' if conns != 1 else ''}"
    return (
        f"{r.get('threads_created')} threads and {r.get('processes_created')} processes created for {conns} connections"
    )


# -- the chart --------------------------------------------------------------------------


def _syscall_count(name: str) -> Callable[[dict[str, Any]], float | None]:
    """A row's calls of one system call per request (None when the run counted none)."""

    def count(r: dict[str, Any]) -> float | None:
        per_request = r.get("syscalls_per_request")
        return None if per_request is None else per_request.get(name, 0.0)

    return count


def stacked_chart(rows: list[dict[str, Any]], caption: str) -> str | None:
    """Three panels of horizontal stacked bars, one bar per model: CPU, switches, system calls."""
    rows = [r for r in rows if r.get("cpu_us_per_request") or r.get("syscalls_per_request")]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = [r["server"] for r in rows]
    totals: Counter = Counter()
    for r in rows:
        totals.update(r.get("syscalls_per_request") or {})
    top = [name for name, _ in totals.most_common(TOP_SYSCALLS)]
    fig = Figure(figsize=(10, 0.45 * len(rows) + 2.2), dpi=100, layout="constrained")
    fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    axes = fig.subplots(1, 3, sharey=True)
    palette = matplotlib.colormaps["tab10"].colors
    panels = [
        (
            "CPU µs per request",
            [
                ("user", lambda r: (r.get("cpu_us_per_request") or {}).get("user")),
                ("system", lambda r: (r.get("cpu_us_per_request") or {}).get("system")),
            ],
        ),
        (
            "context switches per request",
            [
                ("voluntary", lambda r: (r.get("context_switches_per_request") or {}).get("voluntary")),
                ("involuntary", lambda r: (r.get("context_switches_per_request") or {}).get("involuntary")),
            ],
        ),
        (
            "system calls per request",
            [(name, _syscall_count(name)) for name in top]
            + [
                (
                    "other",
                    lambda r: (
                        (r["syscalls_total_per_request"] - sum(r["syscalls_per_request"].get(n, 0.0) for n in top))
                        if r.get("syscalls_per_request") is not None
                        else None
                    ),
                )
            ],
        ),
    ]
    ys = list(range(len(rows)))
    color_at = 0
    for ax, (title, parts) in zip(axes, panels):
        left = [0.0] * len(rows)
        for label, get in parts:
            values = [get(r) for r in rows]
            widths = [max(v, 0.0) if v is not None else 0.0 for v in values]
            ax.barh(ys, widths, left=left, color=palette[color_at % len(palette)], label=label, height=0.6)
            color_at += 1
            left = [a + b for a, b in zip(left, widths)]
        for y, r in enumerate(rows):
            if all(get(r) is None for _, get in parts):
                ax.text(0, y, " skipped", va="center", fontsize=7, color="0.4")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", color="0.9")
        ax.set_axisbelow(True)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
    axes[0].set_yticks(ys, names)
    axes[0].invert_yaxis()
    fig.text(0.005, 0.003, caption, fontsize=6.5, color="0.35", ha="left", va="bottom")
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "serverzoo"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]


# -- flame graphs -------------------------------------------------------------------------


def flame_path(r: dict[str, Any], base_dir: str | None) -> str | None:
    """Where the record's flame graph is: beside its JSON (base_dir), or where it was written."""
    name = r.get("flamegraph")
    if not name:
        return None
    for candidate in ([os.path.join(base_dir, name)] if base_dir else []) + [r.get("flamegraph_written") or ""]:
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def flame_iframe(svg: bytes, title: str) -> Markup:
    """The interactive SVG in a sandboxed iframe of its own opaque origin (see the module's docstring)."""
    m = _SVG_SIZE.search(svg[:4000])
    height = int(m.group(1)) + 8 if m else 400
    data = base64.b64encode(svg).decode("ascii")
    return Markup(
        f'<iframe class="flame" title="{html.escape(title)}" sandbox="allow-scripts allow-same-origin" loading="lazy" '
        f'style="width:100%;max-width:1210px;height:{height}px;border:1px solid #ccc" '
        f'src="data:image/svg+xml;base64,{data}"></iframe>'
    )


# -- the section ----------------------------------------------------------------------------


@dataclass
class ModelEntry:
    record: dict[str, Any]
    sentence: str
    code: dict[str, CodeRef | None]
    flame: Markup | None = None
    flame_file: str | None = None  # for Markdown links: the SVG's name beside the JSON
    flame_missing: str | None = None


@dataclass
class ScenarioProfiles:
    scenario: str
    level_key: str
    entries: list[ModelEntry]
    chart: str | None = None
    top_syscalls: list[str] = field(default_factory=list)


@dataclass
class ProfileSection:
    scenarios: list[ScenarioProfiles]
    code: list[CodeRef]  # every location linked, once each
    caption: str
    errors: list[str] = field(default_factory=list)  # profiles that could not be taken, one line each


def build_section(
    profiles: list[dict[str, Any]], base_dir: str | None = None, caption: str = "", charts: bool = True
) -> ProfileSection:
    """Group profiles by scenario (in their order) and derive everything the templates show."""
    by_scenario: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in profiles:
        by_scenario.setdefault((r["scenario"], r["level_key"]), []).append(r)
    code: dict[str, CodeRef] = {}
    out = []
    for (scenario, level_key), records in by_scenario.items():
        entries = []
        for r in records:
            refs = code_for(r["model"])
            for ref in refs.values():
                if ref is not None:
                    code.setdefault(ref.target, ref)
            entry = ModelEntry(r, explain(r), refs)
            path = flame_path(r, base_dir)
            if path:
                with open(path, "rb") as f:
                    entry.flame = flame_iframe(f.read(), f"flame graph: {r['server']}, {scenario}")
                entry.flame_file = r["flamegraph"]
            elif r.get("flamegraph"):
                entry.flame_missing = f"{r['flamegraph']} was not found beside the run's JSON"
            entries.append(entry)
        totals: Counter = Counter()
        for r in records:
            totals.update(r.get("syscalls_per_request") or {})
        sec = ScenarioProfiles(
            scenario, level_key, entries, top_syscalls=[n for n, _ in totals.most_common(TOP_SYSCALLS)]
        )
        if charts:
            sec.chart = stacked_chart(records, caption)
        out.append(sec)
    return ProfileSection(out, sorted(code.values(), key=lambda c: (c.path, c.first)), caption)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = _num
    env.filters["bytes"] = format_bytes
    env.filters["mdcell"] = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    env.globals["role_titles"] = ROLE_TITLES
    return env


def render_html(section: ProfileSection) -> Markup:
    return Markup(_environment().get_template("profile.html.j2").render(s=section))


def render_markdown(section: ProfileSection) -> str:
    return _environment().get_template("profile.md.j2").render(s=section)


def where_the_time_goes(run: dict[str, Any] | None, fmt: str = "html", base_dir: str | None = None) -> Markup | str:
    """The section for a bench run with profiles (`serverzoo bench --profile`); empty without them."""
    profiles = (run or {}).get("profiles") or []
    errors = (run or {}).get("profile_errors") or []
    if not profiles and not errors:
        return Markup("") if fmt == "html" else ""
    from serverzoo.machine import machine_line

    caption = f"run {run.get('run_id')}, {machine_line(run.get('machine') or {})}; profiling passes, not timed"
    section = build_section(profiles, base_dir, caption, charts=fmt == "html")
    section.errors = [(f"{e['server']}/{e['scenario']}: " if "server" in e else "") + e["error"] for e in errors]
    return render_html(section) if fmt == "html" else render_markdown(section)
