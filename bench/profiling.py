"""Where a model's time goes: one server under one scenario's load, in separate untimed passes.

A profile is a handful of passes, each a fresh load run of the scenario (the generator
in-process here, its workers pinned to the client CPUs as in a benchmark cell), each
normalised by the requests it served itself, because a profiler slows the server and
so changes how many requests fit in a window:

- counters (no profiler): server CPU user and system from /proc before and after the
  load; context switches of the whole tree from wait4() at exit minus the live counts at
  the start minus what a graceful stop of the same idle server costs (one start and stop
  of its own, remembered per command line); threads and processes alive, sampled.
- syscalls: strace attached to the tree for a second load run: calls by name, and the
  threads and processes created (from the clone calls' flags).
- flame graph: py-spy attached for a third load run, on the same server once strace has
  let go; the SVG is written beside the JSON.
- memory: a fresh server with long timeouts holds idle keep-alive connections
  (idle_memory.py); this does not depend on the scenario, so a benchmark run measures
  it once per server.

Requests served in a window = verified responses + failed requests + requests still in
flight when the window closed (the server worked on those too). A missing strace or
py-spy, or no ptrace permission, skips that pass only, with its reason in `skipped`.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from serverzoo.clients.loadgen import LoadOptions, run_load
from serverzoo.servers.launch import ServerProcess

from .flamegraph import py_spy_attached
from .idle_memory import measure_idle_memory, raise_fd_limit
from .loadargs import load_options
from .plan import REFERENCE, Cell, Plan
from .proc_tree import Switches, TaskSampler, live_switches, start_server, stop_with_rusage, tree_cpu
from .syscall_counts import TracerUnavailable, strace_attached

SCHEMA = "serverzoo.profile/1"
WINDOW_MAX_S = 2.0  # a profile needs hundreds of requests, not a benchmark's minutes
IDLE_SERVER_ARGS = ("--keepalive-timeout", "60", "--header-timeout", "60")
DEFAULT_IDLE = 1000
PASSES = ("counters", "syscalls", "flamegraph", "memory")


class ProfileError(RuntimeError):
    """A profile could not be taken (the server did not start, the load failed); one line."""


@dataclass
class ProfileSession:
    """What profiles of one run share: measured stop costs and idle-memory figures, by server command."""

    stop_costs: dict[tuple, Switches] = field(default_factory=dict)
    idle_memory: dict[tuple, dict[str, Any]] = field(default_factory=dict)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def server_args(plan: Plan, server: str, scenario: str) -> tuple[str, ...]:
    """`serverzoo serve` arguments of a cell, as the benchmark runner builds them."""
    return (*plan.run.server_args, *plan.scenarios[scenario].server_args, *plan.servers[server].args)


def served(doc: dict[str, Any]) -> int:
    """Requests the server worked on in a load run: answered, failed, or in flight at the end."""
    return doc["requests"] + doc["errors"]["total"] + (doc.get("unfinished") or {}).get("count", 0)


def connections_of(plan: Plan, cell: Cell, doc: dict[str, Any]) -> int:
    """Connections a load run opened: one per request without keep-alive, else one per client."""
    sc = plan.scenarios[cell.scenario]
    extra = sc.idle + (sc.slow_readers.count if sc.slow_readers else 0)
    if sc.connection == "close":
        return served(doc) + extra
    return (cell.level if sc.mode == "closed" else sc.connections) + extra


class Profiler:
    """Takes the profile of one server x scenario x level of a plan (see the module's docstring)."""

    def __init__(self, plan: Plan, corpus_root: str, session: ProfileSession | None = None,
                 window_s: float | None = None, idle: int = DEFAULT_IDLE, passes: tuple[str, ...] = PASSES,
                 log: Callable[[str], None] = lambda _line: None) -> None:
        unknown = set(passes) - set(PASSES)
        if unknown:
            raise ValueError(f"unknown passes: {', '.join(sorted(unknown))}")
        self.plan = plan
        self.corpus_root = corpus_root
        self.session = session or ProfileSession()
        self.window_s = window_s
        self.idle = idle
        self.passes = passes
        self.log = log

    def profile(self, server: str, scenario: str, level: int, svg_path: str) -> dict[str, Any]:
        """The profile record; its flamegraph, if taken, is written to svg_path."""
        plan = self.plan
        spec = plan.servers[server]
        if spec.model == REFERENCE:
            raise ProfileError("nginx is the yardstick, not a Python model: it has no profile here")
        sc = plan.scenarios[scenario]
        cell = Cell(server, scenario, level, sc.level_key(level), 1)
        args = server_args(plan, server, scenario)
        window = self.window_s or min(sc.duration, WINDOW_MAX_S)
        record: dict[str, Any] = {
            "schema": SCHEMA, "server": server, "model": spec.model, "server_args": list(args),
            "scenario": scenario, "level": level, "level_key": cell.level_key, "connection": sc.connection,
            "window_s": window, "started": _now(), "skipped": {}, "passes": {},
            "cpu_us_per_request": None, "context_switches_per_request": None, "syscalls_per_request": None,
            "syscalls_total_per_request": None, "threads_created": None, "processes_created": None,
            "threads_created_per_connection": None, "processes_created_per_connection": None,
            "threads_peak": None, "processes_peak": None, "processes_min": None,
            "rss_per_idle_connection_bytes": None, "pss_per_idle_connection_bytes": None, "idle_memory": None,
            "flamegraph": None, "flamegraph_written": None,
        }
        if "counters" in self.passes:
            self.log(f"{cell.id}: counters pass")
            self._counters(cell, spec.model, args, window, record)
        if "syscalls" in self.passes or "flamegraph" in self.passes:
            self._traced(cell, spec.model, args, window, svg_path, record)
        if "memory" in self.passes:
            if self.idle > 0:
                self.log(f"{server}: idle-memory pass ({self.idle} connections)")
                self._memory(spec.model, (*plan.run.server_args, *spec.args), record)
            else:
                record["skipped"]["memory"] = "no idle connections asked for (--idle 0)"
        record["finished"] = _now()
        return record

    # -- passes ---------------------------------------------------------------------

    def _start(self, model: str, args: tuple[str, ...]) -> ServerProcess:
        from serverzoo.servers.launch import ServerStartError

        try:
            return start_server(model, self.corpus_root, args, self.plan.server_cpus)
        except (ServerStartError, OSError) as exc:
            raise ProfileError(f"{model} did not start: {str(exc).splitlines()[0][:300]}") from None

    def _load(self, cell: Cell, server: ServerProcess, window: float) -> dict[str, Any]:
        from serverzoo.clients.loadgen.coordinator import LoadError
        from serverzoo.clients.loadgen.options import OptionError

        opts = load_options(self.plan, cell, server.url, self.corpus_root, server.pid)
        # no request times out inside the window: a profiler slows the server, and a timed-out request
        # would be retried on a new connection, which is another workload
        opts.update(warmup_s=0.0, duration=window, server_pid=None, timeout_s=max(opts["timeout_s"], window))
        try:
            doc = run_load(LoadOptions(**opts))
        except (LoadError, OptionError) as exc:
            raise ProfileError(f"{cell.id}: the load failed: {str(exc).splitlines()[0][:300]}") from None
        if doc["requests"] == 0:
            raise ProfileError(f"{cell.id}: the server answered no request in the {window:g} s window")
        return doc

    def _pass_record(self, cell: Cell, doc: dict[str, Any]) -> dict[str, Any]:
        return {"requests_served": served(doc), "responses": doc["requests"], "errors": doc["errors"]["total"],
                "in_flight_at_end": (doc.get("unfinished") or {}).get("count", 0),
                "connections": connections_of(self.plan, cell, doc), "elapsed_s": doc["elapsed_s"]}

    def _stop_cost(self, model: str, args: tuple[str, ...]) -> Switches:
        """Context switches a graceful stop of this idle server costs (one start and stop, remembered)."""
        key = (model, args)
        if key not in self.session.stop_costs:
            server = self._start(model, args)
            total = None
            try:
                at_ready = live_switches(server.pid)
            finally:
                _, total, _ = stop_with_rusage(server)
            self.session.stop_costs[key] = (total - at_ready) if total else Switches(0, 0)
        return self.session.stop_costs[key]

    def _counters(self, cell: Cell, model: str, args: tuple[str, ...], window: float, record: dict) -> None:
        stop_cost = self._stop_cost(model, args)
        server = self._start(model, args)
        try:
            at_start = live_switches(server.pid)
            cpu0 = tree_cpu(server.pid)
            with TaskSampler(server.pid) as tasks:
                doc = self._load(cell, server, window)
            cpu = tree_cpu(server.pid) - cpu0
        finally:
            code, total, _ = stop_with_rusage(server)
        n = served(doc)
        info = self._pass_record(cell, doc) | {"exit_code": code}
        record["passes"]["counters"] = info
        record["cpu_us_per_request"] = {"user": round(cpu.user_s * 1e6 / n, 1),
                                        "system": round(cpu.system_s * 1e6 / n, 1)}
        if total is not None:
            switches = total - at_start - stop_cost
            info["context_switches"] = {"voluntary": switches.voluntary, "involuntary": switches.involuntary,
                                        "stop_cost_subtracted": {"voluntary": stop_cost.voluntary,
                                                                 "involuntary": stop_cost.involuntary}}
            record["context_switches_per_request"] = {"voluntary": round(switches.voluntary / n, 3),
                                                      "involuntary": round(switches.involuntary / n, 3)}
        else:
            record["skipped"]["context_switches"] = "the server was reaped elsewhere: no wait4 figures"
        record["threads_peak"] = tasks.threads_peak
        record["processes_peak"] = tasks.processes_max
        record["processes_min"] = tasks.processes_min
        info["task_samples"] = tasks.samples

    def _traced(self, cell: Cell, model: str, args: tuple[str, ...], window: float, svg_path: str,
                record: dict) -> None:
        server = self._start(model, args)
        try:
            if "syscalls" in self.passes:
                self.log(f"{cell.id}: strace pass")
                self._syscalls(cell, server, window, record)
            if "flamegraph" in self.passes:
                self.log(f"{cell.id}: py-spy pass")
                self._flamegraph(cell, server, window, svg_path, record)
        finally:
            server.stop()

    def _syscalls(self, cell: Cell, server: ServerProcess, window: float, record: dict) -> None:
        try:
            with strace_attached(server.pid) as counts:
                doc = self._load(cell, server, window)
        except TracerUnavailable as exc:
            record["skipped"]["syscalls"] = str(exc)
            return
        info = self._pass_record(cell, doc)
        record["passes"]["syscalls"] = info
        n, conns = info["requests_served"], info["connections"]
        per = {name: round(calls / n, 3) for name, calls in counts.calls.most_common()}
        record["syscalls_per_request"] = per
        record["syscalls_total_per_request"] = round(sum(counts.calls.values()) / n, 3)
        record["threads_created"] = counts.threads_created
        record["processes_created"] = counts.processes_created
        record["threads_created_per_connection"] = round(counts.threads_created / conns, 3)
        record["processes_created_per_connection"] = round(counts.processes_created / conns, 3)

    def _flamegraph(self, cell: Cell, server: ServerProcess, window: float, svg_path: str, record: dict) -> None:
        if os.path.exists(svg_path):
            os.unlink(svg_path)  # a stale graph must not pass for this one
        try:
            with py_spy_attached(server.pid, svg_path) as graph:
                doc = self._load(cell, server, window)
        except TracerUnavailable as exc:
            record["skipped"]["flamegraph"] = str(exc)
            return
        record["passes"]["flamegraph"] = self._pass_record(cell, doc) | {"samples": graph.samples}
        if graph.path is None:
            record["skipped"]["flamegraph"] = graph.problem
        else:
            record["flamegraph"] = os.path.basename(graph.path)  # beside the JSON
            record["flamegraph_written"] = os.path.abspath(graph.path)

    def _memory(self, model: str, args: tuple[str, ...], record: dict) -> None:
        key = (model, args, self.idle)
        if key not in self.session.idle_memory:
            self.session.idle_memory[key] = self._measure_memory(model, args)
        found = self.session.idle_memory[key]
        if "skipped" in found:
            record["skipped"]["memory"] = found["skipped"]
            return
        record["idle_memory"] = found
        record["rss_per_idle_connection_bytes"] = found["rss_per_connection_bytes"]
        record["pss_per_idle_connection_bytes"] = found["pss_per_connection_bytes"]
        if found["rss_per_connection_bytes"] is None:
            record["skipped"]["memory"] = found["note"]

    def _measure_memory(self, model: str, args: tuple[str, ...]) -> dict[str, Any]:
        try:
            raise_fd_limit(self.idle)
        except (OSError, ValueError) as exc:
            return {"skipped": str(exc)}
        server = self._start(model, (*args, *IDLE_SERVER_ARGS))
        try:
            found = measure_idle_memory(server.pid, server.host, server.port, self._idle_path(), self.idle)
        finally:
            server.stop()
        return found.to_dict()

    def _idle_path(self) -> str:
        """The smallest top-level corpus file: what each idle client fetches once."""
        names = [n for n in self.plan.corpus.names() if "/" not in n]
        sizes = {n: os.path.getsize(os.path.join(self.corpus_root, n)) for n in names}
        return "/" + min(sizes, key=lambda n: (sizes[n], n))
