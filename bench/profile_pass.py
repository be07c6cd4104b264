"""`serverzoo bench --profile`: after the measured cells, a profile of every server at each scenario's top level.

The profiles run once the matrix is complete, so no profiler ever shares the machine
with a measured cell. They go into the run's JSON under `profiles` (failures under
`profile_errors`, one line each), saved after every profile; their flame graphs are
written beside the JSON as RUN-profile-SERVER-SCENARIO.svg. Ctrl-C stops the profiling
and keeps the profiles taken. Over an emulated link nothing is profiled: the passes
need the server's process tree on this machine's loopback, and the cells ran elsewhere.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from rich.console import Console

from .plan import REFERENCE, BenchPlan
from .profiling import ProfileError, Profiler, ProfileSession
from .store import write_atomic

# load per pass: a few hundred requests at least in most scenarios, so that every server of a
# quick run can be profiled in minutes, after a matrix that itself takes minutes
WINDOW_S = 0.25


def profile_line(r: dict[str, Any], seconds: float) -> str:
    """One line per profile for the progress output."""
    parts = [f"profile {r['server']}/{r['scenario']}/{r['level_key']}:"]
    cpu, cs = r.get("cpu_us_per_request"), r.get("context_switches_per_request")
    if cpu:
        parts.append(f"{cpu['user'] + cpu['system']:.0f} µs CPU,")
    if r.get("syscalls_total_per_request") is not None:
        parts.append(f"{r['syscalls_total_per_request']:.1f} syscalls,")
    if cs:
        parts.append(f"{cs['voluntary'] + cs['involuntary']:.2f} switches")
    parts.append(f"per request ({seconds:.1f} s)")
    if r.get("skipped"):
        parts.append("; skipped: " + ", ".join(r["skipped"]))
    return " ".join(parts)


def profile_run(
    plan: BenchPlan, doc: dict[str, Any], path: str, corpus_root: str, console: Console | None = None
) -> None:
    """Profile every Python server at each scenario's top level; store the results in doc and save it."""
    console = console or Console(stderr=True)
    doc["profiles"], doc["profile_errors"] = [], []
    if plan.link is not None:
        doc["profile_errors"].append(
            {"error": f"not profiled: the run went over link {plan.link.name}, and profiles are taken on loopback only"}
        )
        write_atomic(path, doc)
        return
    stem = os.path.splitext(path)[0]
    profiler = Profiler(plan, corpus_root, ProfileSession(), window_s=WINDOW_S)
    # SIGTERM (a CI timeout) ends the profiling as Ctrl-C does: each pass stops its server on the way out
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for sc in plan.scenarios.values():
            if sc.mode == "capacity":  # a search over rates, not a load at one level: nothing to profile
                continue
            level = max(sc.levels)
            for server, spec in plan.servers.items():
                if spec.model == REFERENCE:
                    continue
                t0 = time.monotonic()
                try:
                    record = profiler.profile(server, sc.name, level, f"{stem}-profile-{server}-{sc.name}.svg")
                except ProfileError as exc:
                    doc["profile_errors"].append(
                        {"server": server, "scenario": sc.name, "level_key": sc.level_key(level), "error": str(exc)}
                    )
                    console.print(f"profile {server}/{sc.name}: FAILED: {exc}", highlight=False)
                else:
                    doc["profiles"].append(record)
                    console.print(profile_line(record, time.monotonic() - t0), highlight=False)
                write_atomic(path, doc)
    except KeyboardInterrupt:
        console.print(f"profiling interrupted: {len(doc['profiles'])} profiles kept in {path}", highlight=False)
        write_atomic(path, doc)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt
