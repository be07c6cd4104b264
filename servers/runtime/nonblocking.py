"""What event-loop models need that blocking models get from the kernel for free.

A blocking model waits in recv() with a timeout and lets sendall()/sendfile() finish;
an event loop instead keeps deadlines itself, sends what fits and resumes later, and
must turn away a connection it cannot watch; and it accepts when its listener is
ready, a burst at a time, through its own calls (ListenerWatch). These helpers hold
those pieces once, so the loop files (select, asyncio) show only how they wait.
"""

from __future__ import annotations

import _socket  # accepted sockets are the C-level type (runtime/accepting.py)
import os
import resource
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace

from ...protocol import FileSlice, HttpConnection, Limits, ResponsePlan
from ...protocol.responses import HeadWriter
from .accepting import Acceptor
from .clock import http_date
from .context import ServerContext
from .io_sizes import READ_CHUNK, RECV_BYTES
from .sendfile import open_slice


def raise_open_files_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (an event loop holds one fd per client).

    Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def deadline_after_read(
    http: HttpConnection, was_partial: bool, had_plans: bool, current: float, now: float, limits: Limits
) -> float:
    """The connection's next deadline once the core has seen some bytes.

    A request head has header_timeout from its first byte (a dribbling client cannot
    extend it); an idle connection has keepalive_timeout from its last response.
    """
    if http.has_partial_request:
        if not was_partial or had_plans:  # a new head started in these bytes
            return now + limits.header_timeout
        return current
    return now + limits.keepalive_timeout


def send_final_response(sock: _socket.socket, plans: list[ResponsePlan]) -> bytes | memoryview | None:
    """Answer a connection's request at once when its answer is also its end.

    When plans are one response held in memory (no file body, no work) that closes the
    connection, send it on the non-blocking sock and return what did not fit: b"" nearly
    always, a fresh socket's buffer takes a small response whole; the caller sends the
    rest its own way, then closes. None for anything else, and then nothing was sent.
    This is the whole life of a connection that sends one request with Connection: close
    into a busy server, so a model can serve it without setting up anything more.
    """
    if len(plans) != 1:
        return None
    plan = plans[0]
    if not plan.close or plan.file is not None or plan.work is not None:
        return None
    out = plan.head + plan.body if plan.body else plan.head
    try:
        sent = sock.send(out)
    except BlockingIOError:
        sent = 0
    return memoryview(out)[sent:] if sent < len(out) else b""


def first_exchange(
    ctx: ServerContext, sock: _socket.socket
) -> tuple[HttpConnection, list[ResponsePlan] | None, bytes | memoryview | None]:
    """A new connection's first read, right after accept, and its answer if that ends it.

    A busy server accepts connections that waited in its listen queue, so their first
    request is usually here already; when its response is also the connection's end,
    the model can answer it and close without setting anything else up. Returns the
    core, the plans of what was read (None: nothing yet) and what send_final_response
    returned (None: the conversation goes on; b"": answered, close the socket). Raises
    OSError if the client is already gone.
    """
    http = ctx.new_connection()
    try:
        plans = http.receive(sock.recv(RECV_BYTES))
    except BlockingIOError:
        return http, None, None
    return http, plans, send_final_response(sock, plans)


# each accepted connection that goes on: its socket, its core, the plans of its first read (None: nothing yet)
Conversations = Iterator[tuple[_socket.socket, HttpConnection, list[ResponsePlan] | None]]


def accepted_conversations(acceptor: Acceptor, ctx: ServerContext) -> Conversations:
    """One burst of accepts with each connection's first exchange done: connections it
    answered for good, or found reset, are closed here; the others are yielded with the
    core and the plans of the first read (None: nothing read yet), for the model to carry
    on. A last response that did not fit in one send comes back as a plan of its own
    holding the unsent rest (it closes the connection), so the model sends it as it
    sends any small response."""
    for sock in acceptor.burst():
        try:
            http, plans, rest = first_exchange(ctx, sock)
        except OSError:  # reset already
            sock.close()
            continue
        if rest is not None and plans:  # the response that ends it is sent, or begun
            if not rest:  # answered, and that was its end
                sock.close()
                continue
            plans = [replace(plans[0], head=bytes(rest), body=b"")]
        yield sock, http, plans


class ListenerWatch:
    """An event loop's listener: watched for readiness, each readiness one burst of
    accepted conversations (accepted_conversations) handed to the model's take(); an
    accept back-off (out of descriptors or memory) unwatches it for the pause, and close()
    ends it for good. watch, unwatch and call_later are the loop's own calls (select's
    poller, asyncio's add_reader)."""

    __slots__ = ("_acceptor", "_call_later", "_ctx", "_fd", "_take", "_unwatch", "_watch", "closed", "watching")

    def __init__(
        self,
        ctx: ServerContext,
        take: Callable[[Conversations], None],
        watch: Callable[[int, Callable[[], None]], object],
        unwatch: Callable[[int], object],
        call_later: Callable[[float, Callable[[], None]], object],
    ) -> None:
        self._ctx = ctx
        self._acceptor = Acceptor(ctx)
        self._fd = ctx.listener.fileno()
        self._take, self._watch, self._unwatch, self._call_later = take, watch, unwatch, call_later
        self.watching = False
        self.closed = False

    def start(self) -> None:
        """Watch the listener (again, after a pause; not once it is closed)."""
        if not self.closed and not self.watching:
            self._watch(self._fd, self._readable)
            self.watching = True

    def _readable(self) -> None:
        acceptor = self._acceptor
        self._take(accepted_conversations(acceptor, self._ctx))
        if acceptor.pause and not self._ctx.stopping:
            self._unwatch(self._fd)
            self.watching = False
            self._call_later(acceptor.pause, self.start)

    def close(self) -> None:
        """Stop accepting: unwatch the listener and close it."""
        if self.watching:
            self._unwatch(self._fd)
            self.watching = False
        self.closed = True
        self._ctx.listener.close()


def refuse(sock: socket.socket, server_name: str, reason: str) -> None:
    """Answer 503 to a connection the loop cannot take, and close it: best effort, never blocking."""
    plan = HeadWriter(server_name, http_date).error(503, reason, close=True)
    try:
        sock.recv(RECV_BYTES)  # a request already here would turn our close into a reset
    except OSError:
        pass
    try:
        sock.send(plan.head + plan.body)
    except OSError:
        pass
    sock.close()


class FileSource:
    """The unsent rest of a planned file slice, for a loop that sends a step at a time.

    Either mode stops short only if the file shrank since it was planned; the model
    then drops the connection so the client sees a short body, never wrong bytes.
    """

    __slots__ = ("fd", "left", "offset")

    def __init__(self, fs: FileSlice) -> None:
        self.fd = open_slice(fs)
        self.offset = fs.offset
        self.left = fs.length

    def read_chunk(self, size: int = READ_CHUNK) -> bytes:
        """The next chunk as fresh bytes (safe to hand to a transport that keeps it); b"" at EOF."""
        data = os.pread(self.fd, min(size, self.left), self.offset)
        self.offset += len(data)
        self.left -= len(data)
        return data

    def sendfile_to(self, sock_fd: int) -> int:
        """One zero-copy step to a non-blocking socket: what fits in its buffer.

        Raises BlockingIOError if nothing fits; returns 0 if the file ended early.
        """
        sent = os.sendfile(sock_fd, self.fd, self.offset, self.left)
        self.offset += sent
        self.left -= sent
        return sent

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
