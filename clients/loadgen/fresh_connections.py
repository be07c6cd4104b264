"""A new connection per request, closed loop: raw non-blocking sockets on one epoll set.

A transport per connection (asyncio's or uvloop's) costs more Python objects and system
calls than the connection's own work, and with a new connection per request that is most
of the generator's time. Here each virtual client (a Slot) opens a socket, connects, sends
its request at once (on loopback the handshake has finished by the time connect returns;
when it has not, the send waits for the socket to become writable), and reads the answer;
the sockets live on one epoll set of their own, whose descriptor the event loop watches, so
timers, ticks and the stop message work as in every other mode.

The connections answered in one readiness batch are judged first and their next ones opened
together after it: back to back, the connects cost the server one wake-up instead of one
each. The first read only peeks (MSG_PEEK) into one reused buffer. When it is byte for byte
the target's known response (the last one proven good; see SocketPool.learn) it is counted
without a parser; else, when it holds the whole expected response, it is judged in place
(one ResponseReader.whole_response call, the body compared with the reference). Either way
the socket is then closed with the response still unread, which makes the kernel reset the
connection: no TIME_WAIT on either side (the server closes first, so an orderly close would
leave its side there), no SO_LINGER call per connection, and no window-update ACK from a
consuming read. Anything else (a response in pieces, another status, other framing, an
error) is taken off the socket and handed to a ClientConnection over a small socket shim,
which frames, verifies and classifies it exactly as on the other paths; the slot sets
SO_LINGER 0 then, so that connection ends in a reset too.

Source addresses: with `sources`, each connect binds the next loopback address with
IP_BIND_ADDRESS_NO_PORT, so the kernel picks the port at connect time from the whole
four-tuple and every source address has its own range of local ports. A connect that finds
no local port left (EADDRNOTAVAIL) is counted as no_local_port.
"""

from __future__ import annotations

import _socket  # the C socket type: socket.socket's Python-level __init__ and close cost per connection
import select
from collections.abc import Iterable
from time import monotonic_ns

from .connection import READ_TIMEOUT, ClientConnection, whole_body_error
from .ports import LoopbackSources
from .raw_sockets import LINGER_RESET, NOT_YET, SocketPool, SocketShim, SocketSlot, connect_error_class, start_connect
from .response_reader import ResponseReader

RECV_SIZE = 256 * 1024  # a response that fits arrives whole in one read on loopback (and is judged in place)
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
MSG_PEEK = _socket.MSG_PEEK


