"""gevent: a greenlet per connection on gevent's event loop, written as blocking code.

How it works: gevent's StreamServer watches the pre-made listener and spawns a
greenlet per accepted connection, which runs the same blocking conversation as the
threading model (runtime/blocking.py) on a gevent socket. Before that, still in the
hub, one non-blocking read: a connection that waited in the listen queue of a busy
server has usually sent its request already, and when the response is small and ends
the connection the hub sends it and closes, with no greenlet and no gevent socket. In
the greenlet's conversation every recv/send that would block switches to the hub
(libev's epoll loop) instead of blocking the process, and the work endpoint's wait
is gevent.sleep, a timer. Nothing is monkey-patched: only
the sockets this file creates are cooperative, so no other model or test process is
affected. --pool N caps live greenlets with a gevent Pool: when it is full the server
stops accepting and new connections queue in the kernel's listen backlog until one
finishes. SIGTERM/SIGINT arrive through gevent.signal_handler (a libev watcher, seen
at once even when the hub is idle); idle connections are closed at once, busy ones get
the grace period, then their greenlets are killed.

Good at: many idle or slow clients and backend-bound requests (wait=...) at the cost
of a small stack per greenlet, with the readable blocking style of the threading model
and no GIL contention between connections.
Breaks down: anything that holds the one thread: the CPU kernel of the work endpoint
stalls every connection in the process ("cpu work" scenario; --workers N is the
answer on many cores), and so would any blocking call a library makes outside gevent.
Connection churn that the hub cannot answer at once (keep-alive clients that connect
often, an idle server whose clients' requests come after the accept) costs a greenlet
and gevent's Python-level socket set-up and close per connection.
File bodies: a READ_CHUNK read-and-send loop by default, zero-copy sendfile with
--file-send sendfile. gevent's own socket.sendfile is not zero-copy (it falls back to
small read/send steps, since a blocking os.sendfile would stall the hub), so _Socket
calls os.sendfile on the non-blocking socket and waits in the hub whenever the socket
buffer is full. Copying is the default: on loopback copied data is cheaper for the
receiving client, whose core limits the large-file scenario; sendfile costs the server
less CPU per byte and wins where the server's core is the limit (many
connections of mid-sized files). Either way a file not in the page cache stalls the
hub for the disk read.
"""

from __future__ import annotations

import _socket
import os
import signal

import gevent
from gevent import getcurrent
from gevent._socket3 import _closedsocket
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket  # noqa: N812 (a class, named as one here)
from gevent.socket import wait_write

from ..protocol import HttpConnection, ResponsePlan
from .runtime.accepting import AcceptBackoff
from .runtime.blocking import serve_connection
from .runtime.context import ServerContext
from .runtime.listener import tune_connection
from .runtime.nonblocking import first_exchange, raise_open_files_limit

_CLOSED = _closedsocket(-1, -1, -1, -1, "closed")  # what a closed gevent socket delegates to


class _Socket(GeventSocket):
    """A gevent socket with a cheaper recv and sendall and a zero-copy sendfile.

    recv and sendall are gevent's own minus per-call set-up that costs more than the
    request: gevent's recv with a timeout creates a gevent.Timeout for each wait, and its
    sendall spends a getsockopt and chunking on every call. recv uses the same internals
    as gevent's (_sock, _read_event, hub.wait) with a bare libev timer instead, and
    yields before reading, so the next request has usually arrived when it reads.
    """

    def recv(self, *args) -> bytes:
        # one turn for the other greenlets first: by the time this one runs again, its client
        # has usually sent the next request, and reading it needs no wait in the hub
        gevent.sleep(0)
        while True:
            try:
                return self._sock.recv(*args)
            except BlockingIOError:
                if self.timeout == 0.0:
                    raise
            if self.timeout is None:
                self.hub.wait(self._read_event)
                continue
            # the timer throws socket.timeout into this greenlet; stopping it in time
            # (finally) also drops a firing that raced with the data, as gevent.Timeout does
            timer = self.hub.loop.timer(self.timeout)
            timer.start(getcurrent().throw, TimeoutError)
            try:
                self.hub.wait(self._read_event)
            finally:
                timer.close()

    def sendall(self, data, flags: int = 0) -> None:
        # one send() nearly always takes a whole head or small body: only the rest goes
        # through gevent's sendall
        sent = self.send(data, flags)
        if sent < len(data):
            super().sendall(memoryview(data)[sent:], flags)

    def close(self) -> None:
        """gevent's close minus what this server never needs: with no greenlet waiting on
        the socket and no makefile() open, it closes both watchers and the descriptor, and
        leaves a closed placeholder without asking the socket for its family, type and
        protocol (three enum conversions per connection). Anything else: gevent's close."""
        read, write = self._read_event, self._write_event
        if read is None or self._io_refs > 0 or read.callback is not None or write.callback is not None:
            super().close()
            return
        self._closed = True
        self._read_event = self._write_event = None
        read.close()
        write.close()
        sock, self._sock = self._sock, _CLOSED
        self._drop_ref_on_close(sock)

    def sendfile(self, file, offset: int = 0, count: int | None = None) -> int:
        """os.sendfile on the non-blocking socket, waiting in the hub while its buffer is full."""
        if count is None:  # to the end of the file, as socket.sendfile does
            count = os.fstat(file.fileno()).st_size - offset
        out, src = self.fileno(), file.fileno()
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(out, src, offset + sent, count - sent)
            except BlockingIOError:
                wait_write(out, timeout=self.timeout)  # the write timeout bounds each wait for progress
                continue
            if not n:
                break  # the file shrank since the plan: the caller drops the connection
            sent += n
        return sent


