"""A cell's load, as `serverzoo load` options and as the command line that runs them.

The runner starts the generator as its own process (`python -m serverzoo load ...
--json PATH`) pinned to the generator's CPUs, rather than calling run_load in the
runner's process:
- the runner's own work (the rich progress display redraws from a thread; results are
  rewritten after each cell) would share the generator's process, its GIL and its
  CPU-time accounting, and so distort both its throughput and its client-bound verdict;
- the generator's process is pinned as a whole, while the runner stays unpinned;
- a generator that hangs or crashes costs one cell (killed by its PID at a deadline),
  not the run;
- each cell records the exact command, which a user can paste to reproduce it by hand.
Its cost, the interpreter's start (~0.1-0.2 s here), is counted in the estimate.
"""

from __future__ import annotations

import sys
from typing import Any

from .plan import BenchPlan, Cell

# LoadOptions field -> `serverzoo load` flag (see clients/loadgen/options.py)
FLAGS = {
    "connections": "--connections",
    "duration": "--duration",
    "warmup_s": "--warmup",
    "rate": "--rate",
    "conn_mode": "--conn-mode",
    "workers": "--workers",
    "cpus": "--cpus",
    "server_pid": "--server-pid",
    "server_cpus": "--server-cpus",
    "corpus": "--corpus",
    "zipf": "--zipf",
    "timeout_s": "--timeout",
    "idle": "--idle",
    "slow_readers": "--slow-readers",
    "slow_read_rate": "--slow-read-rate",
    "slow_read_path": "--slow-read-path",
    "seed": "--seed",
    "timeline_interval_s": "--timeline-interval",
    "reconnect_after": "--reconnect-after",
    "server_cgroup": "--server-cgroup",
    "sample_interval_s": "--sample-interval",
    # capacity scenarios: `serverzoo load --find-capacity` (not LoadOptions fields)
    "find_capacity": "--find-capacity",
    "slo": "--slo",
    "search_start": "--search-start",
    "search_time": "--search-time",
    "search_resolution": "--search-resolution",
}


def load_options(
    plan: BenchPlan, cell: Cell, base_url: str, corpus_root: str, server_pid: int, server_cgroup: str | None = None
) -> dict[str, Any]:
    """The LoadOptions fields (as a dict) for one cell."""
    sc = plan.scenarios[cell.scenario]
    server_cpus, client_cpus = plan.cpus_for(cell.scenario)
    connections = cell.level if sc.mode == "closed" else sc.connections
    opts: dict[str, Any] = {
        "connections": connections,
        "duration": sc.duration,
        "warmup_s": sc.warmup,
        "conn_mode": "keepalive" if sc.connection == "keep-alive" else "new",
        # one generator process per client CPU, but never more processes than connections
        "workers": max(1, min(len(client_cpus), connections)),
        "cpus": client_cpus,
        "server_pid": server_pid,
        "server_cpus": server_cpus,
        "server_cgroup": server_cgroup,
        "timeout_s": sc.request_timeout,
        "seed": plan.corpus.seed + cell.repetition,
        # short slices: the cell's noise is estimated from their batch means
        "timeline_interval_s": plan.adaptive.slice,
        "sample_interval_s": min(0.5, 2 * plan.adaptive.slice),  # the server's CPU, over about the same window
        "reconnect_after": sc.reconnect_after,
    }
    base = base_url.rstrip("/")
    if sc.zipf:
        url = f"{base}/{sc.zipf.dir}/"
        opts["corpus"] = f"{corpus_root}/{sc.zipf.dir}"
        opts["zipf"] = sc.zipf.s
        extra = []
    else:
        url = base + sc.paths[0]
        extra = [base + p for p in sc.paths[1:]]
        opts["corpus"] = corpus_root
    if sc.mode == "open":
        opts["rate"] = cell.level
    if sc.mode == "capacity":  # duration and warm-up: each step's least
        opts |= {
            "find_capacity": True,
            "slo": sc.goal,
            "search_start": sc.search_start,
            "search_time": sc.search_time,
            "search_resolution": sc.search_resolution,
        }
    if sc.idle:
        opts["idle"] = sc.idle
    if sc.slow_readers:
        opts["slow_readers"] = sc.slow_readers.count
        opts["slow_read_rate"] = sc.slow_readers.rate
        opts["slow_read_path"] = sc.slow_readers.path
    return {"url": url, "urls": extra, **opts}


def load_argv(opts: dict[str, Any], json_path: str) -> list[str]:
    """`python -m serverzoo load URL [URL...] --flag value ... --json PATH`."""
    argv = [sys.executable, "-m", "serverzoo", "load", opts["url"], *opts.get("urls", [])]
    for field, flag in FLAGS.items():
        value = opts.get(field)
        if value is None:
            continue
        if value is True:  # a flag without a value
            argv.append(flag)
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value))
        argv += [flag, str(value)]
    return [*argv, "--json", json_path]
