"""select: one thread, non-blocking sockets, a `selectors` event loop with timers.

How it works: one thread asks the selector (epoll by default; --selector poll|select)
which sockets are ready and moves each ready connection's state machine a step:
recv -> core -> send. A connection is READING (watched for input), WRITING (a response
did not fit in the socket buffer: watched for output only, so a client that does not
read is not read either - write back-pressure) or WAITING (the work endpoint's wait:
not watched at all; a timer resumes it). Every timeout is a deadline on the
connection, checked by one lazy entry per connection in a timer heap that is pushed
again only when it fires early, so the keep-alive fast path (one recv, one send)
touches neither the heap nor the selector.

Good at: many idle or slow connections for the price of a socket each ("idle
connections", "slow readers"), and small keep-alive requests, with no thread switch
and no lock ("small files keep-alive").
Breaks down: CPU-bound work runs on the loop thread and stalls every other connection
("cpu work"); one process uses one core (--workers N runs N loops on the listener).
With --selector select, a descriptor >= FD_SETSIZE (1024) cannot be watched, so such
a connection is answered 503 and closed; select and poll also rescan every watched
descriptor on each call, which "idle connections" shows against epoll.
File bodies: a read-and-send loop by default (READ_CHUNK pread + send, resumed where a
partial send stopped); --file-send sendfile uses os.sendfile on the non-blocking
socket, resumed at the file offset it reached. sendfile halves this server's CPU per
byte, but on loopback the receiving client then spends more CPU per byte, and the
client's core is what limits the large-file scenario, so copying is the default.
What to send next comes from the shared Outbox (runtime/outbox.py); this file only
says how a step waits.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import traceback
from time import monotonic
from typing import Callable

from .runtime.accepting import ACCEPT_BATCH, AcceptBackoff
from .runtime.context import ServerContext
from .runtime.io_sizes import RECV_BYTES
from .runtime.listener import tune_connection
from .runtime.nonblocking import deadline_after_read, drain, raise_open_files_limit, refuse, signal_wakeup
from .runtime.outbox import DONE, SEND, SENDFILE, WAIT, Outbox

SELECTORS = {
    "epoll": getattr(selectors, "EpollSelector", selectors.DefaultSelector),
    "poll": selectors.PollSelector,
    "select": selectors.SelectSelector,
}
FD_SETSIZE = 1024  # select(2) cannot watch a descriptor at or above this (a fixed-size bitmap)
INF = float("inf")
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
READING, WRITING, WAITING = 0, 1, 2  # what a connection is waiting for
_MSG_MORE = getattr(socket, "MSG_MORE", 0)


class Client:
    """One connection: its core, what is left to send, and its deadline."""

    __slots__ = ("sock", "fd", "http", "state", "box", "out", "flags", "deadline", "armed_at")

    def __init__(self, sock: socket.socket, http, deadline: float, use_sendfile: bool) -> None:
        self.sock: socket.socket | None = sock  # None once closed
        self.fd = sock.fileno()
        self.http = http
        self.state = READING
        self.box = Outbox(use_sendfile)
        self.out: bytes | memoryview = b""  # unsent bytes of the current step
        self.flags = 0  # MSG_MORE while a file body follows them
        self.deadline: float | None = deadline  # None while a work wait runs
        self.armed_at = INF  # when this client's entry in the timer heap fires


class SelectLoop:
    def __init__(self, ctx: ServerContext, selector: selectors.BaseSelector, use_sendfile: bool) -> None:
        self.ctx = ctx
        self.limits = ctx.limits
        self.header_timeout = ctx.limits.header_timeout
        self.keepalive_timeout = ctx.limits.keepalive_timeout
        self.sel = selector
        self.fd_ceiling = FD_SETSIZE if isinstance(selector, selectors.SelectSelector) else INF
        self.use_sendfile = use_sendfile
        self.clients: set[Client] = set()
        self.timers: list[tuple[float, int, Callable, Client | None]] = []  # (when, seq, callback, client)
        self._seq = itertools.count()
        self.now = monotonic()
        self.stop_at: float | None = None  # the grace deadline, once shutdown began
        self.accepting = False
        self._backoff = AcceptBackoff()

    # -- the loop ------------------------------------------------------------------
    def run(self) -> None:
        sel, timers, ctx = self.sel, self.timers, self.ctx
        self._listen()
        while True:
            timeout = max(timers[0][0] - monotonic(), 0.0) if timers else None
            events = sel.select(timeout)
            self.now = now = monotonic()
            for key, _ in events:
                c = key.data
                try:
                    if c.__class__ is Client:
                        if c.state == READING:
                            self._readable(c)
                        else:
                            self._pump(c)
                    else:
                        c()  # the listener or the signal wake-up
                except Exception:
                    self._fault(c)
            while timers and timers[0][0] <= now:
                when, _, callback, c = heapq.heappop(timers)
                try:
                    callback(c, when)
                except Exception:
                    self._fault(c)
            if ctx.stopping:
                if self.stop_at is None:
                    self._begin_shutdown()
                if not self.clients or now >= self.stop_at:
                    break
        for c in list(self.clients):
            self._close(c)

    def _fault(self, c: Client | None) -> None:
        """A bug in handling one connection must not take the others down: report it, drop it."""
        traceback.print_exc()
        if isinstance(c, Client):
            try:
                self._close(c)
            except Exception:  # half-closed state; the descriptor is what matters
                if c.sock is not None:
                    c.sock.close()
                    c.sock = None
                self.clients.discard(c)

    def _call_at(self, when: float, callback: Callable, c: Client | None) -> None:
        heapq.heappush(self.timers, (when, next(self._seq), callback, c))

    # -- accepting -----------------------------------------------------------------
    def _listen(self) -> None:
        self.sel.register(self.ctx.listener, READ, self._accept)
        self.accepting = True

    def _accept(self) -> None:
        listener = self.ctx.listener
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if self.ctx.stopping:
                    return
                pause = self._backoff.pause_after(exc)
                if pause:  # out of fds or memory: stop watching for a while
                    self.sel.unregister(listener)
                    self.accepting = False
                    self._call_at(self.now + pause, lambda _c, _w: self.stop_at or self._listen(), None)
                    return
                continue
            self._backoff.accepted()
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        tune_connection(sock)
        c = Client(sock, self.ctx.new_connection(), self.now + self.limits.header_timeout, self.use_sendfile)
        try:
            if c.fd >= self.fd_ceiling:
                raise ValueError(f"descriptor {c.fd} is beyond select()'s FD_SETSIZE")
            self.sel.register(sock, READ, c)
        except (ValueError, OSError) as exc:
            refuse(sock, self.ctx.server_name, f"server cannot watch more connections ({exc})")
            return
        self.clients.add(c)
        self._arm(c)

    # -- reading -------------------------------------------------------------------
    def _readable(self, c: Client) -> None:
        try:
            data = c.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._close(c)
        http = c.http
        was_partial = http.has_partial_request
        plans = http.receive(data)
        if not plans:
            if http.closed:  # EOF
                return self._close(c)
            c.deadline = deadline_after_read(http, was_partial, False, c.deadline, self.now, self.limits)
            if c.deadline < c.armed_at:
                self._arm(c)
            return
        if len(plans) == 1:
            plan = plans[0]
            if plan.file is None and plan.work is None and not plan.close:
                # the keep-alive fast path: one small response in one send, no state change
                out = plan.head + plan.body if plan.body else plan.head
                try:
                    sent = c.sock.send(out)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return self._close(c)
                if sent == len(out):
                    # inline: this runs once per request
                    c.deadline = self.now + (self.header_timeout if http.has_partial_request
                                             else self.keepalive_timeout)
                    if c.deadline < c.armed_at:
                        self._arm(c)
                    return
                c.out = memoryview(out)[sent:]
                return self._blocked(c)
        c.box.add(plans)
        self._pump(c)

    # -- writing -------------------------------------------------------------------
    def _pump(self, c: Client) -> None:
        """Send the outbox's steps in order until all are sent, the socket is full, or a wait starts."""
        sock = c.sock
        if sock is None:
            return
        box = c.box
        while True:
            out = c.out
            if out:
                try:
                    sent = sock.send(out, c.flags)
                except (BlockingIOError, InterruptedError):
                    return self._blocked(c)
                except OSError:
                    return self._close(c)
                if sent < len(out):
                    c.out = memoryview(out)[sent:]
                    return self._blocked(c)
                c.out = b""
            step = box.step()
            if step == SEND:
                c.out = box.data
                c.flags = _MSG_MORE if box.more else 0
            elif step == SENDFILE:
                f = box.data
                try:
                    if not f.sendfile_to(c.fd):
                        return self._close(c)  # the file shrank: a short body, then drop
                except (BlockingIOError, InterruptedError):
                    return self._blocked(c)
                except OSError:
                    return self._close(c)
                if f.left:
                    return self._blocked(c)
            elif step == DONE:
                break
            elif step == WAIT:
                self.now = monotonic()  # the work's CPU kernel ran in step()
                return self._wait(c, box.data)
            else:  # CLOSE, ABORT
                return self._close(c)
        # all sent: back to reading, or done if the server is stopping
        self.now = monotonic()
        http = c.http
        if self.stop_at is not None and not http.has_partial_request:
            return self._close(c)
        c.deadline = self.now + (self.header_timeout if http.has_partial_request else self.keepalive_timeout)
        if c.state != READING:
            self._set_state(c, READING)
        if c.deadline < c.armed_at:
            self._arm(c)

    def _blocked(self, c: Client) -> None:
        """The socket is full: watch it for output only until the client reads."""
        c.deadline = self.now + self.limits.write_timeout
        if c.state != WRITING:
            self._set_state(c, WRITING)
        if c.deadline < c.armed_at:
            self._arm(c)

    def _wait(self, c: Client, seconds: float) -> None:
        """The work endpoint's wait: unwatched, no deadline, a timer resumes the response."""
        c.deadline = None
        if c.state != WAITING:
            self._set_state(c, WAITING)
        self._call_at(self.now + seconds, self._resume, c)

    def _resume(self, c: Client, _when: float) -> None:
        self._pump(c)

    def _set_state(self, c: Client, state: int) -> None:
        if state == WAITING:
            self.sel.unregister(c.sock)
        elif c.state == WAITING:
            self.sel.register(c.sock, READ if state == READING else WRITE, c)
        else:
            self.sel.modify(c.sock, READ if state == READING else WRITE, c)
        c.state = state

    # -- deadlines -----------------------------------------------------------------
    def _arm(self, c: Client) -> None:
        c.armed_at = c.deadline
        self._call_at(c.deadline, self._on_deadline, c)

    def _on_deadline(self, c: Client, when: float) -> None:
        if c.sock is None or when != c.armed_at:
            return  # closed, or superseded by an earlier entry
        c.armed_at = INF
        if c.deadline is None:
            return  # waiting: _pump sets a deadline when the response resumes
        if c.deadline > self.now:
            return self._arm(c)  # the deadline moved on since this entry was pushed
        if c.state == READING:
            late = c.http.error_for_timeout()  # 408 if a head was half sent, else a quiet close
            if late is None:
                return self._close(c)
            c.box.add((late,))
            return self._pump(c)
        self._close(c)  # no progress sending for write_timeout

    # -- shutting down ---------------------------------------------------------------
    def _begin_shutdown(self) -> None:
        """Stop accepting, close idle connections, let the others finish within the grace period."""
        self.stop_at = self.now + self.limits.grace
        self._call_at(self.stop_at, lambda _c, _w: None, None)  # wake the loop at the deadline
        if self.accepting:
            self.sel.unregister(self.ctx.listener)
            self.accepting = False
        self.ctx.listener.close()
        for c in list(self.clients):
            c.http.draining = True  # responses from now on say Connection: close
            if c.state == READING and not c.http.has_partial_request:
                self._close(c)

    def _close(self, c: Client) -> None:
        sock = c.sock
        if sock is None:
            return
        if c.state != WAITING:
            self.sel.unregister(sock)
        sock.close()
        c.sock = None
        c.box.discard()
        self.clients.discard(c)


def serve(ctx: ServerContext) -> None:
    raise_open_files_limit()
    selector = SELECTORS[ctx.options.get("selector", "epoll")]()
    use_sendfile = ctx.options.get("file_send", "read") == "sendfile"
    ctx.listener.setblocking(False)
    try:
        with signal_wakeup() as wake:
            loop = SelectLoop(ctx, selector, use_sendfile)
            selector.register(wake, READ, lambda: drain(wake))
            loop.run()
    finally:
        selector.close()