class _Server(StreamServer):
    """StreamServer answering a waiting request in the hub, handing out _Socket otherwise,
    and out of descriptors without a traceback."""

    _retry = None  # the timer that resumes accepting

    def __init__(self, ctx: ServerContext, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ctx = ctx
        self.backoff = AcceptBackoff()
        # as ints, once: the listener's properties convert them to enums on every read
        self.family, self.type, self.proto = int(self.socket.family), int(self.socket.type), self.socket.proto

    def do_read(self):
        try:
            fd, address = self.socket._accept()  # as gevent's own do_read: the listener said it is ready
        except OSError as exc:
            pause = self.backoff.pause_after(exc)
            if pause:  # out of fds or memory: stop watching the listener a while
                self.stop_accepting()
                self._retry = self.loop.timer(pause)
                self._retry.start(self._resume_accepting)
            return None  # else EAGAIN (a sibling worker took it) or it was already gone
        self.backoff.accepted()
        raw = _socket.socket(self.family, self.type, self.proto, fd)
        raw.setblocking(False)
        return raw, address

    def do_handle(self, raw: _socket.socket, _address: object) -> None:
        """In the hub, right after accept: a busy server accepts connections that waited in
        the listen queue, so their first request is often here already. One that its
        response ends is answered and closed here, without a greenlet or a gevent socket;
        any other connection gets its greenlet, with what was read so far."""
        try:
            conn, plans, rest = first_exchange(self.ctx, raw)
        except OSError:  # reset already
            raw.close()
            return
        if rest is not None and not rest:
            raw.close()
            return
        sock = _Socket(self.family, self.type, self.proto, fileno=raw.detach())
        super().do_handle(sock, conn, plans, rest)

    def _resume_accepting(self) -> None:
        self._retry.close()
        if self.started:  # not stopped meanwhile
            self.start_accepting()


def serve(ctx: ServerContext) -> None:
    raise_open_files_limit()  # one descriptor per client, and greenlets make thousands cheap
    # the Pool tracks every handler so shutdown can wait for them; size None means no cap
    handlers = Pool(ctx.options.get("pool"))

    def handle(
        sock: _Socket, conn: HttpConnection, plans: list[ResponsePlan] | None, rest: bytes | memoryview | None
    ) -> None:
        tune_connection(sock)
        if rest is None:
            serve_connection(sock, ctx, sleep=gevent.sleep, use_sendfile=ctx.use_sendfile, conn=conn, plans=plans)
            return
        try:  # the last response did not fit in one send
            sock.settimeout(ctx.limits.write_timeout)
            sock.sendall(rest)
        except OSError:
            pass  # the client is gone, or took nothing for write_timeout

    ctx.listener.setblocking(False)  # accept only when libev reports it readable, never block the hub
    server = _Server(ctx, ctx.listener, handle, spawn=handlers)
    stop = Event()

    def on_signal() -> None:
        server.stop_accepting()
        ctx.request_shutdown()  # closes idle connections; busy ones close after the response in flight
        stop.set()

    watchers = [gevent.signal_handler(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        server.start()
        if not ctx.stopping:  # a signal before the watchers existed went to the runtime's handler
            stop.wait()
        # closes the listener, waits up to the grace for responses in flight, then kills the rest
        server.stop(timeout=ctx.limits.grace)
    finally:
        for watcher in watchers:
            watcher.cancel()
