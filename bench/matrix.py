"""The run loop: the cells a run still lacks, one by one, saved after each, with progress.

First the plan's cells (the first pass); then rounds of extra repetitions where a
scenario's contenders are close (bench/sequential.py), for as long as the preset's budget
lasts. Progress shows the current cell with its live figures (each second's requests/s and
errors, from the generator), cells done and an ETA; the ETA's unit is estimated
seconds (warm-up + measured + start/stop per cell, plus the budget left for extra rounds),
so rich's rate estimate turns it into real remaining time as the run learns how long cells
really take here.
"""

from __future__ import annotations

import datetime as _dt
import signal
import statistics
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from serverzoo.clients.loadgen.report import fmt_us

from .analysis import metric_value, summarize
from .plan import CELL_OVERHEAD_S, BenchPlan, Cell
from .runner import CellRunner, interrupts
from .scenarios import METRICS
from .sequential import next_round, race_summary
from .store import write_atomic
from .verdicts import run_verdicts

if TYPE_CHECKING:
    from serverzoo.clients.links import LinkedHosts

    from .cluster import ClusterPlacement


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def pending_cells(plan: BenchPlan, doc: dict[str, Any]) -> list[Cell]:
    done = {c["id"] for c in doc["cells"]}
    return [c for c in plan.cells() if c.id not in done]


def cell_line(plan: BenchPlan, record: dict[str, Any]) -> str:
    """One line per finished cell: its headline figure and what went wrong, if anything."""
    sc = plan.scenarios[record["scenario"]]
    if record["status"] != "ok":
        return f"{record['id']}: FAILED: {record['error']}"
    load = record["load"]
    value = metric_value(load, sc.metric)
    shown = "-" if value is None else (f"{value / 1000:.2f} ms" if sc.metric == "p99_us" else f"{value:,.1f}")
    parts = [f"{record['id']}: {shown} {METRICS[sc.metric][0] if sc.metric != 'p99_us' else 'p99'}"]
    errors = (load.get("errors") or {}).get("total", 0)
    if errors:
        parts.append(f"{errors} errors")
    if (load.get("client") or {}).get("client_bound"):
        parts.append("client-bound")
    if (record.get("server_process") or {}).get("clean_stop") is False:
        parts.append(f"unclean stop: {record['server_process'].get('problem')}")
    return ", ".join(parts) + f" ({record['seconds']:.1f} s)"


def live_text(figures: dict[str, Any]) -> str:
    """The running cell's last second, for the progress line: phase, requests/s, errors (and p99 when sent)."""
    phase = "measuring" if figures["phase"] == "measure" else figures["phase"].replace("_", "-")
    errors = sum(figures["errors"].values())
    p99 = f", p99 {fmt_us(figures['p99_us'])}" if figures.get("p99_us") is not None else ""
    return f"{phase} {max(figures['t'], 0):.0f}s: {figures['rps']:,.0f} req/s{p99}" + (
        f", {errors} errors" if errors else ""
    )


def cell_cost(plan: BenchPlan, doc: dict[str, Any], cell: Cell) -> float:
    """Expected seconds for a cell: its warm-up and duration plus the start/stop overhead seen so far."""
    overheads = []
    for r in doc["cells"]:
        sc = plan.scenarios.get(r["scenario"])
        if sc is not None and r.get("seconds"):
            overheads.append(r["seconds"] - sc.load_seconds)
    sc = plan.scenarios[cell.scenario]
    return sc.load_seconds + (statistics.median(overheads) if overheads else CELL_OVERHEAD_S)


