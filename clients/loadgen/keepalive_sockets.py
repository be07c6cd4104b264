"""Keep-alive, closed loop, one request at a time: raw non-blocking sockets on one epoll set.

Over asyncio (uvloop or not) every response costs a read into a new bytes object, a call
into the protocol, the reader's fast path and a transport write: several Python calls, and
in the keep-alive mode they are most of the generator's time. Here each virtual client (a
KeepAliveSlot) owns one socket on an epoll set of the worker's own, whose descriptor the
event loop watches, so timers, ticks and the stop message work as in every other mode.
Once woken, it reads batch after batch while responses keep coming, for up to DRAIN_NS:
the loop's own wait and callback would cost about as much as reading a few responses, and
its timers are late by about that much at most. One readiness batch (many events per poll) is
handled in one loop:

- each socket is read with recv_into into one reused buffer;
- the fast path: the read is exactly as long as the last whole response proven good for
  that target, and byte for byte the same (one memcmp). It is that response again, head
  and body, so it is counted without a parser. In a timed run of one target the next
  requests of the batch go out together after its reads (the server, woken by the first,
  finds the rest waiting); otherwise the next request goes out at once;
- anything else (a new Date header, a response in pieces, another status, other framing,
  the server closing) is copied out and handed to the slot's ClientConnection, which
  frames it through the sans-IO response reader, verifies and classifies it exactly as on
  the asyncio path. A whole keep-alive response it accepts, whose body equals the target's
  proven reference, becomes that target's known response.
- with a body of LARGE_BODY or more among the targets, each slot's connection is a
  BufferedClientConnection: once a response's head is framed, the rest of its body is read
  into that connection's own buffer and checked where it landed, as asyncio's buffered
  protocol does (the receive low-water mark included), so a mix of small and large files
  keeps the fast path for its small responses.

The slot's ClientConnection holds the request in flight (inflight, start_ns, sent_ns,
phase) at all times, so timeouts, errors and the general path see the same state as over
asyncio. Latency is timed from the send, or from the connect's start for the first
request on a connection, as drivers.py does, to the poll that reported the response: every
response of a batch was in its socket by then, and one clock reading for the batch leaves
out the time spent reading the responses ahead of it.

Only the closed loop at depth 1, without think time or reconnect-after, takes this path
(`suits`); the worker gives every other keep-alive run (open loop, pipelining, think time)
to drivers.py over asyncio.
"""

from __future__ import annotations

import _socket  # the C socket type: socket.socket's Python-level __init__ and close cost per connection
import select
from time import monotonic_ns

from .connection import LARGE_BODY, READ_TIMEOUT, BufferedClientConnection, ClientConnection
from .options import LoadOptions
from .ports import LoopbackSources
from .raw_sockets import NOT_YET, SocketPool, SocketShim, SocketSlot, connect_error_class, start_connect
from .targets import LoadPlan

RECV_SIZE = 256 * 1024  # larger than any response this path expects whole (bodies below LARGE_BODY)
DRAIN_NS = 200_000  # how long one readiness callback may go on reading batches (the loop's timers wait)
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT


def suits(opts: LoadOptions, plan: LoadPlan) -> bool:
    """Whether a run is one this path carries: keep-alive, closed loop, depth 1."""
    return opts.conn_mode == "keepalive" and not opts.open_loop and not opts.think_s and opts.reconnect_after is None


