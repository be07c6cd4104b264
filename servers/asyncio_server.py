"""asyncio: asyncio Protocols on the stdlib event loop, or on uvloop with --loop uvloop.

How it works: one Protocol object per connection; data_received feeds the core and
writes what it plans to the transport. Nothing on the hot path is a coroutine:
callbacks cost less than a task per connection, and the same shape runs on both
loops. What to do between a read and a write, what to write beyond one small
response, the accepting and the deadlines are shared with select (runtime/, see
docs/event-loops.md): this file holds the callbacks and the writes. Once the client is
gone (a write failed, or connection_lost) no step is taken and the file is closed.
Flow control is the transport's: past its high-water mark it calls pause_writing, and
the protocol stops reading that client and feeding it file chunks until
resume_writing. The work endpoint's wait is a call_later; timeouts are deadlines in
buckets that one timer sweeps. A connection that one small response ends gets no
transport and no protocol at all. Reads: BufferedProtocol on the stdlib loop (its
plain Protocol allocates a fresh 256 KiB buffer per read), a plain Protocol on uvloop
(which reads into a buffer of its own).

Good at: the same as select (many idle or slow clients, small keep-alive requests);
uvloop's C loop and transports cost less per request than select's Python loop.
Breaks down: CPU-bound work blocks the loop and every client on it ("cpu work");
one process uses one core (--workers N runs N loops on the listener).
File bodies: a read-and-write loop by default (READ_CHUNK chunks written under the
transport's flow control, so memory stays bounded); --file-send sendfile uses
loop.sendfile in segments, so the write timeout sees progress. uvloop has no
loop.sendfile: with --loop uvloop files are always read and written. Copying is the
default for the reason select gives (the receiving client's core is the limit on
loopback, and sendfile'd data costs it more per byte).
"""

from __future__ import annotations

import asyncio
import sys

from ..protocol import HttpConnection, ResponsePlan
from .runtime.asyncio_support import LiveConnections, report_loop_error, send_file, until_stop_signal
from .runtime.asyncio_transport import transport_maker
from .runtime.context import ServerContext
from .runtime.deadlines import INF, SweptDeadlines
from .runtime.io_sizes import RECV_BYTES
from .runtime.nonblocking import Conversations, FileSource, ListenerWatch, raise_open_files_limit
from .runtime.outbox import CLOSE, DONE, SEND, SENDFILE, WAIT, Outbox
from .runtime.policy import AT_EOF, DROP, KEEP_SENDING, QUEUED, SEND_408, ConnectionPolicy


class Server:
    """What the protocols of one process share: the context, the loop, the live connections."""

    def __init__(self, ctx: ServerContext, loop: asyncio.AbstractEventLoop, use_sendfile: bool) -> None:
        self.ctx = ctx
        self.loop = loop
        self.limits = ctx.limits
        self.use_sendfile = use_sendfile
        self.live: LiveConnections[HttpProtocol] = LiveConnections()
        self.stopping = False
        # BufferedProtocol reads land here: the loop runs one callback at a time, and
        # each read is copied out before the next, so one buffer serves every connection
        self.read_buffer = bytearray(RECV_BYTES)
        self.read_view = memoryview(self.read_buffer)
        self.deadlines = SweptDeadlines(loop.call_at, loop.time)
        self.policy = ConnectionPolicy(ctx.limits, use_sendfile, self.deadlines)


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
        first: list[ResponsePlan] | None = None,
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
        self.first = first  # the plans of the accept callback's first read, answered in connection_made

    # -- the transport's callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        srv = self.srv
        if srv.stopping:
            transport.abort()
            return
        if srv.use_sendfile:
            transport.set_write_buffer_limits(high=0)  # see _send_file
        srv.live.add(self)
        srv.deadlines.move(self, self.loop.time() + srv.limits.header_timeout)
        if self.first is not None:  # before any read: no later request may overtake it
            self._answer(self.first, False)
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
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        self.srv.policy.closed(self)  # the response ends here: its file is closed, nothing more is written
        self.srv.live.discard(self)

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
        """--file-send sendfile (runtime/asyncio_support.py); the buffer is empty when it
        starts: a zero high-water mark in this mode."""
        if await send_file(self.loop, self.transport, f, self):
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

    def drain(self) -> None:
        """Shutdown: close now if waiting for a request that has not begun, with nothing left to write."""
        if self.srv.policy.drain(self) and not self.busy and not self.transport.get_write_buffer_size():
            self.transport.close()

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
        sending = bool(
            buffered or self.write_paused or t.is_closing() or (self.box is not None and self.box.file is not None)
        )
        todo = self.srv.policy.on_deadline(self, sending, self.written - buffered != self.progress)
        if todo == KEEP_SENDING:
            self._expect_progress()
        elif todo == SEND_408:
            self._pump()  # then close
        elif todo == DROP:
            self.abort()  # no progress sending for write_timeout
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


async def _serve(ctx: ServerContext, use_sendfile: bool, protocol: type[HttpProtocol]) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(report_loop_error)
    srv = Server(ctx, loop, use_sendfile)
    make_transport = transport_maker(loop, stdlib=protocol is BufferedHttpProtocol)

    def accept(conversations: Conversations) -> None:
        for sock, http, plans in conversations:
            make_transport(sock, protocol(srv, http, plans))

    listening = ListenerWatch(ctx, accept, loop.add_reader, loop.remove_reader, loop.call_later)
    listening.start()
    await until_stop_signal(loop, ctx)
    listening.close()
    ctx.request_shutdown()
    srv.stopping = True
    await srv.live.drain_all(ctx.limits.grace)


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