class _Loop:
    """Runs cells one at a time: saves after each, prints its line, moves the progress bar."""

    def __init__(
        self,
        plan: BenchPlan,
        doc: dict[str, Any],
        path: str,
        runner: CellRunner,
        progress: Progress,
        task: Any,
        max_cells: int | None,
    ) -> None:
        self.plan, self.doc, self.path, self.runner = plan, doc, path, runner
        self.progress, self.task = progress, task
        self.left = max_cells

    def run(self, cell: Cell) -> bool:
        """Measure one cell; False (nothing run) when --max-cells is used up."""
        interrupts.check()
        if self.left is not None:
            if self.left <= 0:
                return False
            self.left -= 1
        self.progress.update(self.task, description=cell.id)
        self.runner.on_live = lambda figures: self.progress.update(
            self.task, description=f"{cell.id}  {live_text(figures)}"
        )
        record = self.runner.run(cell)
        self.doc["cells"].append(record)
        with interrupts.critical():
            self.doc["summary"] = summarize(self.doc)  # flags stored with the data, not only in reports
            write_atomic(self.path, self.doc)
        self.progress.console.print(cell_line(self.plan, record), highlight=False)
        self.progress.update(self.task, advance=self.plan.cell_seconds(cell), done=f"{len(self.doc['cells'])} cells")
        return True


def run_matrix(
    plan: BenchPlan,
    doc: dict[str, Any],
    path: str,
    corpus_root: str,
    max_cells: int | None = None,
    console: Console | None = None,
    hosts: LinkedHosts | None = None,
    deadline: float | None = None,
    placement: ClusterPlacement | None = None,
) -> str:
    """Run the pending cells, then the extra repetitions close races need, saving after each.

    Returns the run's status: complete, partial (--max-cells) or interrupted. With `hosts`
    (the run's link, up), every cell runs across it; with `placement` (--cluster), on Dask
    workers. `deadline` (time.monotonic()) is when the preset's budget runs out: no extra
    repetition starts that would end after it.
    """
    console = console or Console(stderr=True)
    todo = pending_cells(plan, doc)
    runner = CellRunner(plan, corpus_root, hosts, placement)
    doc["status"] = "running"
    doc["config"]["cpu_accounting"] = runner.cgroups.describe()
    write_atomic(path, doc)
    # Ctrl-C and SIGTERM (a CI timeout, `kill PID`) stop the run and keep everything measured; they wait
    # while a server starts or stops, or while the file is written, so nothing is left running or torn
    interrupts.reset()
    previous = {sig: signal.signal(sig, interrupts.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    extra_allowance = plan.extension_seconds(todo)
    if deadline is not None:
        extra_allowance = min(extra_allowance, max(0.0, deadline - time.monotonic() - plan.estimate_seconds(todo)))
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(
                "starting", total=plan.estimate_seconds(todo) + extra_allowance, done=f"{len(doc['cells'])} cells"
            )
            loop = _Loop(plan, doc, path, runner, progress, task, max_cells)
            status = "complete"
            for cell in todo:
                if not loop.run(cell):
                    status = "partial"
                    break
            if status == "complete":
                status = _extend(plan, doc, loop, deadline)
            progress.update(task, completed=progress.tasks[0].total)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    doc["status"] = status
    doc["summary"] = summarize(doc)
    doc["verdicts"] = run_verdicts(doc)  # who wins where, and how sure: stored for tools and CI
    if status == "complete":
        doc["finished"] = _now()
    write_atomic(path, doc)
    return status


def _extend(plan: BenchPlan, doc: dict[str, Any], loop: _Loop, deadline: float | None) -> str:
    """Rounds of extra repetitions at close races until none is needed or the budget is spent."""
    state = doc.setdefault("sequential", {"rounds": 0, "extra_cells": 0, "ended": None})
    _log_races(plan, doc, loop, "after the first pass")
    while True:
        done = {c["id"] for c in doc["cells"]}
        cells = [c for c in next_round(plan, doc) if c.id not in done]
        if not cells:
            state["ended"] = "every race decided, or measured as precisely as asked"
            break
        state["rounds"] += 1
        for cell in cells:
            if deadline is not None and time.monotonic() + cell_cost(plan, doc, cell) > deadline:
                state["ended"] = "budget spent"
                _log_races(plan, doc, loop, "at the end")
                return "complete"
            if not loop.run(cell):
                return "partial"
            state["extra_cells"] += 1
    _log_races(plan, doc, loop, "at the end")
    return "complete"


def _log_races(plan: BenchPlan, doc: dict[str, Any], loop: _Loop, when: str) -> None:
    for line in race_summary(plan, doc):
        loop.progress.console.print(f"{when}: {line}", highlight=False)
