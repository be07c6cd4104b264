"""A server's process tree read from /proc: CPU time, context switches, threads, memory.

What /proc can and cannot say, and how each figure copes:
- CPU time: a process's utime/stime cover all its threads, live and exited, and
  cutime/cstime add the children it has reaped, so a before/after pair of readings of
  the live tree is exact over the window, whatever started and ended inside it.
- Context switches: /proc/PID/task/TID/status counts one live thread only; a thread or
  child that exits takes its counts with it. The whole-life total of a process comes
  only from wait4(), which adds every thread and every descendant it reaped. So the
  total over a load window is (the tree's total when the window is over) - (the live
  counts when it began), and `kill_counting_switches` below takes the first figure:
  once the tree has settled it reads the live counts of the root's child processes
  (prefork's workers: the root will not reap those), then kills the root with SIGKILL
  and adds its wait4() figures. SIGKILL, not a graceful stop: an interpreter shutting
  down switches too, and more so on a busy machine, which no measurement could
  subtract reliably.
- Threads and processes alive: sampled (TaskSampler), so a thread that lives less than
  the sampling interval can be missed; creation counts come from strace instead.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

import psutil

from serverzoo.servers.launch import ServerProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuTimes:
    user_s: float
    system_s: float

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.user_s - other.user_s, self.system_s - other.system_s)


@dataclass(frozen=True)
class Switches:
    voluntary: int
    involuntary: int

    def __sub__(self, other: Switches) -> Switches:
        return Switches(self.voluntary - other.voluntary, self.involuntary - other.involuntary)

    def __add__(self, other: Switches) -> Switches:
        return Switches(self.voluntary + other.voluntary, self.involuntary + other.involuntary)


def tree_pids(pid: int) -> list[int]:
    """The process and its live descendants (an empty list once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [pid] + [p.pid for p in root.children(recursive=True)]
    except psutil.Error:
        return []


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: fields start after the last ')'
    return text[text.rindex(")") + 2 :].split()


def tree_cpu(pid: int) -> CpuTimes:
    """User and system CPU of the tree: every live process's own (all threads) plus what it reaped."""
    user = system = 0
    for p in tree_pids(pid):
        f = _stat_fields(p)
        if f is None:
            continue  # exited between listing and reading: its parent's cutime has it once reaped
        # fields 14-17 of /proc/PID/stat: utime stime cutime cstime (index 11-14 after the name)
        user += int(f[11]) + int(f[13])
        system += int(f[12]) + int(f[14])
    return CpuTimes(user / CLOCK_TICKS, system / CLOCK_TICKS)


def _task_switches(pid: int, tid: str) -> tuple[int, int]:
    vol = invol = 0
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    vol = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    invol = int(line.split()[1])
    except OSError:
        pass
    return vol, invol


def live_switches(pid: int, recursive: bool = True) -> Switches:
    """Context switches of every live thread of the tree, or of the one process (exited threads
    are not in /proc any more)."""
    vol = invol = 0
    for p in tree_pids(pid) if recursive else [pid]:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            v, i = _task_switches(p, tid)
            vol += v
            invol += i
    return Switches(vol, invol)


def tree_threads(pid: int) -> tuple[int, int]:
    """(processes, threads) alive in the tree now; threads counts every task, main threads included."""
    procs = threads = 0
    for p in tree_pids(pid):
        f = _stat_fields(p)
        if f is None:
            continue
        procs += 1
        threads += int(f[17])  # num_threads (field 20)
    return procs, threads


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of the tree in bytes. RSS counts a page shared by forked processes once per
    process, as `ps` does; PSS splits it between them, so it is the fair sum for a forking model."""
    rss = pss = 0
    for p in tree_pids(pid):
        try:
            info = psutil.Process(p).memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


class TaskSampler:
    """Polls the tree's process and thread counts from a thread; keeps the peaks and the range."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.threads_peak = 0
        self.processes_min: int | None = None
        self.processes_max = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="task-sampler", daemon=True)

    def _take(self) -> None:
        procs, threads = tree_threads(self.pid)
        if procs == 0:
            return
        self.samples += 1
        self.threads_peak = max(self.threads_peak, threads)
        self.processes_max = max(self.processes_max, procs)
        self.processes_min = procs if self.processes_min is None else min(self.processes_min, procs)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def __enter__(self) -> TaskSampler:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()


def kill_counting_switches(server: ServerProcess, settle_s: float = 1.0, processes: int = 1) -> Switches:
    """End the server, returning the context switches of its whole tree over its whole life.

    First up to settle_s for the tree to come back to `processes` processes (the children
    of finished connections exit and are reaped, adding their counts to the root's),
    then the live counts of the child processes still there, then SIGKILL to the root
    and its wait4() figures (its threads, live and exited, and every child it reaped),
    then SIGKILL to the children left (by PID).
    """
    proc = server.proc
    deadline = time.monotonic() + settle_s
    while len(tree_pids(proc.pid)) > processes and time.monotonic() < deadline:
        time.sleep(0.01)
    children = tree_pids(proc.pid)[1:]
    alive_children = Switches(0, 0)
    for child in children:
        alive_children = alive_children + live_switches(child, recursive=False)
    proc.kill()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone already (its parent's death signal)
    psutil.wait_procs([p for p in map(_process, children) if p is not None], timeout=5)
    server.stop()  # closes the pipes; the process is already reaped
    return alive_children + Switches(usage.ru_nvcsw, usage.ru_nivcsw)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def start_server(model: str, root: str, args: tuple[str, ...], cpus: list[int] | None) -> ServerProcess:
    """A fresh `serverzoo serve` pinned to cpus, started and READY (ServerStartError if not)."""
    server = ServerProcess(model, root, *args, cpus=cpus)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server
