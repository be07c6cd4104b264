"""asyncio: asyncio Protocols on the stdlib event loop, or on uvloop with --loop uvloop.

How it works: one Protocol object per connection; data_received feeds the core and
writes what it plans to the transport. Nothing on the hot path is a coroutine:
callbacks cost less than a task per connection, and the same shape runs on both
loops. What happens between a read and a write is ConnectionPolicy's decision
(runtime/policy.py), and what to send beyond one small response the Outbox's
(runtime/outbox.py), both shared with select: this file holds the callbacks and the
writes. Once the client is gone (a write failed, or connection_lost) no step is taken
and the file is closed. The work endpoint's wait is a call_later; timeouts are
deadlines in buckets that one timer sweeps (runtime/deadlines.py). Flow control is
the transport's: past its high-water mark it calls pause_writing, and the protocol
stops reading that client and feeding it file chunks until resume_writing.
Shutdown: close the listener, close idle connections, give busy ones the grace period.
The server accepts in a reader callback on the listener and reads each new connection
once at once: a small response that ends it is sent and the socket closed with no
transport or protocol at all (docs/event-loops.md). Any other connection gets its
protocol, which handles what was read in connection_made, and its transport from
runtime/asyncio_transport.py (on the stdlib loop at once, with no task). Reads:
BufferedProtocol on the stdlib loop (its plain Protocol allocates a fresh 256 KiB
buffer per read), a plain Protocol on uvloop (which reads into a buffer of its own).

Good at: the same as select (many idle or slow clients, small keep-alive requests);
uvloop's C loop and transports cost less per request than select's Python loop.
Breaks down: CPU-bound work blocks the loop and every client on it ("cpu work");
one process uses one core (--workers N runs N loops on the listener).
File bodies: a read-and-write loop by default (READ_CHUNK chunks written under the
transport's flow control, so memory stays bounded); --file-send sendfile uses
loop.sendfile in SENDFILE_SEGMENT steps, so the write timeout sees progress. uvloop
has no loop.sendfile: with --loop uvloop files are always read and written. Copying is
the default for the reason select gives (the receiving client's core is the limit on
loopback, and sendfile'd data costs it more per byte).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

from ..protocol import HttpConnection, ResponsePlan
from .runtime.accepting import Acceptor
from .runtime.asyncio_transport import transport_maker
from .runtime.context import ServerContext
from .runtime.deadlines import INF, SweptDeadlines
from .runtime.io_sizes import RECV_BYTES
from .runtime.nonblocking import FileSource, accepted_conversations, raise_open_files_limit
from .runtime.outbox import CLOSE, DONE, SEND, SENDFILE, WAIT, Outbox
from .runtime.policy import AT_EOF, QUEUED, ConnectionPolicy
from .runtime.stderr_log import report

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
        self.deadlines = SweptDeadlines(loop.call_at, loop.time)
        self.policy = ConnectionPolicy(ctx.limits, use_sendfile, self.deadlines)

    def forget(self, proto: HttpProtocol) -> None:
        self.protocols.discard(proto)
        if not self.protocols and self.all_closed is not None and not self.all_closed.done():
            self.all_closed.set_result(None)

    async def drain(self) -> None:
        """Close idle connections now; give the others the grace period, then abort them."""
        self.stopping = True
        self.all_closed = self.loop.create_future()
        for proto in list(self.protocols):
            if self.policy.drain(proto) and not proto.busy and not proto.transport.get_write_buffer_size():
                proto.transport.close()
        if self.protocols:
            try:
                await asyncio.wait_for(asyncio.shield(self.all_closed), self.limits.grace)
            except TimeoutError:
                for proto in list(self.protocols):
                    proto.abort()
                await asyncio.sleep(0)  # let connection_lost run


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "armed_at",
        "box",
        "busy",
        "deadline",
        "eof",
        "first",
        "http",
        "keepalive_timeout",
        "loop",
        "pending",
        "progress",
        "reading",
        "srv",
        "transport",
        "write_paused",
        "written",
    )

    def __init__(
        self,
        srv: Server,
        http: HttpConnection | None = None,
        first: tuple[list[ResponsePlan], bytes | memoryview | None] | None = None,
    ) -> None:
        self.srv = srv
        self.loop = srv.loop
        self.keepalive_timeout = srv.limits.keepalive_timeout
        self.transport: asyncio.Transport | None = None
        self.http = http or srv.ctx.new_connection()
        self.box: Outbox | None = None
        self.busy = False  # a response is in progress beyond one plain write
        self.reading = True
        self.eof = False  # the client half-closed while a response was in progress
        self.write_paused = False
        self.written = 0  # bytes handed to the transport; minus what it still buffers = sent
        self.progress = 0  # bytes sent when the current write deadline was set
        self.deadline = INF
        self.armed_at = INF
        self.pending: asyncio.Handle | asyncio.Task | None = None  # a work wait or a sendfile task
        self.first = first  # what the accept callback's first exchange left to do (see begin)

    # -- the transport's callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        srv = self.srv
        if srv.stopping:
            transport.abort()
            return
        if srv.use_sendfile:
            transport.set_write_buffer_limits(high=0)  # see _send_file
        srv.protocols.add(self)
        srv.deadlines.move(self, self.loop.time() + srv.limits.header_timeout)
        if self.first is not None:  # before any read: no later request may overtake it
            self.begin(*self.first)
            self.first = None

    def data_received(self, data: bytes) -> None:
        http = self.http
        out = None if self.busy else http.ready_reply(data)
        if out is not None:  # the keep-alive fast path: a reply the core has ready
            self.written += len(out)
            self.transport.write(out)
            # policy.after_reply, inline
            self.deadline = self.loop.time() + self.keepalive_timeout
            if self.deadline < self.armed_at:
                self.srv.deadlines.file(self, self.deadline)
            return
        was_partial = http.has_partial_request
        self._answer(http.receive(data), was_partial)

    def begin(self, plans: list[ResponsePlan], rest: bytes | memoryview | None) -> None:
        """Carry on a conversation the accept callback began: the plans of its first read,
        or the rest of a last response that did not fit in one send."""
        if rest is None:
            self._answer(plans, False)
            return
        self.written += len(rest)
        self.transport.write(rest)
        self._close_when_flushed()

    def _answer(self, plans: list[ResponsePlan], was_partial: bool) -> None:
        now = self.loop.time()
        todo = self.srv.policy.after_read(self, plans, was_partial, now)
        if todo.__class__ is not int:  # one small response, one write
            self.written += len(todo)
            self.transport.write(todo)
            if self.http.closed:
                self._close_when_flushed()
            else:
                self.srv.policy.after_reply(self, now, False)  # a draining core's replies close
        elif todo == QUEUED:
            if not self.busy:
                self._pump()
        elif todo == AT_EOF:
            self.transport.close()

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
        self.srv.deadlines.remove(self)
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
        box = self.srv.policy.outbox(self)
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
        if self.eof or not self.srv.policy.after_reply(self, self.loop.time(), self.srv.stopping):
            self._close_when_flushed()
        elif not self.reading:
            self.reading = True
            t.resume_reading()

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

    # -- deadlines ------------------------------------------------------------------------
    def _expect_progress(self) -> None:
        """Sending is under way: the client must take some bytes within write_timeout."""
        self.progress = self.written - self.transport.get_write_buffer_size()
        self.srv.policy.expect_progress(self, self.loop.time())

    def on_deadline(self) -> None:
        t = self.transport
        buffered = t.get_write_buffer_size()
        if buffered or self.write_paused or (self.box is not None and self.box.file is not None) or t.is_closing():
            if self.written - buffered != self.progress:  # the client took some bytes: carry on
                self._expect_progress()
            else:
                self.abort()  # no progress sending for write_timeout
        elif self.srv.policy.read_timeout(self):
            self._pump()  # a 408, then close
        else:
            t.close()


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


def _accept_with(
    loop: asyncio.AbstractEventLoop, srv: Server, ctx: ServerContext, protocol_class: type[HttpProtocol]
) -> Callable[[], None]:
    """Accept in a reader callback on the listener (see the module docstring); returns the
    call that stops accepting."""
    listener, acceptor = ctx.listener, Acceptor(ctx)
    make_transport = transport_maker(loop, stdlib=protocol_class is BufferedHttpProtocol)

    def on_readable() -> None:
        for sock, http, plans, rest in accepted_conversations(acceptor, ctx):
            make_transport(sock, protocol_class(srv, http, None if plans is None else (plans, rest)))
        if acceptor.pause:  # out of fds or memory: stop watching the listener a while
            loop.remove_reader(listener.fileno())
            loop.call_later(acceptor.pause, watch)

    def watch() -> None:
        if listener.fileno() >= 0:  # not closed by stop() meanwhile
            loop.add_reader(listener.fileno(), on_readable)

    def stop() -> None:
        loop.remove_reader(listener.fileno())
        listener.close()

    watch()
    return stop


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
    close_listener = _accept_with(loop, srv, ctx, protocol)
    await stop
    close_listener()
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
