"""One generator process: an event loop driving its share of the connections.

Run as `python -m serverzoo.clients.loadgen.worker` by the coordinator, which sends it
its plan on stdin, then the common start time, and reads length-prefixed pickled
messages from its stdout (ready, one tick a second, the result). CLOCK_MONOTONIC is
shared by all processes of the machine, so the phases of all workers line up.

During the run a completed request costs an array append; histograms, percentiles and
the per-interval timeline are computed after the loop has stopped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import traceback
from array import array
from collections import Counter
from time import monotonic_ns

from . import keepalive_sockets, latency
from .adversaries import start_adversaries
from .drivers import ClosedLoopDriver, OpenLoopDriver
from .fresh_connections import FreshConnectionClients
from .keepalive_sockets import KeepAliveClients
from .messages import read_message, write_message
from .options import LoadOptions
from .slo import parse_goals
from .slo_watch import Tally, violation_limits
from .state import Run, WorkerShare, is_uvloop
from .targets import LoadPlan
from .verification import preload_references

SWEEP_S = 0.1  # how often timeouts are checked
LAG_PROBE_S = 0.05  # how often the loop's lag is sampled


def new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """uvloop when installed (or asked for), else the standard library's loop."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError("uvloop is not installed") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class Worker:
    def __init__(self, opts: LoadOptions, plan: LoadPlan, share: WorkerShare, out_fd: int | None) -> None:
        self.opts, self.plan, self.share, self.out_fd = opts, plan, share, out_fd
        self._window_end_ns: int | None = None  # a timed window's end on the shared clock, once it opens
        info = socket.getaddrinfo(plan.server.host, plan.server.port, type=socket.SOCK_STREAM)[0]
        self.family, self.address = info[0], info[4][0]
        self.loop = new_event_loop(opts.loop)
        self.loop.set_exception_handler(self._on_loop_error)
        self.internal_errors: list[str] = []
        self.run = Run(self.loop, opts, plan, share, self.address, self.family)
        if opts.corpus and opts.verify_every:
            self.run.references.held = preload_references(plan.targets, opts.corpus)
        self.adversaries: list = []
        self.adversary_stats: dict = {}
        self.ticks_sent = 0
        # a person watches the live view: send tick histograms. Not for a bench's progress pipe, which shows
        # requests/s and errors: a histogram a second costs the generator CPU inside the measured window.
        self.live_figures = opts.live
        self.ticked: dict[str, int] = {}  # phase -> its latency count at the last tick
        self.tally = Tally(violation_limits(parse_goals(opts.slos))) if opts.abort_on_fail else None

    def _on_loop_error(self, loop, context: dict) -> None:
        """An exception escaped a callback: a bug in the generator. Stop rather than report a lie."""
        exc = context.get("exception")
        text = f"{type(exc).__name__}: {exc}" if exc else context.get("message", "unknown loop error")
        if exc is not None:
            text += "\n" + "".join(traceback.format_exception(exc))
        self.internal_errors.append(text)
        self.run.stop()

    # -- the run --------------------------------------------------------------------------
    def execute(self, start_ns: int, stop_fd: int | None = None) -> dict:
        try:
            return self.loop.run_until_complete(self._main(start_ns, stop_fd))
        finally:
            self.loop.close()

    def _at(self, when_ns: int, callback, *args) -> asyncio.TimerHandle:
        return self.loop.call_later(max(when_ns - monotonic_ns(), 0) / 1e9, callback, *args)

    async def _main(self, start_ns: int, stop_fd: int | None) -> dict:
        opts, run, share = self.opts, self.run, self.share
        if stop_fd is not None:
            self.loop.add_reader(stop_fd, self._on_stop_message, stop_fd)
        delay = (start_ns - monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        ramp_ns = int(opts.ramp_up_s * 1e9)
        warm_ns = int(opts.warmup_s * 1e9)
        measure_ns = start_ns + ramp_ns + warm_ns
        if ramp_ns:
            run.phase.start_ns = monotonic_ns()
        elif warm_ns:
            run.enter("warmup")
        self._make_drivers()
        if measure_ns <= start_ns:
            self._begin_measure(measure_ns)  # no ramp-up or warm-up: count from the first request
        else:
            self._at(measure_ns, self._begin_measure, measure_ns)
        for i, d in enumerate(run.drivers):
            offset = ramp_ns * (share.first_slot + i) // share.total_slots
            self._at(start_ns + offset, d.start)
        if ramp_ns and warm_ns:
            self._at(start_ns + ramp_ns, run.enter, "warmup")
        self._sweep()
        self._probe_lag(monotonic_ns())
        self._at(start_ns + 1_000_000_000, self._tick, start_ns + 1_000_000_000)
        await run.finished
        for a in self.adversaries:
            a.stop()
        await asyncio.sleep(0)  # let aborted transports report before the loop closes
        if self.internal_errors:
            raise InternalError(self.internal_errors[0])
        return self._result()

    def _make_drivers(self) -> None:
        run, share, opts = self.run, self.share, self.opts
        if opts.conn_mode == "new" and not opts.open_loop and not opts.think_s:
            run.drivers.extend(FreshConnectionClients(run, share.connections, run.sources).slots)
            run.active_drivers = len(run.drivers)
            return
        if keepalive_sockets.suits(opts, self.plan):
            run.drivers.extend(KeepAliveClients(run, share.connections, run.sources).slots)
            run.active_drivers = len(run.drivers)
            return
        for i in range(share.connections):
            if opts.open_loop:
                slot = share.first_slot + i
                d = OpenLoopDriver(
                    run,
                    i,
                    share.rate / share.connections,
                    slot / share.total_slots,
                    opts.arrivals == "poisson",
                    seed=hash((opts.seed, slot)),
                )
            else:
                d = ClosedLoopDriver(run, i)
            run.drivers.append(d)
        run.active_drivers = len(run.drivers)

    def connect_adversaries(self) -> None:
        """Open the idle, slow-reading and slow-sending connections, and wait for their first connects.

        Called before the worker reports ready, so on every worker they are in place before any
        active client connects: a server that gives each connection a thread or a process meets
        them first, as it would meet clients that were already there.
        """
        s, opts = self.share, self.opts
        if not (s.idle or s.slow_readers or s.slow_senders):
            return
        read_target = self.plan.slow_read_target or self.plan.largest_target()
        self.adversaries, self.adversary_stats = start_adversaries(
            self.run,
            s.idle,
            s.slow_readers,
            s.slow_senders,
            read_target,
            opts.slow_read_rate,
            self.plan.targets[0],
            opts.slow_send_interval_s,
        )
        tasks = [a.task for a in self.adversaries if a.task is not None]
        if not tasks:
            return
        # a connect that fails is retried in the background; the wait is bounded by the connect timeout
        self.loop.run_until_complete(asyncio.wait(tasks, timeout=self.opts.connect_timeout_s))

    def _begin_measure(self, measure_ns: int) -> None:
        run = self.run
        if run.stopping:
            return
        run.enter("measure")
        if self.share.requests is not None:
            run.budget = self.share.requests  # from now on each request sent counts against it
        else:
            self._window_end_ns = measure_ns + int(self.opts.measured_duration * 1e9)
            self._at(self._window_end_ns, run.end_measure)
        step = int(self.opts.timeline_interval_s * 1e9)
        self._slice_after(measure_ns, step)
        schedule = self.opts.rate_schedule
        if schedule is not None:
            run.stage_marks.append(run.stage_mark())
            for t, rate in schedule.changes():
                self._at(measure_ns + int(t * 1e9), self._set_rate, rate)
            for _start, end, _rate in schedule.stages()[:-1]:  # the last one ends with the window
                self._at(measure_ns + int(end * 1e9), self._stage_end)

    def _set_rate(self, total: float) -> None:
        per_connection = total / self.opts.connections
        for d in self.run.drivers:
            d.set_rate(per_connection)

    def _stage_end(self) -> None:
        run = self.run
        if run.phase.name == "measure":
            run.stage_marks.append(run.stage_mark())

    def _slice_end(self, when_ns: int, step: int) -> None:
        """Close one slice of the timeline (every --timeline-interval, from the window's start)."""
        run = self.run
        if run.phase.name != "measure":
            return
        run.mark()
        self._slice_after(when_ns, step)

    def _slice_after(self, when_ns: int, step: int) -> None:
        """Schedule the next slice boundary, unless the window ends there or before: its end closes the
        last slice. A boundary timed with the end could fire first or second, and one worker would then
        have a sliver of a slice more than another, whose slices are merged by their index."""
        end = self._window_end_ns
        if end is None or when_ns + step < end:
            self._at(when_ns + step, self._slice_end, when_ns + step, step)

    def _sweep(self) -> None:
        run = self.run
        if run.stopping:
            return
        now = monotonic_ns()
        read_ns, connect_ns = int(self.opts.timeout_s * 1e9), int(self.opts.connect_timeout_s * 1e9)
        for d in run.drivers:
            d.check_timeouts(now, read_ns, connect_ns)
        self.loop.call_later(SWEEP_S, self._sweep)

    def _probe_lag(self, expected_ns: int) -> None:
        run = self.run
        if run.stopping:
            return
        now = monotonic_ns()
        if run.phase.name == "measure":
            run.lag.append(max(now - expected_ns, 0) // 1000)
        self.loop.call_later(LAG_PROBE_S, self._probe_lag, now + int(LAG_PROBE_S * 1e9))

    def _tick(self, when_ns: int, seq: int = 1) -> None:
        """Once a second: progress for the coordinator's live figures (live.py).

        With a live display, the latencies completed since the last tick go along as one
        histogram per phase, built in bulk: the coordinator merges them into the second's
        percentiles, and the measured ones into the window's.
        """
        run = self.run
        if run.stopping or self.out_fd is None:
            return
        p = run.phase
        done = sum(len(ph.lat) for ph in run.phases.values())
        errors: Counter = Counter()
        for ph in run.phases.values():
            errors.update(ph.errors)
        recent = []
        if self.live_figures:
            for name in ("ramp_up", "warmup", "measure"):
                values = run.phases[name].lat
                since = self.ticked.get(name, 0)
                if len(values) > since:
                    recent.append((name, latency.encode(latency.histogram_of(values[since:]))))
                    self.ticked[name] = len(values)
        tick = {
            "seq": seq,
            "phase": p.name,
            "completed": done,
            "measured": len(run.phases["measure"].lat),
            "errors": dict(errors),
            "recent": recent,
            "ns": monotonic_ns(),
        }
        if self.tally is not None:
            tick["slo"] = self._slo_progress()
        write_message(self.out_fd, ("tick", tick))
        self._at(when_ns + 1_000_000_000, self._tick, when_ns + 1_000_000_000, seq + 1)

    def _slo_progress(self) -> dict:
        """--abort-on-fail: this share's measured window so far, and the most outcomes it can
        still bring (slo_watch says how the coordinator proves a goal lost from these)."""
        run, m = self.run, self.run.phases["measure"]
        assert self.tally is not None
        beyond = self.tally.update(m.lat)
        remaining = None
        if run.phase is m:
            if self.share.requests is not None:
                remaining = self.share.requests - len(m.lat) - m.error_count
            elif run.open_loop:
                end_ns = m.start_ns + int(self.opts.measured_duration * 1e9)
                remaining = sum(len(d.owed_since()) for d in run.drivers) + sum(
                    d.arrivals_before(end_ns) for d in run.drivers
                )
        return {"responses": len(m.lat), "errors": m.error_count, "violations": beyond, "remaining": remaining}

    def _on_stop_message(self, fd: int) -> None:
        try:
            message = read_message(fd)
        except (EOFError, OSError):
            message = ("stop",)  # the coordinator went away: finish
        if message[0] == "stop":
            self.loop.remove_reader(fd)
            if self.run.phase.name == "measure":
                self.run.end_measure()
            else:
                self.run.stop()

    # -- the result ---------------------------------------------------------------------------
    def _result(self) -> dict:
        run = self.run
        phases = {}
        for name in ("ramp_up", "warmup", "measure"):
            p = run.phases[name]
            corrected = latency.histogram_of(p.lat)
            phases[name] = {
                "requests": len(p.lat),
                "errors": dict(p.errors),
                "body_bytes": p.body_bytes,
                "bytes": p.bytes_end - p.bytes_start if p.end_ns else 0,
                "start_ns": p.start_ns,
                "end_ns": p.end_ns,
                "raw": latency.RawStats.of(p.lat).to_dict(),
                "histogram": latency.encode(corrected),
                "raw_uncorrected": latency.RawStats.of(p.lat_uncorrected).to_dict() if run.open_loop else None,
                "histogram_uncorrected": latency.encode(latency.histogram_of(p.lat_uncorrected))
                if run.open_loop
                else None,
            }
        m = run.phases["measure"]
        timeline = []
        start = (m.start_ns, 0, 0, 0, m.bytes_start)
        for prev, cur in zip([start, *run.marks], run.marks):
            if cur[0] <= prev[0]:
                continue
            values = m.lat[prev[1] : cur[1]]
            timeline.append(
                {
                    "start_ns": prev[0],
                    "end_ns": cur[0],
                    "requests": cur[1] - prev[1],
                    "errors": cur[3] - prev[3],
                    "bytes": cur[4] - prev[4],
                    "histogram": latency.encode(latency.histogram_of(values)),
                }
            )
        stages = []
        for a, b in zip(run.stage_marks, run.stage_marks[1:], strict=False):
            stages.append(
                {
                    "start_ns": a.ns,
                    "end_ns": b.ns,
                    "requests": b.completed - a.completed,
                    "errors": {k: n - a.errors.get(k, 0) for k, n in b.errors.items() if n > a.errors.get(k, 0)},
                    "bytes": b.bytes_in - a.bytes_in,
                    "scheduled": b.scheduled - a.scheduled,
                    "raw": latency.RawStats.of(m.lat[a.completed : b.completed]).to_dict(),
                    "histogram": latency.encode(latency.histogram_of(m.lat[a.completed : b.completed])),
                    "raw_uncorrected": latency.RawStats.of(m.lat_uncorrected[a.uncorrected : b.uncorrected]).to_dict(),
                    "histogram_uncorrected": latency.encode(
                        latency.histogram_of(m.lat_uncorrected[a.uncorrected : b.uncorrected])
                    ),
                }
            )
        cpu_s = run.cpu_window[1] - run.cpu_window[0] if len(run.cpu_window) == 2 else 0.0
        waits = run.wait_window
        wait_s = waits[1] - waits[0] if len(waits) == 2 and None not in waits else None
        return {
            "worker": self.share.index,
            "cpu": self.share.cpu,
            "pid": os.getpid(),
            "loop": "uvloop" if is_uvloop(self.loop) else "asyncio",
            "phases": phases,
            "timeline": timeline,
            "stages": stages,
            "cpu_s": cpu_s,
            "unfinished_us": run.unfinished_us,
            "runqueue_wait_s": wait_s,
            "lag": latency.RawStats.of(run.lag).to_dict()
            | {"p50_us": _quantile(run.lag, 0.5), "p99_us": _quantile(run.lag, 0.99)},
            "open_loop": {
                "scheduled": run.scheduled,
                "queued_sends": run.queued_sends,
                "slip": latency.RawStats.of(run.slip).to_dict() | {"p99_us": _quantile(run.slip, 0.99)},
            }
            if run.open_loop
            else None,
            "adversaries": self.adversary_stats or None,
            "sent": [b - a for a, b in zip(*run.sent_window)]
            if run.single is None and len(run.sent_window) == 2
            else None,
        }


class InternalError(RuntimeError):
    """An exception inside the event loop's callbacks."""


def _quantile(values: array, q: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> int:
    """Entry point of a worker process (see the module docstring)."""
    out_fd = os.dup(1)
    os.dup2(2, 1)  # a stray print must not corrupt the message pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when to stop
    try:
        opts, plan, share = read_message(0)
        if share.cpu is not None:
            os.sched_setaffinity(0, {share.cpu})
        worker = Worker(opts, plan, share, out_fd)
        worker.connect_adversaries()
        write_message(out_fd, ("ready", {"pid": os.getpid(), "loop": type(worker.loop).__module__}))
        message = read_message(0)
        if message[0] != "start":
            return 0
        result = worker.execute(message[1], stop_fd=0)
        write_message(out_fd, ("result", result))
        return 0
    except Exception as exc:  # reported to the coordinator, which raises it as one line
        try:
            write_message(out_fd, ("failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
