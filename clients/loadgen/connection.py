"""One client TCP connection over asyncio: send requests, hand what arrives to the response
reader, verify the bodies, classify failures.

Framing is response_reader's (sans-IO), checking bodies is verification's; this is the shell
that joins them to a transport and to the driver. The keep-alive fast path is one call of
ResponseReader.whole_response per read: a read holding exactly one expected response is
counted and its body compared in place, with no event objects. Everything else (a partial
head or body, another status, other framing, a closing server, pipelined leftovers) goes
through the reader's events.

Verification: the status must be the expected one, Content-Length the expected size, and
the body must be the expected bytes (verification.py).

What to send next is not decided here: a driver (drivers.py) owns the connection and is
told when a response completes or the connection is lost.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from time import monotonic_ns

from .response_reader import BAD_RESPONSE, CLOSED, END, NEED_DATA, SHORT_BODY, FramingError, Head, ResponseReader
from .verification import CORRUPT_BODY

# error classes (the keys of the "errors" object of a result)
CONNECT_REFUSED = "connect_refused"
CONNECT_TIMEOUT = "connect_timeout"
CONNECT_ERROR = "connect_error"
NO_LOCAL_PORT = "no_local_port"  # connect found no free local port (EADDRNOTAVAIL): the port range ran out
RESET = "reset"
READ_TIMEOUT = "read_timeout"
BAD_STATUS = "bad_status"
BAD_LENGTH = "bad_length"  # Content-Length differs from the expected size
ERROR_CLASSES = (
    CONNECT_REFUSED,
    CONNECT_TIMEOUT,
    CONNECT_ERROR,
    NO_LOCAL_PORT,
    RESET,
    CLOSED,
    READ_TIMEOUT,
    BAD_STATUS,
    BAD_LENGTH,
    SHORT_BODY,
    CORRUPT_BODY,
    BAD_RESPONSE,
)
LARGE_BODY = 64 * 1024  # from this expected size up, bodies are received into a reused buffer
RECEIVE_CHUNK = 256 * 1024  # the reused receive buffer: one read takes up to this much
SO_RCVLOWAT = getattr(socket, "SO_RCVLOWAT", 18)


def whole_body_error(run, target, data: bytes, stop: int, length: int) -> str | None:
    """The verdict on a response that arrived whole, its body the `length` bytes before `stop` in data."""
    expected = target.expect_length
    if expected is not None and length != expected:
        return BAD_LENGTH
    if target.expect_sha256 is None or (run.verify_every != 1 and not run.verifier.take()):
        return None
    ref = target.reference
    start = stop - length
    if ref is not None and len(ref) == length and data.startswith(ref, start):
        return None  # the same bytes as a body already proven good (compared in place)
    return run.references.verify(target, data[start:stop])


def receive_low_water(body_left: int, current: int, chunk: int = RECEIVE_CHUNK) -> int:
    """The socket's receive low-water mark (SO_RCVLOWAT) for the next read of a response's body.

    While at least a whole chunk of a Content-Length body is still owed, the socket is not reported
    readable before a chunk has arrived: one wake-up and one read per chunk, instead of one per few
    segments (each wake-up of an idle generator also costs the sending server's CPU an interrupt to
    this one). The body's last bytes lower it to exactly what is left, so the response's end is never
    held back, and between bodies it is 1 again (any byte: a head, an error, the server closing; a
    close or reset makes the socket readable whatever the mark)."""
    if body_left >= chunk:
        return chunk
    if body_left and current > 1:
        return body_left
    return 1


class _Connection:
    """Requests go out with send(); each completed response calls driver.on_response. The two
    protocol kinds below share this; it is no asyncio.Protocol itself, since uvloop reads into
    a protocol's own buffer only if it is not one."""

    __slots__ = (
        "body_error",
        "check",
        "driver",
        "ended",
        "head_error",
        "inflight",
        "length",
        "phase",
        "reader",
        "run",
        "sent_ns",
        "server_closes",
        "start_ns",
        "transport",
    )

    def __init__(self, driver) -> None:
        self.driver = driver
        self.run = driver.run
        self.transport = None
        self.reader = ResponseReader(self.run.expect_status)
        self.inflight: deque = deque()  # targets of requests sent and not yet answered
        self.start_ns = 0  # latency is measured from here (scheduled time in the open loop)
        self.sent_ns = 0  # when the request really went out
        self.phase = None  # the phase the request was sent in (used by request-count runs)
        self.check = None  # the body in progress: True (not begun), a BodyCheck, or None (not checked)
        self.body_error: str | None = None  # the verdict on a body that arrived in one piece
        self.head_error: str | None = None
        self.server_closes = False
        self.length = 0  # body bytes of the response in progress
        self.ended = False  # we closed it, or it was lost: ignore whatever comes after

    # -- asyncio callbacks -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        run = self.run
        run.bytes_in += len(data)
        if self.ended or not self.inflight:
            return self._receive(data)
        reader = self.reader
        stop = reader.whole_response(data)
        if stop < 0:
            return self._receive(data)
        now = monotonic_ns()
        length = reader.known_length
        target = self.inflight.popleft()
        ref = target.reference
        if ref is not None and run.verify_every == 1 and len(ref) == length and data.startswith(ref, stop - length):
            error = None  # the usual case, without a call: the bytes of a body proven good, compared in place
        else:
            error = whole_body_error(run, target, data, stop, length)
        self._record(now, length, error)
        self.server_closes = False
        if self.driver.on_response(self, now) and stop < len(data):
            self._receive(data[stop:])

    def _receive(self, data) -> None:
        """Frame whatever arrived through the reader's events."""
        if self.ended:
            return
        self.reader.feed(data)
        self._events()

    def _events(self) -> None:
        reader = self.reader
        try:
            while not self.ended:
                if not self.inflight:
                    if not reader.idle:
                        self.fail(BAD_RESPONSE, 1)  # bytes nobody asked for
                    return
                event = reader.next_event()
                if event is NEED_DATA:
                    return
                if event is END:
                    if not self._complete():
                        return
                elif type(event) is Head:
                    self._head(event)
                else:
                    self._piece(event)
        except FramingError as exc:
            self.fail(exc.kind)

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost classifies what was cut short

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ended:
            return
        if self.inflight:
            if exc is not None:
                self.fail(RESET)
                return
            self.reader.feed_eof()
            self._events()  # a close-delimited body ends here; anything else cut short is an error
            if self.ended:
                return
        self.ended = True
        self.driver.on_lost(self)

    # -- sending -----------------------------------------------------------------------
    def send(self, target, start_ns: int, now_ns: int, phase) -> None:
        """Send one request; latency from start_ns. phase: the phase it was taken in (counted there)."""
        self.inflight.append(target)
        self.start_ns = start_ns
        self.sent_ns = now_ns
        self.phase = phase
        self.transport.write(target.request_close if self.driver.close_each else target.request)

    def send_batch(self, targets: list, now_ns: int, phase) -> None:
        """Pipelining: several requests in one write; latency of each from this moment."""
        self.inflight.extend(targets)
        self.start_ns = self.sent_ns = now_ns
        self.phase = phase
        self.transport.write(b"".join(t.request for t in targets))

    def close(self) -> None:
        """Close from our side; nothing more is reported for this connection."""
        self.ended = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.abort()

    # -- responses -----------------------------------------------------------------------
    def _head(self, head: Head) -> None:
        """A final response head: judge its status and length, set up checking its body."""
        run = self.run
        self.server_closes = head.closes
        self.length = 0
        self.body_error = None
        self.check = None
        target = self.inflight[0]
        if head.status != run.expect_status:
            self.head_error = BAD_STATUS
            return
        expected = target.expect_length
        if expected is not None and head.length is not None and head.length != expected:
            self.head_error = BAD_LENGTH
            return
        self.head_error = None
        if target.expect_sha256 is not None and (run.verify_every == 1 or run.verifier.take()):
            self.check = True

    def _piece(self, piece) -> None:
        """A piece of a body: checked whole if it is the whole body, else through a BodyCheck."""
        self.length += len(piece)
        check = self.check
        if check is None:
            return
        if check is True:
            target = self.inflight[0]
            if len(piece) == target.expect_length:
                self.body_error = self.run.references.verify(target, piece)
                self.check = None
                return
            check = self.check = self.run.references.start(target, not self.reader.until_close)
        check.update(piece)

    def _complete(self) -> bool:
        """A response is complete. Returns False when the connection must not be read further."""
        now = monotonic_ns()
        target = self.inflight.popleft()
        error = self.head_error
        length = self.length
        if error is None:
            expected = target.expect_length
            check = self.check
            if expected is not None and length != expected:
                error = BAD_LENGTH  # chunked or close-delimited, the wrong size
            elif check is True:
                error = self.run.references.verify(target, b"")
            elif check is not None:
                error = check.result(target)
            else:
                error = self.body_error
        self.check = None
        self._record(now, length, error)
        return self.driver.on_response(self, now)

    def _record(self, now: int, length: int, error: str | None) -> None:
        """Count one finished response: its latency (both views in open loop) and bytes, or its error."""
        run = self.run
        phase = self.phase if run.by_send else run.phase
        if error is None:
            phase.lat.append((now - self.start_ns) // 1000)
            if run.open_loop:
                phase.lat_uncorrected.append((now - self.sent_ns) // 1000)
            phase.body_bytes += length
        else:
            phase.error(error)

    def fail(self, error: str, count: int | None = None) -> None:
        """Count the requests in flight as failed, drop the connection, tell the driver."""
        if self.ended:
            return
        n = len(self.inflight) if count is None else count
        if n:
            phase = (self.phase if self.run.by_send else None) or self.run.phase
            phase.error(error, n)
        self.inflight.clear()
        self.abort()
        self.driver.on_lost(self)


class ClientConnection(_Connection, asyncio.Protocol):
    """Each read arrives as bytes (uvloop's fastest path for small responses)."""

    __slots__ = ()


class BufferedClientConnection(_Connection, asyncio.BufferedProtocol):
    """Receives into one reused buffer. Body bytes are checked where they landed (memoryviews,
    no copy); only heads are copied out. Used for large bodies, and on the stdlib loop, whose
    plain Protocol path allocates a large buffer per read. In a body of a chunk or more the
    socket's low-water mark makes each read a whole chunk (receive_low_water)."""

    __slots__ = ("_buffer", "_low_water", "_view")

    def __init__(self, driver) -> None:
        super().__init__(driver)
        self._buffer = bytearray(RECEIVE_CHUNK)
        self._view = memoryview(self._buffer)
        self._low_water = 1  # the socket's SO_RCVLOWAT (receive_low_water)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        reader = self.reader
        if reader.in_body and self.inflight and not self.ended:
            self.run.bytes_in += nbytes
            if reader.take_body(nbytes):  # the middle of a body: checked here, without the reader's events
                self._piece(self._view[:nbytes])
            else:
                self._receive(self._view[:nbytes])
        else:
            self.data_received(bytes(self._view[:nbytes]))
        self.follow_low_water()

    def follow_low_water(self) -> None:
        """Set the socket's receive low-water mark to what the body under way still owes (receive_low_water)."""
        want = receive_low_water(self.reader.body_left, self._low_water)
        if want != self._low_water and not self.ended:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                self._low_water = want
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVLOWAT, want)
