"""Live figures during a run, drawn by the coordinator once a second.

Each worker sends a tick every second (worker.py): its completed count, its errors by
class and, when someone is watching, a histogram of the latencies completed since its
last tick. LiveFigures folds the ticks of one second from all workers into a Second
(requests/s, p50/p99 of that second and of the measured window so far, errors, the
generator's CPU) and hands it to the displays: the rich view on a terminal, a plain
line a second elsewhere (a pipe, a log), and JSON lines on an inherited descriptor
for `serverzoo bench`'s progress. All of it runs in the coordinator, which generates no
load; the workers' share is one bulk histogram a second, off the request path.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import asdict, dataclass
from time import monotonic_ns
from typing import IO, Any, Protocol

import psutil
from hdrh.histogram import HdrHistogram
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from . import latency
from .options import LoadOptions
from .report import fmt_us

SPARK_SECONDS = 30
_BLOCKS = "▁▂▃▄▅▆▇█"


@dataclass
class Second:
    """One second of the run, as the displays show it."""

    t: float  # seconds since the measured window's start (negative during ramp-up and warm-up)
    phase: str
    rps: float
    p50_us: int | None  # of this second's responses
    p99_us: int | None
    overall_p50_us: int | None  # of the measured window so far
    overall_p99_us: int | None
    completed: int  # responses of the measured window so far
    errors: dict[str, int]  # by class, all phases so far
    client_cpu_percent: float | None  # all worker processes, percent of one CPU
    target_rate: float | None  # open loop: the target at this moment (rate stages change it)


class Display(Protocol):
    def show(self, second: Second, history: list[float]) -> None: ...

    def close(self) -> None: ...


class _WorkerState:
    __slots__ = ("completed", "cpu_s", "errors", "measured", "ns", "proc")

    def __init__(self, pid: int | None, start_ns: int) -> None:
        self.completed = 0
        self.measured = 0
        self.ns = start_ns
        self.errors: dict[str, int] = {}
        self.proc = psutil.Process(pid) if pid is not None else None
        self.cpu_s = self.cpu_now()

    def cpu_now(self) -> float | None:
        """This worker process's CPU time so far (user + system, seconds), None once it is gone."""
        if self.proc is None:
            return None
        try:
            t = self.proc.cpu_times()
        except psutil.Error:
            return None
        return float(t.user + t.system)


class LiveFigures:
    """Folds the workers' ticks into one Second per second and passes each to the displays."""

    def __init__(
        self, opts: LoadOptions, pids: list[int | None], start_ns: int, measure_ns: int, displays: list[Display]
    ) -> None:
        self.opts = opts
        self.measure_ns = measure_ns
        self.displays = displays
        self.workers = [_WorkerState(pid, start_ns) for pid in pids]
        self.active = set(range(len(pids)))  # workers still ticking (not yet sent their result)
        self.pending: dict[int, dict[int, dict[str, Any]]] = {}  # tick number -> worker -> its tick
        self.shown = -1  # the last tick number shown
        self.overall = latency.new_histogram()
        self.history: deque[float] = deque(maxlen=SPARK_SECONDS)
        self.cpu_ns = start_ns

    def add(self, worker: int, tick: dict[str, Any]) -> None:
        for phase, encoded in tick["recent"]:
            if phase == "measure":
                self.overall.add(latency.decode(encoded))
        if tick["seq"] <= self.shown:  # a late tick: its counts still move that worker's baseline
            self._fold(worker, tick)
            return
        self.pending.setdefault(tick["seq"], {})[worker] = tick
        self._show_ready()

    def finished(self, worker: int) -> None:
        """The worker sent its result: no more ticks come from it."""
        self.active.discard(worker)
        self._show_ready()

    def _show_ready(self) -> None:
        for seq in sorted(self.pending):
            got = self.pending[seq]
            # complete, or a later second has begun arriving (a worker that is behind is not waited for)
            if not (self.active <= got.keys() or any(s > seq for s in self.pending)):
                break
            del self.pending[seq]
            self._show(seq, got)

    def _fold(self, worker: int, tick: dict[str, Any]) -> float:
        """Take a worker's tick into its state; its requests/s since its previous tick."""
        w = self.workers[worker]
        dt = (tick["ns"] - w.ns) / 1e9
        rps = (tick["completed"] - w.completed) / dt if dt > 0 else 0.0
        w.completed, w.ns, w.errors = tick["completed"], tick["ns"], tick["errors"]
        w.measured = tick["measured"]
        return rps

    def _show(self, seq: int, ticks: dict[int, dict[str, Any]]) -> None:
        self.shown = seq
        rps = sum(self._fold(worker, tick) for worker, tick in ticks.items())
        recent = latency.merge(encoded for tick in ticks.values() for _phase, encoded in tick["recent"])
        errors: dict[str, int] = {}
        for w in self.workers:
            for k, v in w.errors.items():
                errors[k] = errors.get(k, 0) + v
        now = max(t["ns"] for t in ticks.values())
        t = (now - self.measure_ns) / 1e9
        phase = self._phase(t - 0.5)  # the phase most of this second was in (ticks may land on a boundary)
        schedule = self.opts.rate_schedule
        target = (schedule.rate_at(t) if schedule is not None else self.opts.rate) if self.opts.rate else None
        second = Second(
            t=round(t, 3),
            phase=phase,
            rps=round(rps, 1),
            p50_us=_pct(recent, 50),
            p99_us=_pct(recent, 99),
            overall_p50_us=_pct(self.overall, 50),
            overall_p99_us=_pct(self.overall, 99),
            completed=sum(w.measured for w in self.workers),
            errors=dict(sorted(errors.items())),
            client_cpu_percent=self._cpu_percent(),
            target_rate=target,
        )
        self.history.append(rps)
        for d in self.displays:
            d.show(second, list(self.history))

    def _phase(self, t: float) -> str:
        if t >= 0:
            return "measure"
        return "warmup" if t >= -self.opts.warmup_s else "ramp_up"

    def _cpu_percent(self) -> float | None:
        now = monotonic_ns()
        used = 0.0
        for w in self.workers:
            before, w.cpu_s = w.cpu_s, w.cpu_now()
            if before is None or w.cpu_s is None:
                return None
            used += w.cpu_s - before
        wall, self.cpu_ns = (now - self.cpu_ns) / 1e9, now
        return round(used / wall * 100, 1) if wall > 0 else None

    def close(self) -> None:
        for d in self.displays:
            d.close()


