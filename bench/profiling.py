"""Where a model's time goes: one server under one scenario's load, in separate untimed passes.

A profile is a handful of passes, each a fresh load run of the scenario (the generator
in-process here, its workers pinned to the client CPUs as in a benchmark cell), each
normalised by the requests it served itself, because a profiler slows the server and
so changes how many requests fit in a window:

- counters (no profiler): server CPU user and system from /proc before and after the
  load; context switches of the whole tree when the load is over (proc_tree.py:
  kill_counting_switches, wait4() of the root) minus the live counts when it began;
  threads and processes alive, sampled.
- syscalls: strace attached to the tree for a second load run: calls by name, and the
  threads and processes created (from the clone calls' flags).
- flame graph: py-spy attached for a third load run, on the same server once strace has
  let go; the SVG is written beside the JSON.
- memory: a fresh server with long timeouts holds idle keep-alive connections
  (idle_memory.py); this does not depend on the scenario, so a benchmark run measures
  it once per server.

Requests served in a window = verified responses + failed requests + requests still in
flight when the window closed (the server worked on those too). A window in which not
one response arrived (a large file under strace, say) is taken again, once, longer. Threads and
processes created are divided by the connections the server accepted (its successful
accept calls, from strace), which a slowed server can leave fewer than the clients
opened. A pass that cannot be taken (no strace or py-spy, no ptrace permission, no
response even in the longer window) is skipped with its reason in `skipped`; the other
passes stand.

CPU time in /proc is counted in clock ticks (1/CLK_TCK s), so a pass that used only a
few ticks has no CPU figure (MIN_CPU_TICKS) rather than a coarse one.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serverzoo.clients.loadgen import LoadOptions, run_load
from serverzoo.servers.launch import ServerProcess

from .flamegraph import py_spy_attached
from .idle_memory import measure_idle_memory, raise_fd_limit
from .loadargs import load_options
from .plan import REFERENCE, BenchPlan, Cell
from .proc_tree import (
    CLOCK_TICKS,
    TaskSampler,
    kill_counting_switches,
    live_switches,
    start_server,
    tree_cpu,
    tree_pids,
)
from .syscall_counts import TracerUnavailable, strace_attached

SCHEMA = "serverzoo.profile/1"
WINDOW_MAX_S = 2.0  # a profile needs hundreds of requests, not a benchmark's minutes
WINDOW_STRETCH = 4  # a window without a single response is run once more, this many times longer
MIN_CPU_TICKS = 5  # below this, one tick either way is more than a fifth of the figure
IDLE_SERVER_ARGS = ("--keepalive-timeout", "60", "--header-timeout", "60")
DEFAULT_IDLE = 1000
PASSES = ("counters", "syscalls", "flamegraph", "memory")


class ProfileError(RuntimeError):
    """A profile could not be taken (the server did not start, the load failed); one line."""


class NoResponse(ProfileError):
    """Not one response came back in the window: a pass is taken again with a longer one."""


@dataclass
class ProfileSession:
    """What profiles of one run share: idle-memory figures, by server command (one measurement each)."""

    idle_memory: dict[tuple, dict[str, Any]] = field(default_factory=dict)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def server_args(plan: BenchPlan, server: str, scenario: str) -> tuple[str, ...]:
    """`serverzoo serve` arguments of a cell, as the benchmark runner builds them."""
    return (*plan.run.server_args, *plan.scenarios[scenario].server_args, *plan.servers[server].args)


def served(doc: dict[str, Any]) -> int:
    """Requests the server worked on in a load run: answered, failed, or in flight at the end."""
    return doc["requests"] + doc["errors"]["total"] + (doc.get("unfinished") or {}).get("count", 0)


def connections_of(plan: BenchPlan, cell: Cell, doc: dict[str, Any]) -> int:
    """Connections a load run opened: one per request without keep-alive, else one per client."""
    sc = plan.scenarios[cell.scenario]
    extra = sc.idle + (sc.slow_readers.count if sc.slow_readers else 0)
    if sc.connection == "close":
        return served(doc) + extra
    return (cell.level if sc.mode == "closed" else sc.connections) + extra


class Profiler:
    """Takes the profile of one server x scenario x level of a plan (see the module's docstring)."""

    def __init__(
        self,
        plan: BenchPlan,
        corpus_root: str,
        session: ProfileSession | None = None,
        window_s: float | None = None,
        idle: int = DEFAULT_IDLE,
        passes: tuple[str, ...] = PASSES,
        log: Callable[[str], None] = lambda _line: None,
    ) -> None:
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
            "schema": SCHEMA,
            "server": server,
            "model": spec.model,
            "server_args": list(args),
            "scenario": scenario,
            "level": level,
            "level_key": cell.level_key,
            "connection": sc.connection,
            "window_s": window,
            "started": _now(),
            "skipped": {},
            "passes": {},
            "cpu_us_per_request": None,
            "context_switches_per_request": None,
            "syscalls_per_request": None,
            "syscalls_total_per_request": None,
            "threads_created": None,
            "processes_created": None,
            "threads_created_per_connection": None,
            "processes_created_per_connection": None,
            "threads_peak": None,
            "processes_peak": None,
            "processes_min": None,
            "rss_per_idle_connection_bytes": None,
            "pss_per_idle_connection_bytes": None,
            "idle_memory": None,
            "flamegraph": None,
            "flamegraph_written": None,
        }
        if "counters" in self.passes:
            self.log(f"{cell.id}: counters pass")
            self._isolated("counters", record, self._counters, window, cell, spec.model, args, record)
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

    @staticmethod
    def _isolated(name: str, record: dict, run: Callable[..., None], window: float, *args: Any) -> None:
        """Run a pass, run(window, *args); once more with a longer window if not one response came
        back (NoResponse), measuring afresh; any other ProfileError skips it (only it), with the reason."""
        longer = max(window, min(window * WINDOW_STRETCH, WINDOW_MAX_S))
        try:
            try:
                run(window, *args)
            except NoResponse:
                if longer == window:
                    raise
                run(longer, *args)
        except ProfileError as exc:
            record["skipped"].setdefault(name, str(exc))

    # -- passes ---------------------------------------------------------------------

    def _start(self, model: str, args: tuple[str, ...]) -> ServerProcess:
        from serverzoo.servers.launch import ServerStartError

        try:
            return start_server(model, self.corpus_root, args, self.plan.server_cpus)
        except (ServerStartError, OSError) as exc:
            raise ProfileError(f"{model} did not start: {str(exc).splitlines()[0][:300]}") from None

    def _load(self, cell: Cell, server: ServerProcess, window: float) -> dict[str, Any]:
        """One load run of the window (NoResponse if not one response came back in it)."""
        from serverzoo.clients.loadgen.coordinator import LoadError
        from serverzoo.clients.loadgen.options import OptionError

        opts = load_options(self.plan, cell, server.url, self.corpus_root, server.pid)
        # no request times out inside the window: a profiler slows the server, and a timed-out request
        # would be retried on a new connection, which is another workload
        opts.update(warmup_s=0.0, duration=window, server_pid=None, timeout_s=max(opts["timeout_s"], window))
        try:
            doc = run_load(LoadOptions(**opts))
        except (LoadError, OptionError) as exc:
            raise ProfileError(f"the load failed: {str(exc).splitlines()[0][:300]}") from None
        if doc["requests"] == 0:
            raise NoResponse(f"the server answered no request in a {window:g} s window")
        doc["profile_window_s"] = window
        return doc

    def _pass_record(self, cell: Cell, doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "requests_served": served(doc),
            "responses": doc["requests"],
            "errors": doc["errors"]["total"],
            "in_flight_at_end": (doc.get("unfinished") or {}).get("count", 0),
            "connections": connections_of(self.plan, cell, doc),
            "window_s": doc["profile_window_s"],
            "elapsed_s": doc["elapsed_s"],
        }

    def _counters(self, window: float, cell: Cell, model: str, args: tuple[str, ...], record: dict) -> None:
        server = self._start(model, args)
        try:
            processes = len(tree_pids(server.pid))
            at_start = live_switches(server.pid)
            cpu0 = tree_cpu(server.pid)
            with TaskSampler(server.pid) as tasks:
                doc = self._load(cell, server, window)
            cpu = tree_cpu(server.pid) - cpu0
        finally:
            total = kill_counting_switches(server, processes=processes)
        n = served(doc)
        ticks = round((cpu.user_s + cpu.system_s) * CLOCK_TICKS)
        info = self._pass_record(cell, doc) | {
            "cpu_clock_ticks": ticks,
            "cpu_s": {"user": cpu.user_s, "system": cpu.system_s},
        }
        record["passes"]["counters"] = info
        if ticks >= MIN_CPU_TICKS:
            record["cpu_us_per_request"] = {
                "user": round(cpu.user_s * 1e6 / n, 1),
                "system": round(cpu.system_s * 1e6 / n, 1),
            }
        else:
            record["skipped"]["cpu"] = (
                f"{ticks} clock tick{'s' if ticks != 1 else ''} of CPU in the window "
                f"(fewer than {MIN_CPU_TICKS}): too coarse to divide"
            )
        switches = total - at_start
        info["context_switches"] = {"voluntary": switches.voluntary, "involuntary": switches.involuntary}
        record["context_switches_per_request"] = {
            "voluntary": round(switches.voluntary / n, 3),
            "involuntary": round(switches.involuntary / n, 3),
        }
        record["threads_peak"] = tasks.threads_peak
        record["processes_peak"] = tasks.processes_max
        record["processes_min"] = tasks.processes_min
        info["task_samples"] = tasks.samples

    def _traced(
        self, cell: Cell, model: str, args: tuple[str, ...], window: float, svg_path: str, record: dict
    ) -> None:
        try:
            server = self._start(model, args)
        except ProfileError as exc:
            for name in ("syscalls", "flamegraph"):
                if name in self.passes:
                    record["skipped"][name] = str(exc)
            return
        try:
            if "syscalls" in self.passes:
                self.log(f"{cell.id}: strace pass")
                self._isolated("syscalls", record, self._syscalls, window, cell, server, record)
            if "flamegraph" in self.passes:
                self.log(f"{cell.id}: py-spy pass")
                self._isolated("flamegraph", record, self._flamegraph, window, cell, server, svg_path, record)
        finally:
            server.stop()

    def _syscalls(self, window: float, cell: Cell, server: ServerProcess, record: dict) -> None:
        try:
            with strace_attached(server.pid) as counts:
                doc = self._load(cell, server, window)
        except TracerUnavailable as exc:
            record["skipped"]["syscalls"] = str(exc)
            return
        info = self._pass_record(cell, doc) | {"connections_accepted": counts.accepted}
        record["passes"]["syscalls"] = info
        n, conns = info["requests_served"], counts.accepted or info["connections"]
        per = {name: round(calls / n, 3) for name, calls in counts.calls.most_common()}
        record["syscalls_per_request"] = per
        record["syscalls_total_per_request"] = round(sum(counts.calls.values()) / n, 3)
        record["threads_created"] = counts.threads_created
        record["processes_created"] = counts.processes_created
        record["threads_created_per_connection"] = round(counts.threads_created / conns, 3)
        record["processes_created_per_connection"] = round(counts.processes_created / conns, 3)

    def _flamegraph(self, window: float, cell: Cell, server: ServerProcess, svg_path: str, record: dict) -> None:
        if os.path.exists(svg_path):
            os.unlink(svg_path)  # a stale graph must not pass for this one
        try:
            with py_spy_attached(server.pid, svg_path) as graph:
                doc = self._load(cell, server, window)
        except TracerUnavailable as exc:
            record["skipped"]["flamegraph"] = str(exc)
            return
        except ProfileError:
            if os.path.exists(svg_path):
                os.unlink(svg_path)  # a graph of a pass that served nothing is no figure
            raise
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