class KeepAliveClients(SocketPool):
    """`count` keep-alive virtual clients; their slots are the run's drivers."""

    def __init__(self, run, count: int, sources: LoopbackSources | None = None) -> None:
        super().__init__(run, sources)
        self.buffer = bytearray(RECV_SIZE)
        self.view = memoryview(self.buffer)
        # with a large body among the targets, each connection gets a buffer of its own for bodies under way
        large = any((t.expect_length or 0) >= LARGE_BODY for t in run.targets)
        self.conn_class = BufferedClientConnection if large else ClientConnection
        self.slots = [KeepAliveSlot(self, i) for i in range(count)]

    # -- connections ----------------------------------------------------------------------------
    def open(self, slot: KeepAliveSlot) -> None:
        """A new connection for the slot, with its first request (timed from the connect's start)."""
        run = self.run
        if run.stopping or slot.done:
            return
        target = run.take()
        if target is None:
            slot.finish()
            return
        now = monotonic_ns()
        slot.phase = run.phase
        slot.connect_ns = now
        try:
            sock = start_connect(self.family, self.address, self.sources)
        except OSError as exc:
            slot.connect_failed(connect_error_class(exc.errno))
            return
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)  # as asyncio's transports do
        fd = sock.fileno()
        slot.sock, slot.fd, slot.connected = sock, fd, False
        self.by_fd[fd] = slot
        conn = slot.conn = self.conn_class(slot)
        conn.transport = SocketShim(slot)
        conn.inflight.append(target)
        conn.start_ns = conn.sent_ns = now
        conn.phase = slot.phase
        slot.known = self.known.get(id(target))
        slot.unsent = target.request
        self.epoll.register(fd, EPOLLOUT)
        self._send_rest(slot)

    def _send_rest(self, slot: KeepAliveSlot) -> None:
        """Send what is left of the request (the first on a connection waits for the handshake)."""
        sock = slot.sock
        if not slot.connected:
            code = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
            if code:
                self.lost_connect(slot, code)
                return
        try:
            sent = sock.send(slot.unsent)
        except OSError as exc:
            if exc.errno in NOT_YET:
                return  # the handshake (or room in the send buffer) is still to come
            if slot.connected:
                slot.conn.connection_lost(exc)
            else:
                self.lost_connect(slot, exc.errno)
            return
        slot.connected = True
        slot.failures = 0
        rest = slot.unsent[sent:]
        if rest:
            slot.unsent = rest
            return
        slot.unsent = None
        self.epoll.modify(slot.fd, EPOLLIN)

    # -- readiness --------------------------------------------------------------------------------
    def _ready(self) -> None:
        """Readiness batches one after another while responses keep coming, for up to DRAIN_NS: the event
        loop is woken for the first only (its own wait and callback cost about as much as reading a few
        responses), and its timers wait at most that long."""
        run = self.run
        by_fd, buffer, poll = self.by_fd, self.buffer, self.epoll.poll
        by_send = run.by_send
        # phases, and a timed run's single target, change only in timer callbacks: not while in here
        single = run.single if run.budget is None else None
        # a timed run counts its fast-path responses in the phase of the batch, and adds their bytes once
        # after the batch; a request-count run, whose budget may end the window within a batch, counts each
        # in the phase its request was sent in, at once
        phase = run.phase
        lat_append = phase.lat.append
        drain_until = monotonic_ns() + DRAIN_NS
        while True:
            events = poll(0, 512)
            now = monotonic_ns()  # the arrival of every response of the batch (see the module's docstring)
            received = bodies = 0
            answered = []  # fast-path slots of a timed single-target run: their next requests go after the batch
            for fd, _events in events:
                try:
                    slot = by_fd[fd]
                except KeyError:
                    continue  # closed by an earlier event of this batch
                if run.stopping:
                    break
                if slot.unsent is not None:
                    self._send_rest(slot)
                    continue
                same = slot.known
                if same is None and slot.conn.__class__ is BufferedClientConnection and slot.conn.reader.in_body:
                    self._body_read(slot)
                    continue
                try:
                    n = slot.sock.recv_into(buffer)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    slot.conn.connection_lost(exc)
                    continue
                if same is None or n != same[1] or not buffer.startswith(same[0]):
                    self._general(slot, n)
                    continue
                # the fast path: the known response again, byte for byte
                conn = slot.conn
                if by_send:
                    run.bytes_in += n
                    conn.phase.lat.append((now - conn.start_ns) // 1000)
                    conn.phase.body_bytes += same[2]
                else:
                    received += n
                    lat_append((now - conn.start_ns) // 1000)
                    bodies += same[2]
                if single is None:
                    slot.send_next(conn, monotonic_ns())
                else:
                    answered.append(slot)
            run.bytes_in += received
            phase.body_bytes += bodies
            if run.stopping:
                return
            if answered:
                self._send_together(answered, single.request, phase)
            if not events or now >= drain_until:
                return  # nothing more yet, or the loop's turn (it calls again while a socket is ready)

    @staticmethod
    def _send_together(slots: list[KeepAliveSlot], request: bytes, phase) -> None:
        """The next request on each of these connections, back to back: the server, woken by the first,
        finds the rest waiting instead of being woken for each one."""
        size = len(request)
        for slot in slots:
            conn = slot.conn
            conn.start_ns = conn.sent_ns = monotonic_ns()
            conn.phase = phase
            try:
                sent = slot.sock.send(request)
            except OSError as exc:  # EAGAIN cannot happen with the previous response read; a reset can
                conn.connection_lost(exc)
                continue
            if sent != size:
                slot.send_later(request[sent:])

    def _general(self, slot: KeepAliveSlot, n: int) -> None:
        """Whatever the fast path does not recognise: the ClientConnection frames and judges it."""
        conn = slot.conn
        if not n:
            conn.connection_lost(None)  # the server closed the connection
            return
        data = bytes(self.view[:n])
        target = conn.inflight[0] if conn.inflight else None
        conn.data_received(data)  # counts, verifies, and through on_response sends the next request
        if target is not None:
            self.learn(target, data, conn.reader)
        if conn.__class__ is BufferedClientConnection:
            conn.follow_low_water()  # a large body under way: its next read a whole buffer
        self._known_next(slot)

    def _body_read(self, slot: KeepAliveSlot) -> None:
        """The rest of a large body, read into its connection's own buffer and checked where it landed
        (as a BufferedProtocol's reads are over asyncio)."""
        conn = slot.conn
        try:
            n = slot.sock.recv_into(conn.get_buffer(-1))
        except BlockingIOError:
            return
        except OSError as exc:
            conn.connection_lost(exc)
            return
        if not n:
            conn.connection_lost(None)  # the server closed the connection
            return
        conn.buffer_updated(n)  # counts, verifies, and at the body's end sends the next request
        self._known_next(slot)

    def _known_next(self, slot: KeepAliveSlot) -> None:
        """The fast path again only between responses, with nothing buffered (slot.conn may be a new one)."""
        conn = slot.conn
        slot.known = (
            self.known.get(id(conn.inflight[0])) if conn is not None and conn.inflight and conn.reader.idle else None
        )


class KeepAliveSlot(SocketSlot):
    """One virtual client: the driver of its keep-alive connection (and of the ClientConnection on it)."""

    __slots__ = ("connect_ns", "known")
    close_each = False

    def __init__(self, pool: KeepAliveClients, index: int) -> None:
        super().__init__(pool, index)
        self.connect_ns = 0
        self.known: tuple[bytes, int, int] | None = None  # the known response of the target in flight

    def send_next(self, conn: ClientConnection, now: int) -> bool:
        """The next request on this connection, at once, in the place of the one just answered (still
        conn.inflight[0]); False when there is none (budget spent, stopping)."""
        run = self.run
        target = run.single if run.budget is None else None
        if target is None:
            target = run.take()
            if target is None:
                conn.inflight.clear()
                self.finish()
                return False
        if run.stopping:
            conn.inflight.clear()
            return False
        if target is not conn.inflight[0]:
            conn.inflight[0] = target
            self.known = self.pool.known.get(id(target))
        conn.start_ns = conn.sent_ns = now
        conn.phase = run.phase
        request = target.request
        try:
            sent = self.sock.send(request)
        except OSError as exc:  # EAGAIN cannot happen with the previous response read; a reset can
            conn.connection_lost(exc)
            return False
        if sent != len(request):
            self.send_later(request[sent:])
        return True

    def send_later(self, rest: bytes) -> None:
        """The rest of a request that did not fit the send buffer: sent when the socket is writable."""
        self.unsent = rest
        self.pool.epoll.modify(self.fd, EPOLLOUT)

    # -- ClientConnection's driver callbacks ---------------------------------------------------
    def on_response(self, conn: ClientConnection, now: int) -> bool:
        if conn.server_closes:
            self.pool.release(self)
            self.pool.open(self)
            return False
        conn.inflight.append(None)  # the place send_next gives the next target
        return self.send_next(conn, now)

    def on_lost(self, conn: ClientConnection) -> None:
        if conn is self.conn:  # else its failure already released the socket (and ended it)
            self.pool.release(self)
        if self.handle is None and not self.run.stopping:
            self.pool.open(self)

    # -- the driver interface -------------------------------------------------------------------
    def check_timeouts(self, now: int, read_timeout_ns: int, connect_timeout_ns: int) -> None:
        if self.sock is None or self.connect_given_up(self.connect_ns, now, connect_timeout_ns):
            return
        if self.connected and self.conn.inflight and now - self.conn.sent_ns > read_timeout_ns:
            self.conn.fail(READ_TIMEOUT)

    def owed_since(self) -> list[int]:
        conn = self.conn
        return [conn.start_ns] if conn is not None and conn.inflight and not conn.ended else []
