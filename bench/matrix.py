"""The run loop: the cells a run still lacks, one by one, saved after each, with progress.

Progress shows the current cell, cells done and an ETA; the ETA's unit is estimated
seconds (warm-up + measured + start/stop per cell), so rich's rate estimate turns it
into real remaining time as the run learns how long cells really take here.
"""

from __future__ import annotations

import datetime as _dt
import signal
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .analysis import metric_value, summarize
from .plan import Cell, Plan
from .runner import CellRunner, interrupts
from .scenarios import METRICS
from .store import write_atomic

if TYPE_CHECKING:
    from serverzoo.clients.links import LinkedHosts

    from .cluster import ClusterPlacement


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def pending_cells(plan: Plan, doc: dict[str, Any]) -> list[Cell]:
    done = {c["id"] for c in doc["cells"]}
    return [c for c in plan.cells() if c.id not in done]


def cell_line(plan: Plan, record: dict[str, Any]) -> str:
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


def run_matrix(plan: Plan, doc: dict[str, Any], path: str, corpus_root: str, max_cells: int | None = None,
               console: Console | None = None, hosts: LinkedHosts | None = None,
               placement: ClusterPlacement | None = None) -> str:
    """Run the pending cells, saving after each. Returns the run's status: complete, partial or interrupted.
    With `hosts` (the run's link, up), every cell runs across it; with `placement` (--cluster), on Dask workers."""
    console = console or Console(stderr=True)
    todo = pending_cells(plan, doc)
    limit = todo if max_cells is None else todo[:max_cells]
    total_cells = len(plan.cells())
    runner = CellRunner(plan, corpus_root, hosts, placement)
    doc["status"] = "running"
    write_atomic(path, doc)
    # Ctrl-C and SIGTERM (a CI timeout, `kill PID`) stop the run and keep everything measured; they wait
    # while a server starts or stops, or while the file is written, so nothing is left running or torn
    previous = {sig: signal.signal(sig, interrupts.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("starting", total=plan.estimate_seconds(limit),
                                     done=f"{total_cells - len(todo)}/{total_cells} cells")
            for cell in limit:
                progress.update(task, description=cell.id)
                record = runner.run(cell)
                doc["cells"].append(record)
                with interrupts.critical():
                    doc["summary"] = summarize(doc)  # flags stored with the data, not only in reports
                    write_atomic(path, doc)
                progress.console.print(cell_line(plan, record), highlight=False)
                progress.update(task, advance=plan.cell_seconds(cell),
                                done=f"{len(doc['cells'])}/{total_cells} cells")
        status = "complete" if not pending_cells(plan, doc) else "partial"
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    doc["status"] = status
    doc["summary"] = summarize(doc)
    if status == "complete":
        doc["finished"] = _now()
    write_atomic(path, doc)
    return status
