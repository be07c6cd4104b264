"""A cgroup v2 per cell, so the server's CPU counts every process it ever ran, exited ones included.

A forking server's children live for one connection; sampling live processes misses the
ones that exit between two samples before their parent reaps them. The kernel charges a
cgroup for every process that ran in it, so the cell moves the server's process tree into a
fresh cgroup once it is ready (its later children are born inside) and the load generator
reads the cgroup's cpu.stat at the measured window's ends.

Where cgroup v2 is not mounted or not writable (no root, a read-only mount), cells fall back
to sampling the process tree (clients/loadgen/server_sampler.py), and say so.

The cgroup is removed when the cell ends, also on errors and Ctrl-C (the runner's stop runs
in a `finally`); a run that was killed outright leaves its cgroups behind, and the next run
removes those whose runner process is gone.
"""

from __future__ import annotations

import errno
import os
import time
from typing import Any

import psutil

PREFIX = "serverzoo-cell-"
REMOVE_WAIT_S = 3.0  # the stopped server's processes leave the cgroup as they are reaped


def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid systems)."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return None


def usable_root() -> tuple[str | None, str]:
    """(directory to create cell cgroups in, or None; why not, when None)."""
    mount = cgroup2_mount()
    if mount is None:
        return None, "no cgroup v2 mount"
    if not os.access(mount, os.W_OK):
        return None, f"{mount} is not writable (not root)"
    return mount, ""


class CellCgroup:
    """One cell's cgroup: created, given the server's tree, removed."""

    def __init__(self, root: str, name: str) -> None:
        self.path = os.path.join(root, name)
        os.mkdir(self.path)

    def adopt(self, pid: int) -> int:
        """Move a process and its descendants in; returns how many moved."""
        try:
            procs = [psutil.Process(pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            return 0
        moved = 0
        for p in procs:
            try:
                with open(os.path.join(self.path, "cgroup.procs"), "w", encoding="ascii") as f:
                    f.write(str(p.pid))
                moved += 1
            except ProcessLookupError:
                pass  # exited meanwhile
        return moved

    def memory_peak(self) -> int | None:
        """Peak memory of everything that ran inside (memory.peak), where the memory controller is on."""
        try:
            with open(os.path.join(self.path, "memory.peak"), encoding="ascii") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _members(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs"), encoding="ascii") as f:
                return [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            return []

    def remove(self) -> str | None:
        """Remove the cgroup; a one-line problem if something was left running in it."""
        problem = None
        deadline = time.monotonic() + REMOVE_WAIT_S
        while True:
            try:
                os.rmdir(self.path)
                return problem
            except FileNotFoundError:
                return problem
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    return f"cannot remove {self.path}: {exc.strerror}"
            if time.monotonic() >= deadline:
                left = self._members()
                if not left or problem is not None:
                    return f"cannot remove {self.path}: still busy"
                # the server's own processes, started by this cell, outlived its stop: end them
                problem = f"{len(left)} server process(es) outlived the server's stop and were killed"
                try:
                    with open(os.path.join(self.path, "cgroup.kill"), "w", encoding="ascii") as f:
                        f.write("1")
                except OSError:
                    for pid in left:
                        try:
                            os.kill(pid, 9)
                        except OSError:
                            pass
                deadline = time.monotonic() + REMOVE_WAIT_S
            time.sleep(0.02)


def remove_stale(root: str) -> None:
    """Remove empty cell cgroups left by runs whose runner process is gone (killed outright)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX) :].partition("-")[0]
        if owner.isdigit() and psutil.pid_exists(int(owner)):
            continue
        try:
            os.rmdir(os.path.join(root, name))
        except OSError:
            pass  # still populated: left for whoever owns those processes


class CgroupPlacer:
    """Makes each cell's cgroup under one root, or says why cells fall back to the process tree."""

    def __init__(self, enabled: bool = True) -> None:
        self.root, self.why_not = usable_root() if enabled else (None, "disabled")
        self.count = 0
        if self.root is not None:
            remove_stale(self.root)

    def new(self) -> CellCgroup | None:
        if self.root is None:
            return None
        self.count += 1
        try:
            return CellCgroup(self.root, f"{PREFIX}{os.getpid()}-{self.count}")
        except OSError as exc:
            self.root, self.why_not = None, f"cannot create a cgroup: {exc.strerror}"
            return None

    def describe(self) -> dict[str, Any]:
        return {"cgroup_root": self.root, "fallback": self.why_not or None}
