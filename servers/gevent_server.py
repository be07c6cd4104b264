"""gevent: a greenlet per connection on gevent's event loop, written as blocking code.

How it works: gevent's StreamServer watches the pre-made listener and spawns a
greenlet per accepted connection, which runs the same blocking conversation as the
threading model (runtime/blocking.py) on a gevent socket: every recv/send that would
block switches to the hub (libev's epoll loop) instead of blocking the process, and
the work endpoint's wait is gevent.sleep, a timer. Nothing is monkey-patched: only
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
Per request it pays for greenlet switches, a hub timer per blocking recv (the timeouts
are real deadlines) and Python-level socket wrappers, so it trails the callback loops
on "small files keep-alive". (_Socket.sendall skips gevent's per-call set-up when one
send() takes the whole response, as it nearly always does.)
File bodies: zero-copy sendfile by default, made cooperative here: gevent's own
socket.sendfile is not zero-copy (it falls back to 8 KiB read/send steps, since a
blocking os.sendfile would stall the hub), so _Socket calls os.sendfile on the
non-blocking socket and waits in the hub whenever the socket buffer is full (a file
not in the page cache still stalls the hub for the disk read, either way). It costs
the server half the CPU of the 256 KiB read-and-send loop (--file-send read): 13.7 vs
24.9 ms per 64 MiB response, 102 vs 221 us per 300 KiB one (gevent's socket.sendfile:
about 68 ms per 64 MiB). On the shared, busy machine where that was measured
(bench/cost_per_request.py, 2026-11-22) the 64 MiB throughput of the two ways swapped
places between runs, so the final word is the benchmark's on a quiet machine.
"""

from __future__ import annotations

import os
import signal

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket
from gevent.socket import wait_write

from .runtime.blocking import serve_connection
from .runtime.context import _ACCEPT_BACKOFF, _ACCEPT_SKIP, ServerContext
from .runtime.listener import tune_connection
from .runtime.nonblocking import raise_open_files_limit


class _Socket(GeventSocket):
    """A gevent socket with a zero-copy sendfile and a shorter sendall."""

    def sendall(self, data, flags: int = 0) -> None:
        # gevent's sendall sets up chunking and a deadline (a getsockopt and a clock read)
        # on every call; one send() takes a whole head or small body nearly always
        sent = self.send(data, flags)
        if sent < len(data):
            super().sendall(memoryview(data)[sent:], flags)

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
    """StreamServer handing out _Socket, and out of descriptors without a traceback."""

    backoff = 0.0  # seconds before accepting again after running out of descriptors
    _retry = None  # the timer that resumes accepting

    def do_read(self):
        try:
            fd, address = self.socket._accept()  # as gevent's own do_read: the listener said it is ready
        except OSError as exc:
            if exc.errno in _ACCEPT_BACKOFF:  # out of fds or memory: stop watching the listener a while
                self.stop_accepting()
                self.backoff = min(max(self.backoff * 2, 0.01), 1.0)
                self._retry = self.loop.timer(self.backoff)
                self._retry.start(self._resume_accepting)
                return None
            if exc.errno in _ACCEPT_SKIP:  # EAGAIN: a sibling worker took it; or it was already gone
                return None
            raise
        self.backoff = 0.0
        return _Socket(self.socket.family, self.socket.type, self.socket.proto, fileno=fd), address

    def _resume_accepting(self) -> None:
        self._retry.close()
        if self.started:  # not stopped meanwhile
            self.start_accepting()


def serve(ctx: ServerContext) -> None:
    raise_open_files_limit()  # one descriptor per client, and greenlets make thousands cheap
    use_sendfile = ctx.options.get("file_send", "sendfile") == "sendfile"
    # the Pool tracks every handler so shutdown can wait for them; size None means no cap
    handlers = Pool(ctx.options.get("pool"))

    def handle(sock: _Socket, _address: object) -> None:
        tune_connection(sock)
        serve_connection(sock, ctx, sleep=gevent.sleep, use_sendfile=use_sendfile)

    ctx.listener.setblocking(False)  # accept only when libev reports it readable, never block the hub
    server = _Server(ctx.listener, handle, spawn=handlers)
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
