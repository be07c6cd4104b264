"""Child processes: reaped the moment they exit, stopped gracefully, never outliving us.

Two shapes build on ChildProcesses: `forking` (a child per connection, up to a cap)
and the Supervisor (N long-lived workers on one inherited listener: prefork and the
multi-process event loops, `--workers N`), which replaces a worker that dies.

A SIGCHLD handler reaps, so an exited child stays a zombie only until the parent's
main thread next runs Python code: the signal interrupts a blocking accept() or
select(), so that is at once. Waiting for "a child exited, or we were told to stop"
watches the signal wakeup fd: nothing polls, and a signal that lands just before the
wait begins still ends it. Every child asks the kernel to SIGTERM it if the parent
dies, so none outlives the server.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

_PR_SET_PDEATHSIG = 1
_FORK_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}

ExitHook = Callable[[int, Any, int], None]  # (pid, tag, wait status), called from the SIGCHLD handler


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's SIGTERM forwarding still covers the normal case
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _run_child(run: Callable[..., None], args: tuple[Any, ...]) -> NoReturn:
    code = 0
    try:
        run(*args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)  # never return into the parent's code, never run its atexit hooks


def describe_exit(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exited with status {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


class ChildProcesses:
    """The children this process forked: live ones by pid, reaped by a SIGCHLD handler.

    Create, use and close it in the main thread (signal handlers run there).
    """

    def __init__(self, on_exit: ExitHook | None = None) -> None:
        self.live: dict[int, Any] = {}  # pid -> tag given to start()
        self.on_exit = on_exit
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, self._reap)

    def __len__(self) -> int:
        return len(self.live)

    @property
    def wakeup_fd(self) -> int:
        """The descriptor signals wake this process through (signal.set_wakeup_fd)."""
        return self._wake_r

    def start(self, run: Callable[..., None], *args: Any, tag: Any = None, default_signals: bool = False) -> int:
        """Fork a child that runs run(*args) and exits; return its pid in the parent.

        The child keeps the parent's SIGTERM/SIGINT handlers (which act on its own copy
        of the parent's state) unless default_signals, for code that installs its own.
        """
        parent = os.getpid()
        # blocked across fork: the child cannot be reaped before it is recorded, and
        # cannot take a signal before its handlers are what they should be
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORK_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_child(parent, default_signals)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                _run_child(run, args)
            self.live[pid] = tag
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return pid

    def _become_child(self, parent: int, default_signals: bool) -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.live.clear()
        if default_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
        _die_with_parent(parent)

    def _reap(self, _signum: int = 0, _frame: object = None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            tag = self.live.pop(pid, None)
            if self.on_exit is not None:
                self.on_exit(pid, tag, status)

    def wait(self, until: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until until() holds, re-checking after every signal; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # drain first, then check: a signal after the check leaves a byte that ends select()
            self._drain_wakeups()
            if until():
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            select.select([self._wake_r], [], [], left)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def signal_all(self, sig: int) -> None:
        # a pid in live is running or an unreaped zombie, so it cannot belong to anyone else yet
        for pid in list(self.live):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, grace: float) -> bool:
        """SIGTERM every child, wait up to grace, then SIGKILL the rest; True if all left in time."""
        self.signal_all(signal.SIGTERM)
        if self.wait(lambda: not self.live, grace):
            return True
        self.signal_all(signal.SIGKILL)
        self.wait(lambda: not self.live, 5.0)
        return False

    def close(self) -> None:
        """Stop reaping (children still alive are left to the kernel's init) and free the pipe."""
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(self._old_wakeup)
        os.close(self._wake_r)
        os.close(self._wake_w)


def _stopped_cleanly(status: int, killed: bool) -> bool:
    """A worker's exit at the stop: status 0, the stop's SIGTERM, or its SIGKILL if it sent one."""
    code = os.waitstatus_to_exitcode(status)
    return code in (0, -signal.SIGTERM) or (killed and code == -signal.SIGKILL)


class Supervisor:
    """N worker processes running worker(index), each replaced if it dies unexpectedly.

    SIGTERM/SIGINT to the parent stop every worker gracefully (SIGTERM, then SIGKILL
    after the grace period); run() returns only when all of them are gone. Restarts are
    paced, so a worker that crashes at start cannot fork-bomb the machine.
    """

    def __init__(self, count: int, worker: Callable[[int], None], grace: float) -> None:
        self.count = count
        self.worker = worker  # runs in the child with its index; returning means a clean exit
        self.grace = grace
        self.stopping = False
        self._exits: list[tuple[int, int, int]] = []  # (pid, index, status) not yet reported
        self._restarts: list[float] = []

    def _on_signal(self, _signum: int, _frame: object) -> None:
        self.stopping = True  # the wakeup fd ends the main loop's wait

    def run(self, on_started: Callable[[], None] = lambda: None) -> int:
        """Start the workers, call on_started, supervise until SIGTERM/SIGINT. Returns the exit
        code: 0 when every worker stopped with status 0, or was ended by the stop itself (its
        SIGTERM before the worker had set up its own handling, its SIGKILL once the grace period
        was over); 1 when a worker failed (an error status, or another signal)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        children = ChildProcesses(on_exit=lambda pid, index, status: self._exits.append((pid, index, status)))
        try:
            for index in range(self.count):
                children.start(self.worker, index, tag=index, default_signals=True)
            on_started()
            while not self.stopping:
                children.wait(lambda: self.stopping or len(children) < self.count)
                if self.stopping:
                    break
                self._report_exits()
                for index in sorted(set(range(self.count)) - set(children.live.values())):
                    self._pace_restarts(children)
                    if self.stopping:
                        break
                    children.start(self.worker, index, tag=index, default_signals=True)
            killed = not children.stop(self.grace)
        finally:
            children.close()
        failed = [status for _pid, _index, status in self._exits if not _stopped_cleanly(status, killed)]
        self._report_exits(killed)
        return 1 if failed else 0

    def _report_exits(self, killed: bool | None = None) -> None:
        """Say why workers exited: while serving (they are replaced), or at the stop (None: serving)."""
        exits, self._exits = self._exits, []
        for pid, index, status in exits:
            if killed is None:
                print(
                    f"serverzoo: worker {index} (pid {pid}) {describe_exit(status)}; starting a new one",
                    file=sys.stderr,
                    flush=True,
                )
            elif not _stopped_cleanly(status, killed):
                print(
                    f"serverzoo: worker {index} (pid {pid}) {describe_exit(status)} while stopping",
                    file=sys.stderr,
                    flush=True,
                )

    def _pace_restarts(self, children: ChildProcesses) -> None:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 1.0]
        if len(self._restarts) >= 2 * self.count:  # workers die as fast as they start: slow down
            children.wait(lambda: self.stopping, 0.5)
        self._restarts.append(time.monotonic())
