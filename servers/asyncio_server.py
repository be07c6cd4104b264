"""asyncio: asyncio Protocols on the stdlib event loop, or on uvloop with --loop uvloop.

How it works: the loop (a selectors loop in the stdlib, libuv under uvloop) accepts
and calls back one Protocol object per connection: data_received feeds the core and
writes the planned responses to the transport. Nothing here is a coroutine on the hot
path: callbacks are cheaper than a task per connection, and the same shape runs on
both loops. The work endpoint's wait is a call_later; timeouts are deadlines checked
by one lazily re-armed call_at per connection. Flow control is the transport's own:
when its buffer passes the high-water mark it calls pause_writing, and the protocol
stops reading that client and stops feeding it file chunks until resume_writing.
Shutdown is loop.add_signal_handler: close the listener, close idle connections, give
busy ones the grace period.

Good at: the same as select (many idle or slow clients, small keep-alive requests);
uvloop's C loop and transports cost less per request than select's Python loop
("small files keep-alive", "new connection per request"). User-space instructions
per request (callgrind) put uvloop below select below the stdlib loop, with the shared
core the larger part of each.
Breaks down: CPU-bound work blocks the loop and every client on it ("cpu work");
one process uses one core (--workers N runs N loops on the listener).
File bodies: a read-and-write loop by default (READ_CHUNK pread chunks written to the
transport under its flow control, so memory stays bounded); --file-send sendfile
uses loop.sendfile (os.sendfile under the stdlib loop, in SENDFILE_SEGMENT steps so
the write timeout sees progress). uvloop has no loop.sendfile, so with --loop uvloop
files are always read and written. The read loop is the default for the reason select
gives: on loopback a client receiving sendfile'd data spends more CPU per byte, and
the client's core limits the large-file scenario.
What to send next comes from the shared Outbox (runtime/outbox.py), as in select; when
the client is gone (a write failed, or connection_lost) not one more step is taken and
the file is closed.
Reads: BufferedProtocol on the stdlib loop (its plain Protocol allocates a fresh
256 KiB buffer per read), a plain Protocol on uvloop (which already reads into a
buffer of its own).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from .runtime.context import ServerContext
from .runtime.io_sizes import RECV_BYTES
from .runtime.nonblocking import FileSource, deadline_after_read, raise_open_files_limit
from .runtime.outbox import CLOSE, DONE, SEND, SENDFILE, WAIT, Outbox
from .runtime.stderr_log import report

INF = float("inf")
SENDFILE_SEGMENT = 1024 * 1024  # loop.sendfile reports no progress until it returns


class Server:
    """What the protocols of one process share: the context, the loop, the live connections."""

    def __init__(self, ctx: ServerContext, loop: asyncio.AbstractEventLoop, use_sendfile: bool) -> None:
        self.ctx = ctx
        self.loop = loop
        self.limits = ctx.limits
        self.use_sendfile = use_sendfile
        self.protocols: set[HttpProtocol] = set()
        self.stopping = False
        # BufferedProtocol reads land here: the loop runs one callback at a time, and
        # each read is copied out before the next, so one buffer serves every connection
        self.read_buffer = bytearray(RECV_BYTES)
        self.read_view = memoryview(self.read_buffer)
        self.all_closed: asyncio.Future | None = None

    def forget(self, proto: HttpProtocol) -> None:
        self.protocols.discard(proto)
        if not self.protocols and self.all_closed is not None and not self.all_closed.done():
            self.all_closed.set_result(None)

    async def drain(self) -> None:
        """Close idle connections now; give the others the grace period, then abort them."""
        self.stopping = True
        self.all_closed = self.loop.create_future()
        for proto in list(self.protocols):
            proto.http.draining = True  # responses from now on say Connection: close
            if proto.idle():
                proto.transport.close()
        if self.protocols:
            try:
                await asyncio.wait_for(asyncio.shield(self.all_closed), self.limits.grace)
            except asyncio.TimeoutError:
                for proto in list(self.protocols):
                    proto.abort()
                await asyncio.sleep(0)  # let connection_lost run


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("srv", "loop", "limits", "transport", "http", "box", "busy", "reading", "eof", "write_paused",
                 "written", "progress", "deadline", "timer", "armed_at", "pending")

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.loop = srv.loop
        self.limits = srv.limits
        self.transport: asyncio.Transport | None = None
        self.http = srv.ctx.new_connection()
        self.box: Outbox | None = None  # made when a response needs more than one write
        self.busy = False  # a response is in progress beyond one plain write
        self.reading = True
        self.eof = False  # the client half-closed while a response was in progress
        self.write_paused = False
        self.written = 0  # bytes handed to the transport; minus what it still buffers = sent
        self.progress = 0  # bytes sent when the current write deadline was set
        self.deadline = INF
        self.timer: asyncio.TimerHandle | None = None
        self.armed_at = INF
        self.pending: asyncio.Handle | asyncio.Task | None = None  # a work wait or a sendfile task

    # -- the transport's callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if self.srv.stopping:
            transport.abort()
            return
        if self.srv.use_sendfile:
            transport.set_write_buffer_limits(high=0)  # see _send_file
        self.srv.protocols.add(self)
        self.deadline = self.loop.time() + self.limits.header_timeout
        self._arm()

    def data_received(self, data: bytes) -> None:
        http = self.http
        was_partial = http.has_partial_request
        plans = http.receive(data)
        if not plans:
            if http.closed:
                self.transport.close()
                return
            self.deadline = deadline_after_read(http, was_partial, False, self.deadline, self.loop.time(), self.limits)
            if self.deadline < self.armed_at:
                self._arm()
            return
        if len(plans) == 1 and not self.busy:
            plan = plans[0]
            if plan.file is None and plan.work is None:
                # the fast path: one small response, one write
                out = plan.head + plan.body if plan.body else plan.head
                self.written += len(out)
                self.transport.write(out)
                if plan.close:
                    self._close_when_flushed()
                    return
                self.deadline = deadline_after_read(http, was_partial, True, self.deadline, self.loop.time(),
                                                    self.limits)
                if self.deadline < self.armed_at:
                    self._arm()
                return
        if self.box is None:
            self.box = Outbox(self.srv.use_sendfile)
        self.box.add(plans)
        if not self.busy:
            self._pump()

    def eof_received(self) -> bool:
        if self.busy:
            self.eof = True  # finish the responses in progress, then close
            return True
        return False  # nothing in progress: let the transport close

    def pause_writing(self) -> None:
        self.write_paused = True
        self._hold()
        self._expect_progress()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.pending is None:
            # not from inside this callback: closing here, with the buffer just emptied,
            # makes the 3.11 selector transport report connection_lost twice
            self.loop.call_soon(self._pump)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        if self.box is not None:
            self.box.discard()  # the response ends here: its file is closed, nothing more is written
        self.srv.forget(self)

    # -- sending responses --------------------------------------------------------------
    def _pump(self) -> None:
        """Write the outbox's steps in order until done, the transport pushes back, or a wait starts."""
        t = self.transport
        box = self.box
        if box is None:
            box = self.box = Outbox(self.srv.use_sendfile)
        while not self.write_paused:
            if t.is_closing():  # a write failed (the client is gone), or we closed: not one more step
                return
            step = box.step()
            if step == SEND:
                data = box.data
                self.written += len(data)
                t.write(data)
            elif step == DONE:
                break
            elif step == SENDFILE:
                self._hold()
                self._expect_progress()
                self.pending = self.loop.create_task(self._send_file(box.data))
                return
            elif step == WAIT:
                self._hold()
                self.deadline = INF  # no timeout while the work endpoint waits
                self.pending = self.loop.call_later(box.data, self._resume)
                return
            elif step == CLOSE:
                self._close_when_flushed()
                return
            else:  # ABORT: the file vanished or shrank since it was planned
                t.abort()
                return
        else:
            self._hold()  # resume_writing calls _pump again
            return
        # everything is written (perhaps still in the transport's buffer)
        self.busy = False
        http = self.http
        if self.eof or (self.srv.stopping and not http.has_partial_request):
            self._close_when_flushed()
            return
        if not self.reading:
            self.reading = True
            t.resume_reading()
        now = self.loop.time()
        self.deadline = now + (self.limits.header_timeout if http.has_partial_request
                               else self.limits.keepalive_timeout)
        if self.deadline < self.armed_at:
            self._arm()

    def _resume(self) -> None:
        """The work endpoint's wait is over: send its response and carry on."""
        self.pending = None
        self._expect_progress()
        self._pump()

    async def _send_file(self, f: FileSource) -> None:
        """--file-send sendfile: loop.sendfile in segments. The buffer is empty when this
        starts (a zero high-water mark in this mode), and the transport is aborted only
        here, after loop.sendfile has unwound: aborting it mid-call breaks the 3.11
        selector transport (its empty-waiter future is already done)."""
        t = self.transport
        try:
            with open(f.fd, "rb", buffering=0, closefd=False) as fileobj:
                while f.left:
                    segment = min(f.left, SENDFILE_SEGMENT)
                    # fallback=False: a reset client must not send the rest through executor threads
                    sent = await self.loop.sendfile(t, fileobj, f.offset, segment, fallback=False)
                    self.written += sent
                    f.offset += sent
                    f.left -= sent
                    if sent < segment:  # the file shrank: a short body, then drop
                        t.abort()
                        return
        except (OSError, RuntimeError, asyncio.CancelledError):  # client gone, or we gave up on it
            t.abort()
            return
        self.pending = None
        self._pump()

    def _hold(self) -> None:
        """A response is in progress: stop reading this client until it is done (back-pressure)."""
        self.busy = True
        if self.reading:
            self.reading = False
            self.transport.pause_reading()

    def _close_when_flushed(self) -> None:
        t = self.transport
        if t.get_write_buffer_size():
            self._expect_progress()
        t.close()  # sends what is buffered first; the timer still watches progress

    def abort(self) -> None:
        if isinstance(self.pending, asyncio.Task):
            self.pending.cancel()  # _send_file aborts once loop.sendfile has unwound
        else:
            self.transport.abort()

    def idle(self) -> bool:
        return not self.busy and not self.http.has_partial_request and not self.transport.get_write_buffer_size()

    # -- deadlines ------------------------------------------------------------------------
    def _expect_progress(self) -> None:
        """Sending is under way: the client must take some bytes within write_timeout."""
        self.progress = self.written - self.transport.get_write_buffer_size()
        self.deadline = self.loop.time() + self.limits.write_timeout
        if self.deadline < self.armed_at:
            self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.armed_at = self.deadline
        self.timer = self.loop.call_at(self.deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self.timer = None
        self.armed_at = INF
        now = self.loop.time()
        if self.deadline > now:
            if self.deadline < INF:
                self._arm()  # the deadline moved on since this timer was set
            return
        t = self.transport
        buffered = t.get_write_buffer_size()
        if buffered or self.write_paused or (self.box is not None and self.box.file is not None) or t.is_closing():
            if self.written - buffered != self.progress:  # the client took some bytes: carry on
                self._expect_progress()
                return
            self.abort()  # no progress sending for write_timeout
            return
        late = self.http.error_for_timeout()  # 408 if a head was half sent, else a quiet close
        if late is not None:
            self.written += len(late.head) + len(late.body)
            t.write(late.head + late.body)
        self._close_when_flushed()


class BufferedHttpProtocol(HttpProtocol, asyncio.BufferedProtocol):
    """The stdlib loop's reads for a plain Protocol are recv(256 KiB): a fresh 256 KiB
    allocation per read, which costs as much as the rest of a small request.
    recv_into a shared buffer and copying out the few bytes read costs next to nothing."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.srv.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.srv.read_view[:nbytes].tobytes())


def _report(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """One line for the loop's OS-level troubles (out of descriptors on accept, a reset
    peer); the full default report, traceback included, for anything else (a bug)."""
    exc = context.get("exception")
    if isinstance(exc, OSError):
        message = context.get("message", "event loop error")
        report(message, f"serverzoo: {message}: {exc}")
    else:
        loop.default_exception_handler(context)


async def _serve(ctx: ServerContext, use_sendfile: bool, protocol: type[HttpProtocol]) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_report)
    srv = Server(ctx, loop, use_sendfile)
    stop = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if ctx.stopping:  # a signal came before our handlers were in place
        on_signal()
    server = await loop.create_server(lambda: protocol(srv), sock=ctx.listener, backlog=ctx.config.backlog)
    await stop
    server.close()
    ctx.request_shutdown()
    await srv.drain()


def serve(ctx: ServerContext) -> None:
    raise_open_files_limit()
    use_sendfile = ctx.use_sendfile
    loop_factory = None
    protocol: type[HttpProtocol] = BufferedHttpProtocol
    if ctx.options.get("loop", "asyncio") == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
        protocol = HttpProtocol  # uvloop reads into a buffer of its own and hands over exact-size bytes
        if use_sendfile:
            print("serverzoo: uvloop has no loop.sendfile; sending files with the read loop", file=sys.stderr)
            use_sendfile = False
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(ctx, use_sendfile, protocol))
