"""The state one worker's connections and drivers share: phases, what to send next, counters.

Everything a completed request touches lives here, kept to plain attributes and arrays
so the hot path stays a few attribute lookups and an append.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from time import monotonic_ns

from .connection import LARGE_BODY, BufferedClientConnection, ClientConnection
from .options import LoadOptions
from .ports import LoopbackSources
from .targets import LoadPlan
from .verification import References, Verifier


@dataclass
class WorkerShare:
    """This worker's part of the run."""

    index: int
    workers: int
    connections: int
    first_slot: int  # global index of this worker's first connection (to spread ramp-up and schedules)
    total_slots: int
    rate: float | None
    requests: int | None
    idle: int
    slow_readers: int
    slow_senders: int
    cpu: int | None


def split(total: int, parts: int) -> list[int]:
    """Split total into parts that differ by at most one, larger first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class Phase:
    """Completions and errors of one phase: ramp_up, warmup, measure, or after (discarded)."""

    __slots__ = (
        "body_bytes",
        "bytes_end",
        "bytes_start",
        "end_ns",
        "error_count",
        "errors",
        "lat",
        "lat_uncorrected",
        "name",
        "start_ns",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.lat = array("q")
        self.lat_uncorrected = array("q")
        self.errors: Counter = Counter()
        self.error_count = 0
        self.body_bytes = 0
        self.start_ns = self.end_ns = 0
        self.bytes_start = self.bytes_end = 0

    def error(self, kind: str, n: int = 1) -> None:
        self.errors[kind] += n
        self.error_count += n


@dataclass
class StageMark:
    """The measured window's counters at a rate stage's boundary."""

    ns: int
    completed: int
    uncorrected: int
    errors: dict[str, int]
    bytes_in: int
    scheduled: int


class Run:
    """The state every connection and driver of this worker shares."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        opts: LoadOptions,
        plan: LoadPlan,
        share: WorkerShare,
        address: str,
        family: int,
    ) -> None:
        self.loop = loop
        self.opts = opts
        self.share = share
        self.address, self.port, self.family = address, plan.server.port, family
        largest = max((t.expect_length or 0) for t in plan.targets)
        self.conn_class = ClientConnection if is_uvloop(loop) and largest < LARGE_BODY else BufferedClientConnection
        self.targets = plan.targets
        self.single = plan.targets[0] if len(plan.sequence) == 1 else None
        self.sequence = plan.sequence
        self.seq_pos = (share.index * 7919) % len(plan.sequence)  # workers walk the draws from different places
        self.sent = [0] * len(plan.targets)  # requests sent per target (mixes only)
        self.sent_window: list[list[int]] = []  # copies of sent at the measured window's start and end
        self.cpu_window: list[float] = []  # this process's CPU time at the same two moments
        self.wait_window: list[float | None] = []  # and its time spent runnable but waiting for a CPU
        self.by_send = opts.requests is not None
        self.open_loop = opts.open_loop
        self.close_each = opts.conn_mode == "new"
        self.reconnect_after = opts.reconnect_after
        # workers start at different addresses of the list, so their connections spread out
        self.sources = LoopbackSources(opts.loopback_sources, share.index * 7919) if opts.loopback_sources else None
        self.depth = opts.depth
        self.think_s = opts.think_s
        self.connect_timeout_s = opts.connect_timeout_s
        self.verifier = Verifier(opts.verify_every)
        self.verify_every = opts.verify_every
        self.expect_status = opts.expect_status
        self.status_bytes = b"%03d" % opts.expect_status
        self.phases = {name: Phase(name) for name in ("ramp_up", "warmup", "measure", "after")}
        self.phase = self.phases["ramp_up"]
        self.bytes_in = 0
        self.references = References()  # bodies kept as references for byte comparison
        self.budget: int | None = None
        self.stopping = False
        self.drivers: list = []
        self.active_drivers = 0
        self.scheduled = 0  # open loop: requests that came due
        self.queued_sends = 0  # open loop: requests that waited for a busy connection
        self.slip = array("q")  # open loop: how late our timer sent a request to a free connection (us)
        self.lag = array("q")  # loop lag probes (us)
        self.marks: list[tuple[int, int, int, int, int]] = []  # (ns, completed, uncorrected, errors, bytes)
        self.stage_marks: list[StageMark] = []  # rate stages: the window's start, each stage's end
        self.unfinished_us: list[int] = []  # ages of the requests still owed when the window closed
        self.finished = loop.create_future()

    # -- what to send ------------------------------------------------------------------
    def take(self):
        """The next target, or None when a request-count budget is spent."""
        budget = self.budget
        if budget is not None:
            if budget <= 0:
                return None
            self.budget = budget - 1
            if budget == 1 and self.open_loop:
                self.loop.call_soon(self._budget_spent)
        if self.single is not None:
            return self.single
        i = self.seq_pos
        self.seq_pos = i + 1 if i + 1 < len(self.sequence) else 0
        index = self.sequence[i]
        self.sent[index] += 1
        return self.targets[index]

    def take_many(self, n: int) -> list:
        out = []
        for _ in range(n):
            t = self.take()
            if t is None:
                break
            out.append(t)
        return out

    def _budget_spent(self) -> None:
        for d in self.drivers:
            d.budget_spent()

    def driver_finished(self) -> None:
        self.active_drivers -= 1
        if self.active_drivers <= 0 and self.phase.name == "measure":
            self.end_measure()

    # -- phases --------------------------------------------------------------------------
    def enter(self, name: str, now: int | None = None) -> None:
        if now is None:
            now = monotonic_ns()
        if name == "measure" or self.phase.name == "measure":  # the measured window opens or closes
            self.sent_window.append(list(self.sent))
            self.cpu_window.append(time.process_time())
            self.wait_window.append(runqueue_wait_s())
        self.phase.end_ns, self.phase.bytes_end = now, self.bytes_in
        self.phase = self.phases[name]
        self.phase.start_ns, self.phase.bytes_start = now, self.bytes_in

    def mark(self, now: int | None = None) -> None:
        p = self.phases["measure"]
        self.marks.append(
            (monotonic_ns() if now is None else now, len(p.lat), len(p.lat_uncorrected), p.error_count, self.bytes_in)
        )

    def stage_mark(self, now: int | None = None) -> StageMark:
        p = self.phases["measure"]
        return StageMark(
            monotonic_ns() if now is None else now,
            len(p.lat),
            len(p.lat_uncorrected),
            dict(p.errors),
            self.bytes_in,
            self.scheduled,
        )

    def end_measure(self) -> None:
        if self.phase.name != "measure":
            return
        now = monotonic_ns()  # one instant ends the window: its last slice and the phase end together
        self.mark(now)
        if self.opts.rate_schedule is not None:
            self.stage_marks.append(self.stage_mark(now))
        # requests still owed now are in no latency figure: their ages are reported instead,
        # so a server that leaves some clients waiting cannot look faster for it
        self.unfinished_us = [(now - since) // 1000 for d in self.drivers for since in d.owed_since()]
        self.enter("after", now)
        self.stop()

    def stop(self) -> None:
        self.stopping = True
        for d in self.drivers:
            d.stop()
        if not self.finished.done():
            self.finished.set_result(None)


def is_uvloop(loop) -> bool:
    return type(loop).__module__.startswith("uvloop")


def runqueue_wait_s() -> float | None:
    """Seconds this thread has spent ready to run but waiting for a CPU (Linux schedstat), if known."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None
