"""What both raw-socket paths (fresh_connections.py, keepalive_sockets.py) share: starting a
non-blocking connect, naming a failed connect's error class, the transport shim a
ClientConnection sees, and the virtual client's connect-failure backoff and finishing.

A virtual client (a SocketSlot) drives its connection itself and hands a response to a
ClientConnection only when it is not the one expected; the shim lets that connection close
or abort the slot's socket as it would a transport.
"""

from __future__ import annotations

import _socket  # the C socket type: socket.socket's Python-level __init__ and close cost per connection
import errno
import select
import socket
import struct

from .connection import CONNECT_ERROR, CONNECT_REFUSED, CONNECT_TIMEOUT, NO_LOCAL_PORT
from .ports import LoopbackSources
from .response_reader import ResponseReader
from .targets import Target

LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets instead of lingering in TIME_WAIT
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN)
NOT_YET = (errno.EAGAIN, errno.ENOTCONN)  # a send before the handshake has completed


def connect_error_class(code: int) -> str:
    if code == errno.ECONNREFUSED:
        return CONNECT_REFUSED
    if code == errno.EADDRNOTAVAIL:
        return NO_LOCAL_PORT
    if code == errno.ETIMEDOUT:
        return CONNECT_TIMEOUT
    return CONNECT_ERROR


def start_connect(
    family: int, address: tuple, sources: LoopbackSources | None, ack_with_request: bool = False
) -> _socket.socket:
    """A non-blocking socket with its connect under way (or done: on loopback the handshake often
    completes within the call). Raises OSError with the errno of a failed socket, bind or connect.

    ack_with_request: the handshake's last ACK is not sent alone but with the first data sent (TCP_DEFER_ACCEPT
    on a connecting socket makes Linux hold it back, up to its delayed-ACK time). The request is sent right
    after, so the server's kernel gets the connection and its request in one segment: one packet fewer to
    build and to process, on loopback both on the client's CPU."""
    sock = _socket.socket(family, _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK)
    try:
        if ack_with_request:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_DEFER_ACCEPT, 1)
        if sources is not None:
            sock.setsockopt(_socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((sources.next(), 0))
        code = sock.connect_ex(address)
        if code and code not in _IN_PROGRESS:
            raise OSError(code, errno.errorcode.get(code, "connect failed"))
    except OSError:
        sock.close()
        raise
    return sock


class SocketPool:
    """The sockets of one raw-socket path: an epoll set of their own, whose descriptor the event loop
    watches (readiness batches go to _ready), and the slots by file descriptor."""

    def __init__(self, run, sources: LoopbackSources | None) -> None:
        self.run = run
        self.loop = run.loop
        self.family = run.family
        self.address = (run.address, run.port)
        self.sources = sources
        self.epoll = select.epoll()
        self.by_fd: dict[int, SocketSlot] = {}
        # id(target) -> (the last whole response proven good, its length, its body's length)
        self.known: dict[int, tuple[bytes, int, int]] = {}
        self.loop.add_reader(self.epoll.fileno(), self._ready)
        run.finished.add_done_callback(self._close)

    def _close(self, _future=None) -> None:
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()

    def _ready(self) -> None:
        raise NotImplementedError

    def open(self, slot: SocketSlot) -> None:
        raise NotImplementedError

    def learn(self, target: Target, data: bytes, reader: ResponseReader) -> None:
        """Keep data as the target's known response if it is one whole response (the reader's fast path
        accepted this head) and its body is proven good: equal to the target's proven reference, or no
        check is asked for (no expected digest, or verification off). A later read byte for byte the
        same is that response again, counted without a parser."""
        head = reader.known_head
        if head is None or len(data) != reader.known_stop or not data.startswith(head):
            return
        length = reader.known_length
        expected = target.expect_length
        if expected is not None and length != expected:
            return
        ref = target.reference
        proven = (
            target.expect_sha256 is None
            or not self.run.verify_every
            or (ref is not None and len(ref) == length and data.startswith(ref, len(head)))
        )
        if proven:
            self.known[id(target)] = (data, len(data), length)

    def release(self, slot: SocketSlot) -> None:
        """Close the slot's socket (closing also takes it off the epoll set)."""
        sock = slot.sock
        if sock is not None:
            del self.by_fd[slot.fd]
            if slot.conn is not None:
                slot.conn.ended = True  # nothing more is reported for this connection
            slot.sock = slot.conn = slot.unsent = None
            sock.close()

    def lost_connect(self, slot: SocketSlot, code: int) -> None:
        """The connect failed (errno code) after the socket was opened."""
        self.release(slot)
        slot.connect_failed(connect_error_class(code))


class SocketShim:
    """What a ClientConnection needs of a transport, over a slot's raw socket."""

    __slots__ = ("slot", "sock")

    def __init__(self, slot: SocketSlot) -> None:
        self.slot = slot
        self.sock = slot.sock

    def get_extra_info(self, name: str, default=None):
        """The socket, as a transport gives it (a buffered connection sets its receive low-water mark)."""
        return self.sock if name == "socket" else default

    def write(self, data: bytes) -> None:  # the slot sends requests on its socket itself
        raise RuntimeError("requests go out through the slot, not the connection")

    def close(self) -> None:
        if self.slot.sock is self.sock:  # not a later connection of the same slot
            self.slot.pool.release(self.slot)

    abort = close


class SocketSlot:
    """One virtual client of a raw-socket path: the driver of its socket (and of the ClientConnection
    on it). Subclasses open connections through their pool (pool.open, pool.release)."""

    __slots__ = (
        "conn",
        "connected",
        "done",
        "failures",
        "fd",
        "handle",
        "index",
        "phase",
        "pool",
        "run",
        "sock",
        "unsent",
    )

    def __init__(self, pool, index: int) -> None:
        self.pool = pool
        self.run = pool.run
        self.index = index
        self.sock = self.conn = self.unsent = self.phase = self.handle = None
        self.fd = -1
        self.connected = False
        self.failures = 0  # consecutive failed connects, for backoff
        self.done = False

    def start(self) -> None:
        self.pool.open(self)

    def connect_failed(self, error: str) -> None:
        """Count the failed connect's request as an error; connect again (after a backoff from the second
        failure in a row)."""
        self.connected = False
        run = self.run
        (self.phase if run.by_send else run.phase).error(error)
        self.failures += 1
        delay = 0.0 if self.failures <= 1 else min(0.001 * 2 ** (self.failures - 2), 0.1)
        if delay:
            self.handle = run.loop.call_later(delay, self._again)
        else:
            self.pool.open(self)

    def connect_given_up(self, begun_ns: int, now: int, connect_timeout_ns: int) -> bool:
        """Whether a connect still in progress, begun at begun_ns, has outlived the connect timeout;
        then it is given up here: the socket released and the request counted (connect_failed)."""
        if self.connected or now - begun_ns <= connect_timeout_ns:
            return False
        self.pool.release(self)
        self.connect_failed(CONNECT_TIMEOUT)
        return True

    def _again(self) -> None:
        self.handle = None
        self.pool.open(self)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.pool.release(self)  # also ends its ClientConnection: nothing more is reported

    def budget_spent(self) -> None:
        """Only the open loop finishes idle drivers early; this is a closed loop."""

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.run.driver_finished()
