"""trio: structured concurrency, a task per connection in one nursery, cancel scopes for timeouts.

How it works: trio.run drives one nursery that holds the accept loop and a task per
connection. Each task runs the conversation inside one cancel scope whose deadline
moves with the phase: the header or keep-alive deadline while reading (a dribbling
client cannot extend it; a head cut off by it gets the core's 408), write_timeout from
the last progress while a send waits, none during the work endpoint's wait, which is
trio.sleep. Sockets are plain non-blocking sockets awaited with trio.lowlevel's
wait_readable/wait_writable, the primitives trio.socket is built on, so the one
scheduler turn per request can come before the read instead of after each call: by
then the next request has usually arrived and no epoll round trip is needed.
Read deadlines are rounded up to DEADLINE_STEP (runtime/deadlines.py), so a busy
keep-alive connection moves its scope's deadline a few times a second instead of once
per request. This is what keeps many idle connections from slowing the active ones:
trio keeps deadlines in a heap and every move pushes a new entry, leaving the old one
behind until a periodic prune (only once the stale entries outnumber twice the live
ones). Each entry is a tuple the cyclic garbage collector tracks, so with a move per
request thousands of them survive into the oldest generation, and each full
collection then walks every idle connection's task, coroutine and scope: pauses long
enough to dominate the active connections' p99. With rounding the heap stays near one
entry per connection, full collections become rare, and a timeout fires at most
DEADLINE_STEP late, never early.
A connection's first request is read after one scheduler turn, before any cancel scope
exists: when it has arrived and its response is one send that ends the connection
(the "new connection per request" pattern), nothing can block, so the task answers
and closes without a scope, a deadline or an epoll registration. Anything else (no
request yet, keep-alive, a file, a wait) enters the guarded conversation.
Accepted sockets are the C-level _socket.socket, which is all this file uses of a
socket: the socket.socket wrapper adds a Python __init__, enum conversions and a
Python close to every connection.
Shutdown is structured too: trio.open_signal_receiver sees SIGTERM/SIGINT, the accept
loop's scope is cancelled, idle connections' scopes are cancelled, busy ones close
after the response in flight, and the nursery's own deadline cancels whatever still
runs when the grace period ends.

Good at: correctness by construction: every timeout is a scope, no task outlives the
server, nothing is left running after shutdown. Idle, slow and backend-bound (wait=...)
clients cost one small task each.
Breaks down: connection churn: each connection still costs a task in the nursery, so
it trails nginx most on "new connection per request"; and the CPU
kernel blocks the one thread like any single-threaded loop ("cpu work" scenario;
--workers N spreads it over cores).
File bodies: a bounded read-and-send loop (READ_CHUNK steps) by default; its reads come
straight from the page cache (preadv with RWF_NOWAIT, a memcpy) and go to a worker
thread only when the data is not cached, so a cold disk never stalls the loop (a
thread hand-off for every chunk, or trio.open_file, costs far more CPU than the
in-loop copy). trio has no sendfile API, but its I/O layer allows one: --file-send
sendfile calls os.sendfile on the non-blocking socket and waits with
trio.lowlevel.wait_writable whenever the socket buffer is full (a file not in the page
cache then stalls the loop for the disk read). Copying is the default because on
loopback copied data is cheaper for the receiving client, whose core limits the large
file scenario; sendfile costs the server less CPU per byte, and wins where
the server's core is the limit (many connections of mid-sized files).
"""

from __future__ import annotations

import _socket
import errno
import math
import os
import signal
import socket

import trio
from trio.lowlevel import checkpoint, wait_readable, wait_writable

from ..protocol import ResponsePlan, cpu_kernel
from .runtime.accepting import Acceptor
from .runtime.context import ServerContext
from .runtime.deadlines import rounded_up
from .runtime.io_sizes import READ_CHUNK, RECV_BYTES
from .runtime.listener import tune_connection
from .runtime.nonblocking import FileSource, deadline_after_read, raise_open_files_limit, send_final_response

_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)  # Linux 4.14+; 0 makes every read a plain one


def serve(ctx: ServerContext) -> None:
    raise_open_files_limit()  # one descriptor per client, and tasks make thousands cheap
    trio.run(_serve, ctx)