class FreshConnectionClients(SocketPool):
    """`count` virtual clients, each a new connection per request; their Slots are the run's drivers."""

    def __init__(self, run, count: int, sources: LoopbackSources | None = None) -> None:
        super().__init__(run, sources)
        self.reader = ResponseReader(run.expect_status, close_ok=True)  # only its whole_response is used
        self.buffer = bytearray(RECV_SIZE)
        self.view = memoryview(self.buffer)
        self.slots = [Slot(self, i) for i in range(count)]

    # -- one request on a new connection ------------------------------------------------------
    def open(self, slot: Slot) -> None:
        self.open_each((slot,))

    def open_each(self, slots: Iterable[Slot]) -> None:
        """A new connection for each slot, its request sent at once: back to back, with the names they
        share looked up once."""
        run = self.run
        by_fd, register = self.by_fd, self.epoll.register
        family, address, sources = self.family, self.address, self.sources
        fixed = run.single if run.budget is None else None  # a timed run of one target sends only it
        phase = run.phase
        for slot in slots:
            if run.stopping:
                return
            if slot.done:
                continue
            target = fixed
            if target is None:
                target = run.take()
                if target is None:
                    slot.finish()
                    continue
            slot.target = target
            slot.phase = phase
            slot.start_ns = slot.sent_ns = monotonic_ns()
            try:
                sock = start_connect(family, address, sources, True)
            except OSError as exc:
                slot.connect_failed(connect_error_class(exc.errno))
                continue
            fd = sock.fileno()
            slot.sock = sock
            slot.fd = fd
            by_fd[fd] = slot
            request = target.request_close
            try:
                sent = sock.send(request)
            except OSError as exc:
                if exc.errno not in NOT_YET:
                    self.lost_connect(slot, exc.errno)
                    continue
                sent = 0
            if sent == len(request):
                slot.connected = True
                register(fd, EPOLLIN)
            else:  # wait for the handshake (or for room) to send the rest
                slot.unsent = request[sent:]
                register(fd, EPOLLOUT)

    # -- readiness --------------------------------------------------------------------------------
    def _ready(self) -> None:
        run = self.run
        by_fd, buffer, known = self.by_fd, self.buffer, self.known
        by_send = run.by_send
        answered = []  # slots whose response was judged in this batch: their next connections open after it
        for fd, _events in self.epoll.poll(0, 512):
            slot = by_fd.get(fd)
            if slot is None:
                continue  # closed by an earlier event of this batch
            if slot.unsent is not None:
                self._writable(slot)
                continue
            sock = slot.sock
            conn = slot.conn
            try:
                # the first read only peeks: a response left unread makes close() reset the connection
                n = sock.recv_into(buffer, 0, MSG_PEEK) if conn is None else sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._read_error(slot, exc)
                continue
            if conn is None:
                same = known.get(id(slot.target))
                if same is not None and n == same[1] and buffer.startswith(same[0]):
                    # the fast path: the target's known response again, byte for byte
                    now = monotonic_ns()
                    run.bytes_in += n
                    phase = slot.phase if by_send else run.phase
                    phase.lat.append((now - slot.start_ns) // 1000)
                    phase.body_bytes += same[2]
                    del by_fd[fd]
                    slot.sock = None
                    sock.close()
                    answered.append(slot)
                elif self._first_read(slot, n):
                    answered.append(slot)
            elif n:
                conn.data_received(bytes(self.view[:n]))
            else:
                conn.connection_lost(None)
        self.open_each(answered)

    def _first_read(self, slot: Slot, n: int) -> bool:
        """The first n bytes of a response that is not the target's known one, peeked into the buffer:
        judged in place when they are the whole response (True: the socket is released, the caller
        opens the next connection), else read for real and handed to the general path (False)."""
        run = self.run
        run.bytes_in += n
        data = bytes(self.view[:n])
        reader = self.reader
        stop = reader.whole_response(data)
        if stop < 0 or stop != n:
            # in pieces, or not the response expected (or more than it): the general path
            conn = slot.adopt()
            if n:
                slot.sock.recv_into(self.buffer, n)  # take the peeked bytes off the socket
                conn._receive(data)
            else:
                conn.connection_lost(None)
            return False
        now = monotonic_ns()
        length = reader.known_length
        target = slot.target
        error = whole_body_error(run, target, data, stop, length)
        phase = slot.phase if run.by_send else run.phase
        if error is None:
            phase.lat.append((now - slot.start_ns) // 1000)
            phase.body_bytes += length
            self.learn(target, data, reader)
        else:
            phase.error(error)
        self.release(slot)
        return True

    def _writable(self, slot: Slot) -> None:
        sock = slot.sock
        code = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if code:
            self.lost_connect(slot, code)
            return
        slot.connected = True
        try:
            sent = sock.send(slot.unsent)
        except OSError as exc:
            if exc.errno not in NOT_YET:
                self.lost_connect(slot, exc.errno)
            return
        rest = slot.unsent[sent:]
        if not rest:
            slot.unsent = None
            self.epoll.modify(slot.fd, EPOLLIN)
        else:
            slot.unsent = rest

    def _read_error(self, slot: Slot, exc: OSError) -> None:
        conn = slot.conn
        if conn is None:
            conn = slot.adopt()
        conn.connection_lost(exc)


class Slot(SocketSlot):
    """One virtual client: the driver of a new connection per request (and of the ClientConnection
    that takes over when a response does not arrive whole)."""

    __slots__ = ("sent_ns", "start_ns", "target")
    close_each = True

    def __init__(self, pool: FreshConnectionClients, index: int) -> None:
        super().__init__(pool, index)
        self.target = None
        self.start_ns = self.sent_ns = 0

    def adopt(self) -> ClientConnection:
        """Hand the connection to a ClientConnection (the general path) from here on."""
        # its reads consume the response, so close() would no longer reset the connection: SO_LINGER 0 does
        self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, LINGER_RESET)
        conn = ClientConnection(self)
        conn.transport = SocketShim(self)
        conn.inflight.append(self.target)
        conn.start_ns, conn.sent_ns, conn.phase = self.start_ns, self.sent_ns, self.phase
        self.conn = conn
        return conn

    # -- ClientConnection's driver callbacks ---------------------------------------------------
    def on_response(self, conn, now: int) -> bool:
        self.failures = 0
        self.pool.release(self)
        self.pool.open(self)
        return False

    def on_lost(self, conn) -> None:
        self.pool.release(self)
        self.pool.open(self)

    # -- the driver interface -------------------------------------------------------------------
    def stop(self) -> None:
        if self.sock is not None:  # a connection the run's end cuts short is reset too: no TIME_WAIT left
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, LINGER_RESET)
        super().stop()

    def check_timeouts(self, now: int, read_timeout_ns: int, connect_timeout_ns: int) -> None:
        if self.sock is None or self.connect_given_up(self.start_ns, now, connect_timeout_ns):
            return
        if self.connected and now - self.sent_ns > read_timeout_ns:
            conn = self.conn or self.adopt()
            conn.fail(READ_TIMEOUT)

    def owed_since(self) -> list[int]:
        return [self.start_ns] if self.sock is not None else []
