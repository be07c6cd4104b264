"""System calls of a running server's whole process tree, counted by strace while attached.

`strace -f -C -p PID ...` attaches to every thread of every process of the tree, follows
the threads and processes they create, and on SIGINT detaches and prints its summary
table (`-C`: the summary plus the trace itself, which is where a clone's flags are). The
counts come from the summary; threads and processes created come from the clone lines:
a clone with CLONE_THREAD made a thread, any other clone, fork or vfork a process.
strace stops the traced threads on every call, so this runs only in a pass of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .proc_tree import tree_pids

ATTACH_TIMEOUT_S = 5.0
DETACH_TIMEOUT_S = 15.0

_SUMMARY_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")
_CLONE_START = re.compile(r"^(\d+)\s+(clone3|clone|fork|vfork)\((.*)$")
_CLONE_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (clone3|clone|fork|vfork) resumed>(.*)$")
_RESULT = re.compile(r"= (-?\d+)(?:\s.*)?$")


class TracerUnavailable(RuntimeError):
    """The tracer cannot run here (not installed, no ptrace permission); the message is one line."""


@dataclass
class SyscallCounts:
    calls: Counter = field(default_factory=Counter)  # syscall name -> calls
    errors: Counter = field(default_factory=Counter)  # syscall name -> calls that failed (EAGAIN included)
    threads_created: int = 0
    processes_created: int = 0

    @property
    def accepted(self) -> int:
        """Connections the server accepted: accept calls that did not fail."""
        return sum(self.calls[n] - self.errors[n] for n in ("accept", "accept4"))


def strace_binary() -> str | None:
    return shutil.which("strace")


def parse_strace_output(text: str) -> SyscallCounts:
    """Counts from `strace -f -C` output: the summary table, and the clones of the trace above it."""
    out = SyscallCounts()
    pending: dict[str, bool] = {}  # pid -> the unfinished clone makes a thread
    in_summary = False
    for line in text.splitlines():
        if line.startswith("% time"):
            in_summary = True
            continue
        if in_summary:
            m = _SUMMARY_ROW.match(line)
            if m and m.group(3) != "total":
                out.calls[m.group(3)] += int(m.group(1))
                if m.group(2):
                    out.errors[m.group(3)] += int(m.group(2))
            continue
        start = _CLONE_START.match(line)
        if start:
            pid, _, rest = start.groups()
            makes_thread = "CLONE_THREAD" in rest
            if "<unfinished ...>" in rest:
                pending[pid] = makes_thread
                continue
            _count_clone(out, makes_thread, rest)
            continue
        resumed = _CLONE_RESUMED.match(line)
        if resumed and resumed.group(1) in pending:
            _count_clone(out, pending.pop(resumed.group(1)), resumed.group(3))
    return out


def _count_clone(out: SyscallCounts, makes_thread: bool, rest: str) -> None:
    m = _RESULT.search(rest)
    if not m or int(m.group(1)) <= 0:  # failed (EAGAIN) or still unfinished at detach
        return
    if makes_thread:
        out.threads_created += 1
    else:
        out.processes_created += 1


@contextmanager
def strace_attached(pid: int) -> Iterator[SyscallCounts]:
    """Count the tree's system calls while the with-block runs; the counts are filled in at its end.

    TracerUnavailable when strace is missing or cannot attach (ptrace not permitted).
    """
    binary = strace_binary()
    if binary is None:
        raise TracerUnavailable("strace is not installed (Debian package strace)")
    pids = tree_pids(pid)
    if not pids:
        raise TracerUnavailable("the server exited before strace could attach")
    tasks = sum(len(os.listdir(f"/proc/{p}/task")) for p in pids if os.path.isdir(f"/proc/{p}/task"))
    fd, out_path = tempfile.mkstemp(prefix="serverzoo-strace-", suffix=".txt")
    os.close(fd)
    argv = [binary, "-f", "-C", "-s", "0", "-o", out_path]
    for p in pids:
        argv += ["-p", str(p)]
    counts = SyscallCounts()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_attached(proc, err, tasks)
            yield counts
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # detach from every task and write the summary
                try:
                    proc.wait(DETACH_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()  # the tracees are released when their tracer dies
                    proc.wait()
            try:
                with open(out_path, errors="replace") as f:
                    parsed = parse_strace_output(f.read())
            finally:
                os.unlink(out_path)
    counts.calls, counts.errors, counts.threads_created, counts.processes_created = (
        parsed.calls,
        parsed.errors,
        parsed.threads_created,
        parsed.processes_created,
    )


_ATTACHED_WITH = re.compile(r" attached with (\d+) threads")


def attached_tasks(stderr: str) -> int:
    """How many tasks strace says it attached to. Attaching to a process by -p reports all its
    threads in one line ("Process N attached with 33 threads"); a task born later, one line each."""
    total = 0
    for line in stderr.splitlines():
        if " attached" not in line:
            continue
        many = _ATTACHED_WITH.search(line)
        total += int(many.group(1)) if many else 1
    return total


def _wait_attached(proc: subprocess.Popen, err, tasks: int) -> None:
    """Until strace reports every task attached ("Process N attached" on stderr)."""
    deadline = time.monotonic() + ATTACH_TIMEOUT_S
    while True:
        err.seek(0)
        text = err.read().decode(errors="replace")
        attached = attached_tasks(text)
        if attached >= tasks:
            return
        if proc.poll() is None and attached and time.monotonic() > deadline:
            return  # a thread listed a moment ago has exited: strace traces all that remain
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            lines = [ln for ln in text.strip().splitlines() if "attached" not in ln]
            reason = lines[-1] if lines else "no output"
            raise TracerUnavailable(f"strace could not attach: {reason[:200]}")
        time.sleep(0.01)
