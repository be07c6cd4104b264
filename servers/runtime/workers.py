"""Worker processes on one inherited listener: the prefork and multi-process loop shape.

The parent forks N workers, replaces any that die unexpectedly (rate-limited, so a
worker that crashes at start cannot fork-bomb), forwards SIGTERM/SIGINT to all of
them, and returns only when every worker is gone (killing stragglers after the grace
period). Each worker asks the kernel to SIGTERM it if the parent dies, so no worker
outlives its supervisor.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from typing import Callable

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's SIGTERM forwarding still covers the normal case


class Supervisor:
    def __init__(self, count: int, worker: Callable[[int], None], grace: float) -> None:
        self.count = count
        self.worker = worker  # runs in the child with its index; returning means a clean exit
        self.grace = grace
        self.children: dict[int, int] = {}  # pid -> index
        self.stopping = False
        self._restarts: list[float] = []

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _die_with_parent()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)  # the worker installs its own
                self.worker(index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = index

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def run(self, on_started: Callable[[], None] = lambda: None) -> int:
        """Start the workers, call on_started, supervise until shutdown. Returns an exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for index in range(self.count):
            self._spawn(index)
        on_started()
        while self.children and not self.stopping:
            try:
                pid, _status = os.wait()
            except ChildProcessError:
                break
            index = self.children.pop(pid, None)
            if index is None or self.stopping:
                continue
            self._throttle_restarts()
            if not self.stopping:
                self._spawn(index)
        return self._reap_all()

    def _throttle_restarts(self) -> None:
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 1.0] + [now]
        if len(self._restarts) > 2 * self.count:
            time.sleep(0.5)  # workers die as fast as they start: slow down rather than spin

    def _reap_all(self) -> int:
        deadline = time.monotonic() + self.grace + 1.0
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.children.pop(pid, None)
                continue
            if time.monotonic() > deadline:
                for pid in list(self.children):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                deadline = float("inf")
            time.sleep(0.02)
        return 0
