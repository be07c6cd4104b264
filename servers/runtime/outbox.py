"""The send side of an event-loop connection, sans-IO: response plans in, steps out.

An event loop cannot sendall() a response: it writes what the socket takes and comes
back when it can take more, and between two steps it may have to wait for the work
endpoint or stop for good. The Outbox holds what one connection still has to send
(planned responses not started yet, the file body of the current one, whether it ends
the connection) and hands the loop one step at a time:

    SEND      write outbox.data (bytes: a head with its in-memory body, or a file chunk);
              outbox.more is true when a file body follows (MSG_MORE)
    SENDFILE  zero-copy step: outbox.data is the FileSource, sendfile_to() what fits
    WAIT      the work endpoint's wait: resume after outbox.data seconds
    CLOSE     every response is written: close once the bytes are flushed
    ABORT     drop the connection now (the file vanished or shrank since it was
              planned: the head already promised more bytes than exist)
    DONE      nothing left to send: read the next request

The loop keeps the socket, the waiting and the timers; the outbox does no I/O except
reading the file chunks it hands out (a page-cache copy; a model that must never block
on a disk reads them itself, as trio does) and running the work endpoint's CPU kernel,
which by design blocks whichever thread asks for the next step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from ...protocol import ResponsePlan, cpu_kernel
from .nonblocking import FileSource

SEND, SENDFILE, WAIT, CLOSE, ABORT, DONE = range(6)
STEP_NAMES = ("SEND", "SENDFILE", "WAIT", "CLOSE", "ABORT", "DONE")


class Outbox:
    """What one connection still has to send (see the module docstring)."""

    __slots__ = ("close_after", "data", "file", "held", "more", "queue", "use_sendfile")

    def __init__(self, use_sendfile: bool = False) -> None:
        self.queue: deque[ResponsePlan] | None = None  # planned responses not started yet (pipelining)
        self.file: FileSource | None = None  # the current response's file body, after its head
        self.close_after = False  # the current response ends the connection
        self.held: ResponsePlan | None = None  # a work response whose wait is running
        self.use_sendfile = use_sendfile
        self.data: object = None  # the payload of the last step
        self.more = False  # SEND: a file body follows these bytes

    @property
    def busy(self) -> bool:
        """A response is under way or queued: the loop should not expect to be idle."""
        return bool(self.queue) or self.file is not None or self.held is not None

    def add(self, plans: Iterable[ResponsePlan]) -> None:
        if self.queue is None:
            self.queue = deque()  # made at first use: a deque is large, and most connections never queue
        self.queue.extend(plans)

    def step(self) -> int:
        """The next thing the loop must do for this connection (one of the step constants)."""
        f = self.file
        if f is not None:
            if f.left:
                if self.use_sendfile:
                    self.data = f
                    return SENDFILE
                chunk = f.read_chunk()
                if not chunk:
                    return self._abort()
                self.data = chunk
                self.more = False
                return SEND
            f.close()
            self.file = None
        held = self.held
        if held is not None:  # the wait is over: now its response
            self.held = None
            return self._start(held)
        if self.close_after:
            return CLOSE
        if not self.queue:
            return DONE
        plan = self.queue.popleft()
        self.close_after = plan.close
        if plan.work is not None:
            cpu_kernel(plan.work.cpu)  # on the loop's thread: every other client waits meanwhile
            if plan.work.wait_s > 0:
                self.held = plan
                self.data = plan.work.wait_s
                return WAIT
        return self._start(plan)

    def _start(self, plan: ResponsePlan) -> int:
        if plan.file is not None:
            try:
                self.file = FileSource(plan.file)  # before the head: no head for a file that is gone
            except OSError:
                return self._abort()
        self.data = plan.head + plan.body if plan.body else plan.head
        self.more = plan.file is not None
        return SEND

    def _abort(self) -> int:
        self.discard()
        return ABORT

    def discard(self) -> None:
        """The connection is gone: close the file, forget the rest. Safe to call twice."""
        if self.file is not None:
            self.file.close()
            self.file = None
        self.queue = None
        self.held = None
        self.data = None
