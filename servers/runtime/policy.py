"""What an event loop decides for a connection between its reads and writes, decided once.

select waits on epoll and calls send(); asyncio gets callbacks and calls
transport.write(). Between those calls they decide the same things, and
ConnectionPolicy decides them for both without I/O: each method reads and sets the
connection's core (http), outbox (box, runtime/outbox.py) and deadline, files the
deadline (DeadlineBuckets.move: only a deadline that moves earlier is re-filed), and
says what the loop must do next.

- after_read, the plans of one read: none yet: read on, under header_timeout from a
  head's first byte or keepalive_timeout (deadline_after_read); EOF: close; one
  response held in memory with nothing queued before it: its bytes, which the loop
  writes in one send, with no outbox and no step; anything else: queued in the
  outbox, whose steps the loop then takes.
- after_reply, the last byte of a reply handed over: the next request's deadline, or
  a close on a draining server unless a request has begun.
- expect_progress, a send waiting for the client: it must take some bytes within
  write_timeout.
- read_timeout, a read deadline passed: a 408 queued if a head was cut off, else a
  quiet close.
- on_deadline, any deadline passed: a send that made progress since its deadline was
  set goes on, one that made none is dropped; a read deadline is read_timeout's.
- closed, the connection is gone: its outbox discarded, its deadline forgotten.
- drain, shutdown: every later response says Connection: close, and a connection
  waiting for a request that has not begun closes now.

The keep-alive fast path (a reply the core has ready, sent in one write) sets its
deadline inline, as after_reply would: it runs once per request, so it makes no call
it can do without.
"""

from __future__ import annotations

from typing import Any, Protocol

from ...protocol import HttpConnection, Limits, ResponsePlan
from .deadlines import DeadlineBuckets
from .nonblocking import deadline_after_read
from .outbox import Outbox

# after_read's answers, besides bytes to write in one send: read on; take the outbox's steps; the client closed
READ_MORE, QUEUED, AT_EOF = range(3)
# on_deadline's answers: the client took bytes, wait on; drop it now; a 408 is queued; close quietly
KEEP_SENDING, DROP, SEND_408, CLOSE_IDLE = range(4)


class LoopConnection(Protocol):
    http: HttpConnection
    box: Outbox | None  # made when a response needs more than one write
    deadline: float
    armed_at: float


class ConnectionPolicy:
    """One per event loop: its limits, its file-send mode and its deadline buckets."""

    __slots__ = ("deadlines", "limits", "use_sendfile")

    def __init__(self, limits: Limits, use_sendfile: bool, deadlines: DeadlineBuckets[Any]) -> None:
        self.limits = limits
        self.use_sendfile = use_sendfile
        self.deadlines = deadlines

    def outbox(self, c: LoopConnection) -> Outbox:
        """c's outbox, made at first use (most connections never need one)."""
        box = c.box
        if box is None:
            box = c.box = Outbox(self.use_sendfile)
        return box

    def after_read(self, c: LoopConnection, plans: list[ResponsePlan], was_partial: bool, now: float) -> bytes | int:
        """READ_MORE, AT_EOF, QUEUED, or the bytes of one response to write in one send
        (then close if c.http.closed, else after_reply)."""
        if not plans:
            if c.http.closed:
                return AT_EOF
            self.deadlines.move(c, deadline_after_read(c.http, was_partial, False, c.deadline, now, self.limits))
            return READ_MORE
        box = c.box
        if len(plans) == 1 and (box is None or not box.busy):
            plan = plans[0]
            if plan.file is None and plan.work is None:
                return plan.head + plan.body if plan.body else plan.head
        self.outbox(c).add(plans)
        return QUEUED

    def after_reply(self, c: LoopConnection, now: float, stopping: bool) -> bool:
        """Set the next request's deadline; False: close instead (stopping, and no request begun)."""
        partial = c.http.has_partial_request
        if stopping and not partial:
            return False
        limits = self.limits
        self.deadlines.move(c, now + (limits.header_timeout if partial else limits.keepalive_timeout))
        return True

    def expect_progress(self, c: LoopConnection, now: float) -> None:
        self.deadlines.move(c, now + self.limits.write_timeout)

    def read_timeout(self, c: LoopConnection) -> bool:
        """True: a 408 is queued (the outbox's steps send it, then close); False: close quietly."""
        late = c.http.error_for_timeout()
        if late is None:
            return False
        self.outbox(c).add((late,))
        return True

    def on_deadline(self, c: LoopConnection, sending: bool, progressed: bool) -> int:
        """What a due deadline means. sending: a response is being written (bytes wait in a
        buffer, or a file body is under way); progressed: the client took some of them since
        the write deadline was set (KEEP_SENDING: the loop sets it again, expect_progress)."""
        if sending:
            return KEEP_SENDING if progressed else DROP
        return SEND_408 if self.read_timeout(c) else CLOSE_IDLE

    def closed(self, c: LoopConnection) -> None:
        """c is gone: the response ends here (its file is closed, nothing more is sent) and
        its deadline is forgotten. Safe to call twice."""
        if c.box is not None:
            c.box.discard()
        self.deadlines.remove(c)

    def drain(self, c: LoopConnection) -> bool:
        """Shutdown: True if c waits for a request that has not begun and should close now."""
        c.http.draining = True
        return not c.http.has_partial_request and (c.box is None or not c.box.busy)