async def _serve(ctx: ServerContext) -> None:
    live: set[_Conversation] = set()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            accepting = trio.CancelScope()
            nursery.start_soon(_accept_loop, ctx, accepting, nursery, live)
            if not ctx.stopping:  # a signal before the receiver existed went to the runtime's handler
                async for _ in signals:
                    break
            accepting.cancel()
            ctx.request_shutdown()
            trio.lowlevel.notify_closing(ctx.listener)
            ctx.listener.close()
            for conversation in live:
                conversation.drain()
            # in-flight responses get the grace period, then everything left is cancelled
            nursery.cancel_scope.deadline = trio.current_time() + ctx.limits.grace


async def _accept_loop(
    ctx: ServerContext, accepting: trio.CancelScope, nursery: trio.Nursery, live: set[_Conversation]
) -> None:
    if ctx.stopping:
        # a signal during start-up, before _serve's receiver existed: shutdown has already
        # closed the listener, and this task's first run comes after that
        return
    use_sendfile = ctx.use_sendfile
    acceptor = Acceptor(ctx)
    with accepting:
        while not ctx.stopping:
            await wait_readable(ctx.listener)
            header_deadline = rounded_up(trio.current_time() + ctx.limits.header_timeout)  # one clock read per burst
            for sock in acceptor.burst():
                tune_connection(sock)
                nursery.start_soon(_Conversation(ctx, sock, use_sendfile, header_deadline).run, live)
            if acceptor.pause:  # out of fds or memory: wait for some to be freed
                await trio.sleep(acceptor.pause)


