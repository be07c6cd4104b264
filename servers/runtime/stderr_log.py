"""A server's stderr: bounded in lines, and never able to block the process.

What a client does must not decide how much a server writes, and a full or slow stderr
(a pipe nobody drains, a stalled terminal) must not stop it from serving. So in a server
process sys.stderr is a BoundedStderr:

- Repeated reports of one kind (`report(kind, line)`: "accept: out of descriptors", an
  event loop's "connection reset") print the first line of each interval; the rest are
  counted, and the count is printed as one summary line when the kind is next reported
  after the interval, or when the process exits.
- Anything else written to sys.stderr (a traceback from a bug, a library's warning) is
  limited to a budget of lines per interval; lines over it are counted and summarised
  the same way.
- Lines go out with one write each, on a private non-blocking handle: a pipe's or a
  terminal's is reopened through /proc with O_NONBLOCK (a new open file description, so
  whoever shares the pipe keeps theirs blocking), a socket gets MSG_DONTWAIT. A line
  that does not fit is dropped and counted, never waited for. A regular file is written
  as it is (the kernel does not block on it for long).
"""

from __future__ import annotations

import atexit
import io
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable

INTERVAL = 10.0  # seconds: one line per kind, and the raw-output budget, per interval
RAW_LINES_PER_INTERVAL = 64  # lines of other output (tracebacks, warnings) per interval
MAX_LINE_BYTES = 2000  # longer lines are cut (one write of a short line is atomic on a pipe)
MAX_KINDS = 64  # distinct kinds tracked; beyond that, reports share one catch-all kind
RAW = "other output"
DROPPED = "lines dropped because stderr was full"


class BoundedStderr(io.TextIOBase):
    """A text stream for sys.stderr that rate-limits by kind and never blocks (see module doc)."""

    def __init__(self, fd: int = 2, prefix: str = "serverzoo", clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._fd = fd
        self._prefix = prefix
        self._clock = clock
        self._lock = threading.RLock()  # threaded models report from many threads
        self._write = _nonblocking_writer(fd)
        self._partial = ""  # text written without its newline yet (print() writes it apart)
        self._kinds: dict[str, list[float]] = {}  # kind -> [interval start, lines printed, lines held back]
        self._dropped = 0  # lines lost to a full stderr, reported once it takes lines again
        self._dropping = False
        # a child forked while another thread held the lock would wait for it forever
        os.register_at_fork(after_in_child=self._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.RLock()

    # -- the two ways in ----------------------------------------------------------------
    def report(self, kind: str, line: str, limit: int = 1) -> None:
        """One line about an event of `kind`; at most `limit` such lines per interval are printed."""
        with self._lock:
            if self._admit(kind, limit):
                self._emit(line)

    def write(self, text: str) -> int:
        with self._lock:
            data = self._partial + text
            lines = data.split("\n")
            self._partial = lines.pop()
            if len(self._partial) > MAX_LINE_BYTES:
                lines.append(self._partial)
                self._partial = ""
            for line in lines:
                if self._admit(RAW, RAW_LINES_PER_INTERVAL):
                    self._emit(line)
        return len(text)

    # -- file-like odds and ends --------------------------------------------------------
    def flush(self) -> None:
        pass  # nothing is buffered except a partial line, which waits for its newline

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    encoding = "utf-8"
    errors = "backslashreplace"

    def close_summaries(self) -> None:
        """At exit: the counts still held back, and the last partial line."""
        with self._lock:
            if self._partial:
                line, self._partial = self._partial, ""
                if self._admit(RAW, RAW_LINES_PER_INTERVAL):
                    self._emit(line)
            now = self._clock()
            for kind, state in self._kinds.items():
                if state[2]:
                    self._emit(self._summary(kind, state, now))
                    state[2] = 0
            if self._dropped:
                self._emit(f"{self._prefix}: {self._dropped} {DROPPED}")

    # -- counting -----------------------------------------------------------------------
    def _admit(self, kind: str, limit: int) -> bool:
        """Whether a line of `kind` may be printed now; counts it if not."""
        now = self._clock()
        state = self._kinds.get(kind)
        if state is None:
            if len(self._kinds) >= MAX_KINDS:
                return self._admit("other kinds", limit)
            state = self._kinds[kind] = [now, 0, 0]
        elif now - state[0] >= INTERVAL:
            if state[2]:
                self._emit(self._summary(kind, state, now))
            state[:] = [now, 0, 0]
        if state[1] < limit:
            state[1] += 1
            return True
        state[2] += 1
        return False

    def _summary(self, kind: str, state: list[float], now: float) -> str:
        return f"{self._prefix}: {state[2]} more line(s) of {kind!r} in the last {now - state[0]:.0f} s"

    def _emit(self, line: str) -> None:
        data = line.encode("utf-8", "backslashreplace")[:MAX_LINE_BYTES] + b"\n"
        if self._dropped and not self._dropping:
            self._dropping = True  # the notice itself may not fit; then it stays pending
            note = f"{self._prefix}: {self._dropped} {DROPPED}\n".encode()
            if self._write(note):
                self._dropped = 0
            self._dropping = False
        if not self._write(data):
            self._dropped += 1


def _nonblocking_writer(fd: int) -> Callable[[bytes], bool]:
    """A function that writes bytes to fd without ever waiting; it returns False if they did not fit."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return lambda data: False  # no stderr at all
    if stat.S_ISSOCK(mode):
        sock = socket.socket(fileno=os.dup(fd))

        def send(data: bytes) -> bool:
            try:
                return sock.send(data, socket.MSG_DONTWAIT) == len(data)
            except OSError:
                return False

        return send
    out = fd
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        try:
            out = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            pass  # no /proc: write as it is

    def write(data: bytes) -> bool:
        try:
            return os.write(out, data) == len(data)
        except OSError:  # BlockingIOError: full; EPIPE: nobody reads it at all
            return False

    return write


_installed: BoundedStderr | None = None


def install() -> BoundedStderr:
    """Make sys.stderr bounded and non-blocking for this process (and its forked children)."""
    global _installed
    if _installed is None:
        _installed = BoundedStderr()
        sys.stderr = _installed
        atexit.register(_installed.close_summaries)
    return _installed


def report(kind: str, line: str, limit: int = 1) -> None:
    """Report an event of one kind, rate-limited (see BoundedStderr.report)."""
    stream = sys.stderr
    if isinstance(stream, BoundedStderr):
        stream.report(kind, line, limit)
    else:  # not a server process (a unit test calling a helper): plain output
        print(line, file=stream)
