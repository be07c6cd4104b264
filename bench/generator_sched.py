"""How a run's generator processes share their core: time slices, context switches, epoll waits.

What one process with every connection does differently from two processes with half each
shows in the scheduler's counters and the system calls, not in the rates alone. A
GeneratorWatch follows a running `serverzoo load` process tree: it finds the generator
processes (`python -m serverzoo.clients.loadgen.worker`), waits until they are loading (they
hold most of the run's connections open) and the warm-up has passed, then reads over an interval:

- per generator, /proc/PID/schedstat (time slices: how often it was put on a CPU) and
  /proc/PID/status (voluntary and involuntary context switches), summed;
- with perf installed and allowed, the epoll_wait and epoll_pwait calls of the generators
  (in-kernel counters of the syscall tracepoints: the generators run at full speed). The
  event loop's wait and the raw-socket paths' own epoll set cost one of each per readiness
  batch, so their calls per request are the inverse of the batch size.

Divided by the requests of that interval (the run's measured rate times its length) these
are per-request figures comparable between sides of one comparison.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import psutil

GENERATOR = "serverzoo.clients.loadgen.worker"  # the generator processes' command line
EPOLL_EVENTS = ("syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_epoll_pwait")
SPARE_FDS = 16  # a generator's descriptors besides its sockets (pipes, its epoll sets, stdio) are fewer
FIND_TIMEOUT_S = 30.0  # a cluster's generators start after its LocalCluster: seconds, not more


def generators(root: psutil.Process) -> list[psutil.Process]:
    """The generator processes under root."""
    found = []
    for p in root.children(recursive=True):
        try:
            if GENERATOR in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _counters(p: psutil.Process) -> dict[str, int]:
    with open(f"/proc/{p.pid}/schedstat") as f:
        _run_ns, _wait_ns, slices = map(int, f.read().split())
    out = {"slices": slices}
    with open(f"/proc/{p.pid}/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                name, value = line.split(":")
                out[name] = int(value)
    return out


def _perf_count(pids: list[int], seconds: float) -> dict[str, int] | None:
    """perf stat's counts of the epoll waits of pids over seconds; None without a usable perf."""
    perf = shutil.which("perf")
    if perf is None:
        time.sleep(seconds)
        return None
    argv = [perf, "stat", "-x,", "-e", ",".join(EPOLL_EVENTS), "-p", ",".join(map(str, pids)), "--"]
    done = subprocess.run([*argv, "sleep", f"{seconds:g}"], capture_output=True, text=True, check=False)
    counts = {}
    for line in done.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit() and fields[2] in EPOLL_EVENTS:
            counts[fields[2]] = int(fields[0])
    return counts if len(counts) == len(EPOLL_EVENTS) else None


class GeneratorWatch:
    """Reads the generators' counters over `seconds`, once `expected` generators under root_pid are loading
    (together they hold at least half of `connections` open) and `settle_s` more have passed (the
    warm-up). In a thread of its own; `figures(rps)` after the run."""

    def __init__(self, root_pid: int, expected: int, connections: int, settle_s: float, seconds: float) -> None:
        self.root = psutil.Process(root_pid)
        self.expected, self.settle_s, self.seconds = expected, settle_s, seconds
        self.loading_fds = connections // 2 + SPARE_FDS * expected
        self.counts: dict[str, int] | None = None
        self.epoll: dict[str, int] | None = None
        self.interval_s = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            deadline = time.monotonic() + FIND_TIMEOUT_S
            found: list[psutil.Process] = []
            while time.monotonic() < deadline:
                found = generators(self.root)
                if len(found) == self.expected and sum(p.num_fds() for p in found) >= self.loading_fds:
                    break
                time.sleep(0.1)
            else:
                return
            time.sleep(self.settle_s)
            before = [_counters(p) for p in found]
            t0 = time.monotonic()
            self.epoll = _perf_count([p.pid for p in found], self.seconds)
            after = [_counters(p) for p in found]
            self.interval_s = time.monotonic() - t0
        except (psutil.Error, OSError):
            return  # the run ended first (or failed): no figures
        self.counts = {k: sum(a[k] - b[k] for a, b in zip(after, before, strict=True)) for k in before[0]}

    def figures(self, rps: float) -> dict | None:
        """Per request and per second, with rps the run's measured rate; None if the watch saw nothing."""
        self.thread.join()
        if self.counts is None or self.interval_s <= 0 or rps <= 0:
            return None
        requests = rps * self.interval_s
        return {
            "slices_per_s": round(self.counts["slices"] / self.interval_s, 1),
            "involuntary_switches_per_s": round(self.counts["nonvoluntary_ctxt_switches"] / self.interval_s, 1),
            "voluntary_switches_per_s": round(self.counts["voluntary_ctxt_switches"] / self.interval_s, 1),
            "requests_per_slice": round(requests / self.counts["slices"], 1) if self.counts["slices"] else None,
            # the event loop's wait (epoll_pwait under uvloop) and the socket path's own poll (epoll_wait)
            "epoll_waits_per_request": round(sum(self.epoll.values()) / requests, 4) if self.epoll else None,
        }