class _Conversation:
    """One client. A single cancel scope, the guard, holds whichever deadline applies now:
    the header or keep-alive deadline while reading, write_timeout from the last progress
    while a send waits, none during the work endpoint's wait. Moving one deadline costs
    less than a scope per call, which matters on the per-request path."""

    __slots__ = ("conn", "ctx", "guard", "header_deadline", "idle", "moved", "reading", "sock", "use_sendfile")

    def __init__(self, ctx: ServerContext, sock: _socket.socket, use_sendfile: bool, header_deadline: float) -> None:
        self.ctx = ctx
        self.sock = sock
        self.conn = ctx.new_connection()
        self.header_deadline = header_deadline
        self.guard: trio.CancelScope | None = None  # made only when the conversation must wait
        self.reading = True  # the guard's deadline is a read deadline (not a write timeout)
        self.idle = False  # waiting for a request to start: shutdown may end the wait
        self.use_sendfile = use_sendfile
        self.moved = False  # sending moved the guard's deadline off the read deadline

    def drain(self) -> None:
        """Shutdown: close at once if idle, else after the response in flight (later ones say close)."""
        self.conn.draining = True
        if self.idle and self.guard is not None:
            self.guard.cancel()

    async def run(self, live: set[_Conversation]) -> None:
        live.add(self)
        try:
            # one turn for the others first: by the time this task runs the request has
            # usually arrived, and a request answered in one send that ends the connection
            # never waits, so it needs no cancel scope and no deadline
            await checkpoint()
            try:
                plans = self.conn.receive(self.sock.recv(RECV_BYTES))
            except BlockingIOError:
                plans = None
            rest = None if plans is None else send_final_response(self.sock, plans)
            if rest is not None:
                if rest:  # did not fit in one send: the rest under the write timeout
                    self.guard = trio.CancelScope(deadline=trio.current_time() + self.ctx.limits.write_timeout)
                    with self.guard:
                        await self._send_all(rest)
                return
            self.guard = trio.CancelScope(deadline=self.header_deadline)
            with self.guard:
                await self._serve_requests(plans)
            if self.guard.cancelled_caught and self.reading:
                late = self.conn.error_for_timeout()  # a 408 if a head was cut off; None if idle
                if late is not None:
                    self.guard = trio.CancelScope()
                    with self.guard:
                        await self._send_plan(late)
        except OSError:
            pass  # reset by peer, broken pipe: this client is gone, the server is not
        finally:
            self.sock.close()
            live.discard(self)

    async def _serve_requests(self, plans: list[ResponsePlan] | None) -> None:
        """The conversation from its first read on; plans: what that read asked for, None if
        nothing was read yet."""
        conn, guard, ctx, limits, sock = self.conn, self.guard, self.ctx, self.ctx.limits, self.sock
        deadline = guard.deadline  # the read deadline, kept here too: the property costs a call
        was_partial = False
        while True:
            if plans is None:
                if conn.closed:
                    return
                was_partial = conn.has_partial_request
                if ctx.stopping and not was_partial:
                    return
                # one turn for the others per request, taken before reading: by the time this
                # task runs again the client has usually sent its next request, and the recv
                # below needs no trip through epoll (a deadline, drain or the grace cancels here)
                await checkpoint()
                try:
                    data = sock.recv(RECV_BYTES)
                except BlockingIOError:
                    self.idle = not was_partial
                    data = await self._wait_and_recv()
                    self.idle = False
                plans = conn.receive(data)
            if plans:
                self.reading = False
                self.moved = False
                for plan in plans:
                    if plan.work is not None:
                        self.moved = True
                        guard.deadline = math.inf  # the wait is the work, not a stalled write
                        cpu_kernel(plan.work.cpu)
                        if plan.work.wait_s:
                            await trio.sleep(plan.work.wait_s)
                    if not await self._send_plan(plan):
                        return
                self.reading = True
            if not conn.closed:  # a deadline move costs trio a context manager: none for a closing connection
                new = rounded_up(
                    deadline_after_read(conn, was_partial, bool(plans), deadline, trio.current_time(), limits)
                )
                if new != deadline or self.moved:
                    guard.deadline = deadline = new
                    self.moved = False
            plans = None

    async def _wait_and_recv(self) -> bytes:
        while True:
            await wait_readable(self.sock)
            try:
                return self.sock.recv(RECV_BYTES)
            except BlockingIOError:
                pass

    async def _send_plan(self, plan: ResponsePlan) -> bool:
        """Send one planned response; False if the file ended early and the connection must drop."""
        if plan.file is None:
            await self._send_all(plan.head + plan.body if plan.body else plan.head)
            return True
        source = FileSource(plan.file)  # opened first: if that fails, no half response goes out
        buf = None if self.use_sendfile else bytearray(min(READ_CHUNK, source.left))
        try:
            await self._send_all(plan.head, socket.MSG_MORE)
            while source.left:
                if buf is None:
                    try:
                        if not source.sendfile_to(self.sock.fileno()):
                            return False  # the file shrank since the plan
                    except BlockingIOError:
                        await self._wait_writable()
                        continue
                else:
                    chunk = await _read_chunk(source, buf)
                    if not chunk:
                        return False  # the file shrank since the plan
                    await self._send_all(chunk)
                # progress: restart the write timeout, and let the others run even if this client keeps up
                self.moved = True
                self.guard.deadline = trio.current_time() + self.ctx.limits.write_timeout
                await checkpoint()
            return True
        finally:
            source.close()

    async def _send_all(self, data: bytes | memoryview, flags: int = 0) -> None:
        """Send everything; a send that fits (a head, a small body) costs no wait at all."""
        while True:
            try:
                sent = self.sock.send(data, flags)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            await self._wait_writable()

    async def _wait_writable(self) -> None:
        # no progress for write_timeout from here: the guard cancels and the client is dropped
        self.moved = True
        self.guard.deadline = trio.current_time() + self.ctx.limits.write_timeout
        await wait_writable(self.sock)


async def _read_chunk(source: FileSource, buf: bytearray) -> bytes | memoryview:
    """The next chunk of a file: from the page cache without waiting for the disk (RWF_NOWAIT),
    which is a plain memcpy; only when the data is not cached, in a worker thread, so a
    cold disk never stalls the loop. A thread hand-off per chunk costs far more CPU than
    the copy itself."""
    view = memoryview(buf)[: source.left]  # buf is reused: the caller sends each chunk before the next
    try:
        n = os.preadv(source.fd, [view], source.offset, _RWF_NOWAIT)
    except OSError as exc:  # BlockingIOError: not cached; EOPNOTSUPP/EINVAL: no RWF_NOWAIT here
        if not isinstance(exc, BlockingIOError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        return await trio.to_thread.run_sync(source.read_chunk)
    source.offset += n
    source.left -= n
    return view[:n]