def _pct(hist: HdrHistogram, p: float) -> int | None:
    if hist.get_total_count() == 0:
        return None
    return int(hist.get_value_at_percentile(p))


def sparkline(values: list[float], width: int = SPARK_SECONDS) -> str:
    """The last `width` values as block characters, scaled from zero to their maximum."""
    values = values[-width:]
    top = max(values, default=0.0)
    if top <= 0:
        return _BLOCKS[0] * len(values)
    return "".join(_BLOCKS[min(int(v / top * len(_BLOCKS)), len(_BLOCKS) - 1)] for v in values)


def _errors_text(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in errors.items()) + ")"


def _clock(second: Second, opts: LoadOptions) -> str:
    """Where the run is: 'warmup', 'measure 12s of 30s', 'measure 3s' (a request count has no end time)."""
    if second.phase != "measure":
        return second.phase.replace("_", "-")
    of = f" of {opts.measured_duration:g}s" if opts.measured_duration is not None else ""
    return f"measure {second.t:.0f}s{of}"


class RichView:
    """A panel on the terminal, redrawn once a second in place (rich Live, no refresh thread)."""

    def __init__(self, console: Console, opts: LoadOptions, title: str) -> None:
        self.opts, self.title = opts, title
        self.live = Live(
            console=console, auto_refresh=False, transient=True, redirect_stdout=False, redirect_stderr=False
        )
        self.live.start()

    def show(self, second: Second, history: list[float]) -> None:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        target = f"  (target {second.target_rate:,.0f})" if second.target_rate is not None else ""
        grid.add_row("requests/s", f"{second.rps:,.0f}{target}")
        grid.add_row("last 30 s", Text(sparkline(history), style="cyan"))
        grid.add_row("last second", f"p50 {fmt_us(second.p50_us)}   p99 {fmt_us(second.p99_us)}")
        grid.add_row(
            "overall",
            f"p50 {fmt_us(second.overall_p50_us)}   p99 {fmt_us(second.overall_p99_us)}"
            f"   {second.completed:,} responses",
        )
        grid.add_row("errors", Text(_errors_text(second.errors), style="red" if second.errors else ""))
        cpu = "-" if second.client_cpu_percent is None else f"{second.client_cpu_percent:.0f}%"
        workers = self.opts.resolved_workers()
        grid.add_row("client CPU", f"{cpu} of one CPU ({workers} worker process{'es' if workers != 1 else ''})")
        head = Text(f"{self.title}  {_clock(second, self.opts)}", style="bold")
        self.live.update(Group(head, grid), refresh=True)

    def close(self) -> None:
        self.live.stop()


class PlainLines:
    """One line a second, no escape codes: for pipes and logs (--live when stderr is not a terminal)."""

    def __init__(self, stream: IO[str], opts: LoadOptions) -> None:
        self.stream, self.opts = stream, opts

    def show(self, second: Second, history: list[float]) -> None:
        cpu = "-" if second.client_cpu_percent is None else f"{second.client_cpu_percent:.0f}%"
        self.stream.write(
            f"{second.t:7.1f}s {second.phase.replace('_', '-'):<8} {second.rps:>10,.0f} req/s  "
            f"p50 {fmt_us(second.p50_us)}  p99 {fmt_us(second.p99_us)}  "
            f"overall p50 {fmt_us(second.overall_p50_us)} p99 {fmt_us(second.overall_p99_us)}  "
            f"errors {_errors_text(second.errors)}  client CPU {cpu}\n"
        )
        self.stream.flush()

    def close(self) -> None:
        pass


class JsonLines:
    """One JSON object a second on an inherited descriptor (serverzoo bench reads it for its progress)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def show(self, second: Second, history: list[float]) -> None:
        if self.fd < 0:
            return
        try:
            os.write(self.fd, (json.dumps(asdict(second)) + "\n").encode())  # below PIPE_BUF: written whole
        except OSError:
            self.fd = -1  # the reader went away: stop writing

    def close(self) -> None:
        pass


def displays_for(opts: LoadOptions, title: str) -> list[Display]:
    """The displays this run asked for: the live view (or plain lines off a terminal), JSON lines."""
    out: list[Display] = []
    if opts.live:
        console = Console(stderr=True)
        out.append(RichView(console, opts, title) if console.is_terminal else PlainLines(console.file, opts))
    if opts.progress_fd is not None:
        out.append(JsonLines(opts.progress_fd))
    return out
