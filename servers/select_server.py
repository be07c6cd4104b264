"""select: one thread, non-blocking sockets, an epoll (or poll, or select) loop.

How it works: one thread asks the kernel which sockets are ready (runtime/pollers.py;
epoll by default, --selector poll|select) and moves each ready connection a step:
recv -> core -> send. A connection is READING (watched for input), WRITING (a response
did not fit in the socket buffer: watched for output only, so a client that does not
read is not read either) or WAITING (the work endpoint's wait: unwatched, a timer
resumes it). What to do between a recv and a send, what to send beyond one small
response, the accepting and the deadlines are shared with asyncio (runtime/, see
docs/event-loops.md): this file holds the waiting and the sending. The keep-alive
fast path (one recv, the reply the core has ready, one send) touches no timer and no
registration, and a connection that one small response ends is never registered.

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
socket, resumed at the file offset it reached. sendfile costs this server less CPU per
byte, but on loopback the receiving client then spends more CPU per byte, and the
client's core is what limits the large-file scenario, so copying is the default.
"""

from __future__ import annotations

import _socket
import socket
import traceback
from collections.abc import Callable
from time import monotonic

from .runtime.context import ServerContext
from .runtime.deadlines import INF, DeadlineBuckets, Timers
from .runtime.io_sizes import RECV_BYTES
from .runtime.nonblocking import Conversations, ListenerWatch, raise_open_files_limit, refuse
from .runtime.outbox import DONE, SEND, SENDFILE, WAIT, Outbox
from .runtime.policy import AT_EOF, QUEUED, SEND_408, ConnectionPolicy
from .runtime.pollers import Poller
from .runtime.wakeup import drain_fd, signal_wakeup

READING, WRITING, WAITING = 0, 1, 2  # what a connection is waiting for
_MSG_MORE = getattr(socket, "MSG_MORE", 0)


class Client:
    """One connection: its core, what is left to send, and its deadline."""

    __slots__ = ("armed_at", "box", "deadline", "fd", "flags", "http", "out", "sock", "state")

    def __init__(self, sock: _socket.socket, fd: int, http, deadline: float) -> None:
        self.sock: _socket.socket | None = sock  # None once closed
        self.fd = fd
        self.http = http
        self.state = READING
        self.box: Outbox | None = None
        self.out: bytes | memoryview = b""  # unsent bytes of the current step
        self.flags = 0  # MSG_MORE while a file body follows them
        self.deadline = deadline  # INF while a work wait runs
        self.armed_at = INF  # the deadline bucket it is filed in


