"""CPU time and memory of the server's whole process tree, sampled over a run (psutil).

CPU of a tree, without a cgroup: for every live process, its user + system time plus the
time of the children it has already reaped (children_user/children_system), so a forking
server's short-lived children are counted once reaped; a child that exits between two
samples and is not yet reaped is missed. With a cgroup v2 directory holding the whole tree
(`cgroup`), CPU is the cgroup's usage_usec instead: the kernel charges every process that
ever ran in it, exited or not. RSS is summed over the live processes (pages shared between
forked processes are counted once per process, as `ps` does).
"""

from __future__ import annotations

import os
from time import monotonic_ns

import psutil


class ServerSampler:
    def __init__(self, pid: int, cgroup: str | None = None) -> None:
        self.pid = pid
        self.root = psutil.Process(pid)
        self.cgroup_stat = os.path.join(cgroup, "cpu.stat") if cgroup else None
        self.samples: list[dict] = []  # t_ns, cpu_s, rss_bytes, processes

    def _cgroup_cpu_s(self) -> float | None:
        try:
            with open(self.cgroup_stat, encoding="ascii") as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
        except (OSError, ValueError):
            pass
        return None

    def sample(self) -> dict | None:
        now = monotonic_ns()
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return None  # the server is gone
        cpu = 0.0
        rss = 0
        alive = 0
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    mem = p.memory_info().rss
            except psutil.Error:
                continue  # exited between listing and reading
            cpu += t.user + t.system + t.children_user + t.children_system
            rss += mem
            alive += 1
        if self.cgroup_stat is not None:
            cpu = self._cgroup_cpu_s()
            if cpu is None:
                return None  # the cgroup is gone with the server
        s = {"t_ns": now, "cpu_s": cpu, "rss_bytes": rss, "processes": alive}
        self.samples.append(s)
        return s

    def report(self, window_start_ns: int, window_end_ns: int) -> dict:
        """CPU used and peak RSS within the window, and the samples as seconds from its start."""
        return window_report(
            self.samples, window_start_ns, window_end_ns, self.pid, "cgroup" if self.cgroup_stat else "process tree"
        )


def window_report(samples: list[dict], window_start_ns: int, window_end_ns: int, pid: int, cpu_source: str) -> dict:
    """ServerSampler.report over samples taken elsewhere (a server on another machine): their t_ns
    must be on the window's clock."""
    inside = [s for s in samples if window_start_ns <= s["t_ns"] <= window_end_ns + 200_000_000]
    before = [s for s in samples if s["t_ns"] <= window_start_ns]
    first = before[-1] if before else (inside[0] if inside else None)
    last = inside[-1] if inside else None
    cpu_s = (last["cpu_s"] - first["cpu_s"]) if first and last else None
    span = (last["t_ns"] - first["t_ns"]) / 1e9 if first and last else 0.0
    rows = []
    prev = first
    for s in inside:
        dt = (s["t_ns"] - prev["t_ns"]) / 1e9 if prev else 0.0
        rows.append(
            {
                "t": round((s["t_ns"] - window_start_ns) / 1e9, 3),
                "cpu_percent": round((s["cpu_s"] - prev["cpu_s"]) / dt * 100, 1) if prev and dt > 0 else None,
                "rss_bytes": s["rss_bytes"],
                "processes": s["processes"],
            }
        )
        prev = s
    return {
        "pid": pid,
        "cpu_source": cpu_source,
        "cpu_s": round(cpu_s, 3) if cpu_s is not None else None,
        "cpu_percent": round(cpu_s / span * 100, 1) if cpu_s is not None and span > 0 else None,
        "peak_rss_bytes": max((s["rss_bytes"] for s in inside), default=None),
        "peak_processes": max((s["processes"] for s in inside), default=None),
        "samples": rows,
    }
