"""asyncio: asyncio Protocols on the stdlib event loop, or on uvloop with --loop uvloop.

How it works: one Protocol object per connection; data_received feeds the core and
writes the planned responses to the transport (or, for a head the core answered this
second, the reply bytes it has ready: ready_reply). Nothing on the hot path is a coroutine:
callbacks cost less than a task per connection, and the same shape runs on both loops.
What to send next comes from the shared Outbox (runtime/outbox.py), as in select; once
the client is gone (a write failed, or connection_lost) no step is taken and the file
is closed. The work endpoint's wait is a call_later. Timeouts are deadlines on the
protocol, filed in buckets that one timer sweeps (runtime/deadlines.py): no timer
handle per connection, no timer moved per request. Flow control is the transport's:
past its high-water mark it calls pause_writing, and the protocol stops reading that
client and feeding it file chunks until resume_writing. Shutdown: close the listener,
close idle connections, give busy ones the grace period.
The server accepts in a reader callback on the listener. Right after accept comes one
non-blocking read: a connection that waited in a busy server's listen queue has
usually sent its request, and when the response is small and ends the connection it
is sent and the socket closed there, with no transport or protocol at all. Any other
connection gets its protocol, which handles what was read in connection_made, before
the transport reads more: on the stdlib loop the loop's socket transport is made at
once (create_server adds a task, a future and a getpeername() per connection), on
uvloop connect_accepted_socket makes it. The stdlib loop's transport comes from its
private ``_make_socket_transport(sock, protocol)``: the public route to a transport
for an accepted socket, connect_accepted_socket, is a coroutine (a task per
connection) that does exactly that call inside it. The guard against a Python
upgrade: the method is looked up once at start and must take (sock, protocol)
positionally; if it is gone or its signature changed, the server says so on stderr
and uses connect_accepted_socket instead, as on uvloop (slower per connection,
the same behaviour). Reads: BufferedProtocol on the
stdlib loop (its plain Protocol allocates a fresh 256 KiB buffer per read), a plain
Protocol on uvloop (which reads into a buffer of its own).

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
import inspect
import signal
import sys
from collections.abc import Callable

from ..protocol import HttpConnection, ResponsePlan
from .runtime.accepting import Acceptor
from .runtime.context import ServerContext
from .runtime.deadlines import INF, SweptDeadlines
from .runtime.io_sizes import RECV_BYTES
from .runtime.nonblocking import FileSource, accepted_conversations, deadline_after_read, raise_open_files_limit
from .runtime.outbox import CLOSE, DONE, SEND, SENDFILE, WAIT, Outbox
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
        "limits",
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
        self.limits = srv.limits
        self.transport: asyncio.Transport | None = None
        self.http = http or srv.ctx.new_connection()
        self.box: Outbox | None = None  # made when a response needs more than one write
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
        if self.srv.stopping:
            transport.abort()
            return
        if self.srv.use_sendfile:
            transport.set_write_buffer_limits(high=0)  # see _send_file
        self.srv.protocols.add(self)
        self.deadline = self.loop.time() + self.limits.header_timeout
        self._arm()
        if self.first is not None:  # before any read: no later request may overtake it
            self.begin(*self.first)
            self.first = None

    def data_received(self, data: bytes) -> None:
        http = self.http
        out = None if self.busy else http.ready_reply(data)
        if out is not None:  # the keep-alive fast path: a reply the core has ready
            self.written += len(out)
            self.transport.write(out)
            self.deadline = self.loop.time() + self.limits.keepalive_timeout
            if self.deadline < self.armed_at:
                self._arm()
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
        http = self.http
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
                self.deadline = deadline_after_read(
                    http, was_partial, True, self.deadline, self.loop.time(), self.limits
                )
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
        self.deadline = now + (
            self.limits.header_timeout if http.has_partial_request else self.limits.keepalive_timeout
        )
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
        self.srv.deadlines.arm(self, self.deadline)

    def on_deadline(self) -> None:
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


def _takes_sock_and_protocol(method: object) -> bool:
    """Whether the stdlib loop's private transport factory still has the shape used here."""
    if not callable(method):
        return False
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 and [p.name for p in params[:2]] == ["sock", "protocol"]


def _accept_with(
    loop: asyncio.AbstractEventLoop, srv: Server, ctx: ServerContext, protocol_class: type[HttpProtocol]
) -> Callable[[], None]:
    """Accept in a reader callback on the listener (see the module docstring); returns the
    call that stops accepting."""
    listener, acceptor = ctx.listener, Acceptor(ctx)
    private = getattr(loop, "_make_socket_transport", None)  # see the module docstring
    if protocol_class is BufferedHttpProtocol and _takes_sock_and_protocol(private):
        make_transport = private  # the stdlib loop: its socket transport, made at once
    else:  # uvloop: a coroutine makes its transport, a task per connection the first exchange did not end
        if protocol_class is BufferedHttpProtocol:
            print(
                "serverzoo: no loop._make_socket_transport(sock, protocol); using connect_accepted_socket",
                file=sys.stderr,
            )

        def make_transport(sock: object, protocol: HttpProtocol) -> None:
            loop.create_task(loop.connect_accepted_socket(lambda: protocol, sock))  # type: ignore[arg-type]

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