class SelectLoop:
    def __init__(self, ctx: ServerContext, poller: Poller, use_sendfile: bool) -> None:
        self.ctx = ctx
        self.header_timeout = ctx.limits.header_timeout
        self.keepalive_timeout = ctx.limits.keepalive_timeout
        self.poller = poller
        self.watched: dict[int, Client | Callable[[], None]] = {}  # fd -> its client, or the listener's callback
        self.clients: set[Client] = set()
        self.deadlines = DeadlineBuckets()
        self.policy = ConnectionPolicy(ctx.limits, use_sendfile, self.deadlines)
        self.timers = Timers()  # work waits, accept pauses, the end of the grace period
        self.now = monotonic()
        self.stop_at: float | None = None  # the grace deadline, once shutdown began
        self.listening = ListenerWatch(ctx, self._accept, self._watch, self._unwatch, self._call_later)

    # -- the loop ------------------------------------------------------------------
    def run(self) -> None:
        poll, watched, timers, deadlines, ctx = self.poller.poll, self.watched, self.timers, self.deadlines, self.ctx
        if ctx.stopping:  # a signal during start-up, before the wake-up fd existed: nothing would wake poll()
            return
        self.listening.start()
        while True:
            timer_due = timers.next_time()
            first = min(timer_due, deadlines.next_time())
            events = poll(max(first - monotonic(), 0.0) if first < INF else None)
            self.now = now = monotonic()
            for fd, _ in events:
                c = watched.get(fd)
                try:
                    if c.__class__ is Client:
                        if c.state == READING:
                            self._readable(c)
                        else:
                            self._pump(c)
                    elif c is not None:
                        c()  # the listener or the signal wake-up
                except Exception:
                    self._fault(c)
            if timer_due <= now:  # one set meanwhile is later, or is taken by the next poll(0)
                for callback, c in timers.pop_due(now):
                    try:
                        callback(c)
                    except Exception:
                        self._fault(c)
            if deadlines.next_time() <= now:
                for c in deadlines.pop_due(now):
                    try:
                        self._on_deadline(c)
                    except Exception:
                        self._fault(c)
            if ctx.stopping:
                if self.stop_at is None:
                    self._begin_shutdown()
                if not self.clients or now >= self.stop_at:
                    break
        for c in list(self.clients):
            self._close(c)

    def _fault(self, c: Client | Callable | None) -> None:
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

    # -- watching and accepting ------------------------------------------------------
    def _watch(self, fd: int, callback: Callable[[], None]) -> None:
        self.poller.register(fd, self.poller.READ)
        self.watched[fd] = callback

    def _unwatch(self, fd: int) -> None:
        self.poller.unregister(fd)
        del self.watched[fd]

    def _call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.timers.call_at(self.now + delay, lambda _c: callback())

    def _accept(self, conversations: Conversations) -> None:
        for sock, http, plans in conversations:
            fd = sock.fileno()
            c = Client(sock, fd, http, self.now + self.header_timeout)
            try:
                if fd >= self.poller.fd_ceiling:
                    raise ValueError(f"descriptor {fd} is beyond select()'s FD_SETSIZE")
                self.poller.register(fd, self.poller.READ)
            except (ValueError, OSError) as exc:
                refuse(sock, self.ctx.server_name, f"server cannot watch more connections ({exc})")
                continue
            self.watched[fd] = c
            self.clients.add(c)
            self.deadlines.file(c, c.deadline)
            if plans is not None:
                self._answer(c, plans, False)

    # -- reading -------------------------------------------------------------------
    def _readable(self, c: Client) -> None:
        try:
            data = c.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return self._close(c)
        http = c.http
        out = http.ready_reply(data)  # the keep-alive fast path: a reply the core has ready
        if out is not None:
            return self._send_one(c, out)
        was_partial = http.has_partial_request
        self._answer(c, http.receive(data), was_partial)

    def _answer(self, c: Client, plans: list, was_partial: bool) -> None:
        todo = self.policy.after_read(c, plans, was_partial, self.now)
        if todo.__class__ is not int:
            self._send_one(c, todo)
        elif todo == QUEUED:
            self._pump(c)
        elif todo == AT_EOF:
            self._close(c)

    def _send_one(self, c: Client, out: bytes) -> None:
        """One small response in one send, and no state change when it fits (nearly always)."""
        try:
            sent = c.sock.send(out)
        except BlockingIOError:
            sent = 0
        except OSError:
            return self._close(c)
        http = c.http
        if sent == len(out):
            if http.closed:
                return self._close(c)
            # policy.after_reply, inline; a draining core's replies close, so no stopping check
            c.deadline = self.now + (self.header_timeout if http.has_partial_request else self.keepalive_timeout)
            if c.deadline < c.armed_at:
                self.deadlines.file(c, c.deadline)
            return None
        c.out = memoryview(out)[sent:]
        self.policy.outbox(c).close_after = http.closed
        return self._blocked(c)

    # -- writing -------------------------------------------------------------------
    def _pump(self, c: Client) -> None:
        """Send the outbox's steps in order until all are sent, the socket is full, or a wait starts."""
        sock = c.sock
        if sock is None:
            return None
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
        self.now = monotonic()
        if not self.policy.after_reply(c, self.now, self.stop_at is not None):
            return self._close(c)
        if c.state != READING:
            self._set_state(c, READING)

    def _blocked(self, c: Client) -> None:
        """The socket is full: watch it for output only until the client reads."""
        self.policy.expect_progress(c, self.now)
        if c.state != WRITING:
            self._set_state(c, WRITING)

    def _wait(self, c: Client, seconds: float) -> None:
        """The work endpoint's wait: unwatched, no deadline, a timer resumes the response."""
        c.deadline = INF
        if c.state != WAITING:
            self._set_state(c, WAITING)
        self.timers.call_at(self.now + seconds, self._pump, c)

    def _set_state(self, c: Client, state: int) -> None:
        poller = self.poller
        if state == WAITING:
            poller.unregister(c.fd)
        elif c.state == WAITING:
            poller.register(c.fd, poller.READ if state == READING else poller.WRITE)
        else:
            poller.modify(c.fd, poller.READ if state == READING else poller.WRITE)
        c.state = state

    def _on_deadline(self, c: Client) -> None:
        if c.sock is None:
            return None
        # a WRITING connection's deadline moves on with every send that fits: due, it made no progress
        if self.policy.on_deadline(c, c.state != READING, False) == SEND_408:
            return self._pump(c)  # a 408, then close
        self._close(c)  # idle too long, or no progress sending for write_timeout

    # -- shutting down ---------------------------------------------------------------
    def _begin_shutdown(self) -> None:
        """Stop accepting, close idle connections, let the others finish within the grace period."""
        self.stop_at = self.now + self.ctx.limits.grace
        self.timers.call_at(self.stop_at, lambda _c: None)  # wake the loop at the deadline
        self.listening.close()
        for c in list(self.clients):
            if self.policy.drain(c) and c.state == READING:
                self._close(c)

    def _close(self, c: Client) -> None:
        sock = c.sock
        if sock is None:
            return
        if c.state != WAITING:
            self.poller.unregister(c.fd)
        del self.watched[c.fd]
        sock.close()
        c.sock = None
        self.policy.closed(c)
        self.clients.discard(c)


def serve(ctx: ServerContext) -> None:
    raise_open_files_limit()
    poller = Poller(ctx.options.get("selector", "epoll"))
    ctx.listener.setblocking(False)
    try:
        with signal_wakeup() as wake:
            loop = SelectLoop(ctx, poller, ctx.use_sendfile)
            loop._watch(wake.fileno(), lambda: drain_fd(wake.fileno()))
            loop.run()
    finally:
        poller.close()
