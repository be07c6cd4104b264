"""One client TCP connection: send requests, frame responses, verify them, classify failures.

Framing is done here rather than by a general parser because a load generator needs only
the status, the length and the body, and a callback per header costs more than the whole
fast path: find the blank line, read the status, find Content-Length in the lower-cased
head, take the body. Chunked and close-delimited bodies are handled on a slower path.

Verification: the status must be the expected one, Content-Length the expected size, and
the body must hash to the expected sha256. A body that passed once is kept as the
target's reference, so later bodies are compared with it byte for byte, in place (a
memcmp, several times faster than hashing): every byte is still checked. With a local
corpus the references are its files, checked against the manifest before the run starts.
References beyond a per-worker memory budget are not kept; those bodies stream through sha256.

What to send next is not decided here: a driver (drivers.py) owns the connection and is
told when a response completes or the connection is lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import deque
from time import monotonic_ns

HEAD = -1  # reading a response head
CHUNKED = -2  # reading a chunked body
UNTIL_CLOSE = -3  # body delimited by the server closing the connection
MAX_HEAD = 64 * 1024
REFERENCE_ALWAYS = 1 << 20  # references up to this size are always kept
REFERENCE_BUDGET = 256 << 20  # larger ones while a worker holds less than this in references

# error classes (the keys of the "errors" object of a result)
CONNECT_REFUSED = "connect_refused"
CONNECT_TIMEOUT = "connect_timeout"
CONNECT_ERROR = "connect_error"
RESET = "reset"
CLOSED = "closed"  # the server closed the connection before a response began
READ_TIMEOUT = "read_timeout"
BAD_STATUS = "bad_status"
BAD_LENGTH = "bad_length"  # Content-Length differs from the expected size
SHORT_BODY = "short_body"
CORRUPT_BODY = "corrupt_body"
BAD_RESPONSE = "bad_response"  # not parseable as HTTP/1.x
ERROR_CLASSES = (CONNECT_REFUSED, CONNECT_TIMEOUT, CONNECT_ERROR, RESET, CLOSED, READ_TIMEOUT, BAD_STATUS,
                 BAD_LENGTH, SHORT_BODY, CORRUPT_BODY, BAD_RESPONSE)


def says_close(head: bytes) -> bool:
    """Whether a lower-cased response head has a Connection header listing "close"."""
    at = head.find(b"\r\nconnection:")
    while at >= 0:
        end = head.find(b"\r\n", at + 13)
        if b"close" in (token.strip() for token in head[at + 13:end].split(b",")):
            return True
        at = head.find(b"\r\nconnection:", end)
    return False


class Verifier:
    """Sampling: check the body of one response in `every` (0: never; 1: all, the default)."""

    __slots__ = ("every", "countdown")

    def __init__(self, every: int) -> None:
        self.every = every
        self.countdown = 1  # the first body is always checked

    def take(self) -> bool:
        """Whether to check the next body."""
        if not self.every:
            return False
        self.countdown -= 1
        if self.countdown:
            return False
        self.countdown = self.every
        return True


class ClientConnection(asyncio.Protocol):
    """Requests go out with send(); each completed response calls driver.on_response."""

    __slots__ = ("driver", "run", "transport", "buf", "need", "inflight", "start_ns", "sent_ns", "phase",
                 "parts", "check", "head_error", "server_closes", "length", "ended", "chunk_state", "known_head",
                 "known_length")

    def __init__(self, driver) -> None:
        self.driver = driver
        self.run = driver.run
        self.transport = None
        self.buf = b""
        self.need = HEAD
        self.inflight: deque = deque()  # targets of requests sent and not yet answered
        self.start_ns = 0  # latency is measured from here (scheduled time in the open loop)
        self.sent_ns = 0  # when the request really went out
        self.phase = None  # the phase the request was sent in (used by request-count runs)
        self.parts = None  # body in progress: list of pieces, a sha256 object, or False (not checked)
        self.check = False
        self.head_error: str | None = None
        self.server_closes = False
        self.length = 0
        self.ended = False  # we closed it, or it was lost: ignore whatever comes after
        self.chunk_state = None
        self.known_head: bytes | None = None  # the last head the fast path accepted, and its length
        self.known_length = 0

    # -- asyncio callbacks -----------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """The fast path: data begins with one whole HTTP/1.1 response with the expected status
        and a Content-Length, on a connection that stays open. Everything else (a partial
        head or body, another status, other framing, a closing server, pipelined leftovers)
        goes through _receive, which handles every case; this only skips its calls."""
        run = self.run
        run.bytes_in += len(data)
        if self.buf or self.need != HEAD or self.ended or not self.inflight:
            return self._receive(data)
        known = self.known_head
        if known is not None and data.startswith(known):
            # byte for byte the head we parsed last time (servers repeat it until the Date changes)
            start = len(known)
            length = self.known_length
        else:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                return self._receive(data)
            head = data[:end + 2].lower()
            at = head.find(b"\r\ncontent-length:")
            if (at < 0 or head[9:12] != run.status_bytes or not head.startswith(b"http/1.1")
                    or (b"close" in head and says_close(head))):
                return self._receive(data)
            try:
                length = int(head[at + 17:head.find(b"\r\n", at + 17)])
            except ValueError:
                return self._receive(data)
            if length < 0:
                return self._receive(data)
            start = end + 4
            self.known_head, self.known_length = data[:start], length
        stop = start + length
        size = len(data)
        if size < stop:
            return self._receive(data)
        now = monotonic_ns()
        target = self.inflight.popleft()
        expected = target.expect_length
        if expected is not None and length != expected:
            error = BAD_LENGTH
        elif target.expect_sha256 is None or (run.verify_every != 1 and not run.verifier.take()):
            error = None
        else:
            ref = target.reference
            if ref is not None and len(ref) == length and data.startswith(ref, start):
                error = None  # the same bytes as a body already proven good (compared in place)
            else:
                error = self._verify_body(target, data[start:stop])
        self._record(now, length, error)
        self.server_closes = False
        if self.driver.on_response(self, now) and stop < size:
            self._receive(data[stop:])

    def _receive(self, data: bytes) -> None:
        """Frame whatever arrived: heads split across reads, streamed, chunked or close-delimited bodies."""
        if self.ended:
            return
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos = 0
        size = len(data)
        while pos < size:
            need = self.need
            if need == HEAD:
                if not self.inflight:
                    self.fail(BAD_RESPONSE, 1)  # bytes nobody asked for
                    return
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if size - pos > MAX_HEAD:
                        self.fail(BAD_RESPONSE)
                    else:
                        self.buf = data[pos:] if pos else data
                    return
                if not self._head(data, pos, end):
                    return
                pos = end + 4
                need = self.need
                if need == HEAD:  # an interim 1xx response: the real head follows
                    continue
                if need == 0:
                    if not self._complete(b""):
                        return
                    continue
            if need > 0:
                if self.parts is None and size - pos >= need:  # the whole body is here: the fast path
                    body = data[pos:pos + need] if (pos or need != size) else data
                    pos += need
                    if not self._complete(body):
                        return
                    continue
                take = min(size - pos, need)
                self._piece(data[pos:pos + take])
                pos += take
                self.need = need - take
                if self.need == 0 and not self._complete(None):
                    return
            elif need == CHUNKED:
                pos = self._chunked(data, pos)
                if pos < 0:
                    return
            else:  # UNTIL_CLOSE
                self._piece(data[pos:] if pos else data)
                self.length += size - pos
                return

    def eof_received(self) -> bool:
        return False  # let the transport close; connection_lost classifies what was cut short

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ended:
            return
        if self.inflight:
            if exc is not None:
                self.fail(RESET)
                return
            if self.need == UNTIL_CLOSE:
                self.need = 0
                expected = self.inflight[0].expect_length
                if self.head_error is None and expected is not None and self.length != expected:
                    self.head_error = BAD_LENGTH
                if not self._complete(None) or self.ended:
                    return
                self.ended = True
                self.driver.on_lost(self)
                return
            if self.need == HEAD:
                self.fail(CLOSED if not self.buf else BAD_RESPONSE)
            else:
                self.fail(SHORT_BODY)
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
    def _head(self, data: bytes, pos: int, end: int) -> bool:
        """Parse one response head in data[pos:end]; set up reading its body."""
        head = data[pos:end + 2].lower()  # one copy; header names are case-insensitive
        run = self.run
        if head[9:12] != run.status_bytes or not head.startswith(b"http/1."):
            return self._odd_status(head)
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            try:
                length = int(head[at + 17:head.find(b"\r\n", at + 17)])
            except ValueError:
                length = -1
            if length < 0:
                self.fail(BAD_RESPONSE)
                return False
            self.need = self.length = length
        elif not self._framing_without_length(head, run.expect_status):
            return False
        else:
            length = -1
        # the server will close after this response: HTTP/1.0 unless it says keep-alive, or Connection: close
        self.server_closes = (says_close(head) or self.need == UNTIL_CLOSE
                              or (head[7] == 48 and head.find(b"keep-alive") < 0))
        target = self.inflight[0]
        expected = target.expect_length
        if expected is not None and length >= 0 and length != expected:
            self.head_error = BAD_LENGTH
            self.check = False
            return True
        self.head_error = None
        every = run.verify_every
        if every == 1:
            self.check = target.expect_sha256 is not None
        else:
            self.check = target.expect_sha256 is not None and run.verifier.take()
        return True

    def _odd_status(self, head: bytes) -> bool:
        """A status other than the expected one: an interim 1xx, an error status, or not HTTP at all."""
        try:
            if not head.startswith(b"http/1."):
                raise ValueError
            status = int(head[9:12])
        except ValueError:
            self.fail(BAD_RESPONSE)
            return False
        if status < 200:
            if status == 101:
                self.fail(BAD_RESPONSE)
                return False
            return True  # an interim 1xx response: the real one follows (need stays HEAD)
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            try:
                self.need = self.length = int(head[at + 17:head.find(b"\r\n", at + 17)])
            except ValueError:
                self.fail(BAD_RESPONSE)
                return False
        elif not self._framing_without_length(head, status):
            return False
        self.server_closes = (says_close(head) or self.need == UNTIL_CLOSE
                              or (head[7] == 48 and head.find(b"keep-alive") < 0))
        self.head_error = BAD_STATUS
        self.check = False
        return True

    def _framing_without_length(self, head: bytes, status: int = 200) -> bool:
        """No Content-Length: chunked, an empty body by status, or a body delimited by the close."""
        self.length = 0
        if head.find(b"\r\ntransfer-encoding:") >= 0:
            if head.find(b"chunked\r\n") < 0:
                self.fail(BAD_RESPONSE)  # a transfer coding we cannot frame
                return False
            self.need = CHUNKED
            self.chunk_state = 0
        elif status in (204, 304):
            self.need = 0
        else:
            self.need = UNTIL_CLOSE
        return True

    def _piece(self, piece: bytes) -> None:
        """A piece of a body that did not arrive whole: compare it, collect it, hash it, or only count it."""
        parts = self.parts
        if parts is None:
            target = self.inflight[0]
            if not self.check:
                parts = False
            elif target.reference is not None:
                parts = _Against(target.reference)
            elif self.need != UNTIL_CLOSE and _may_keep(self.run, target.expect_length or 0):
                parts = []  # joined at the end, hashed once, kept as the reference
            else:
                parts = hashlib.sha256()
            self.parts = parts
        if parts is False:
            return
        kind = type(parts)
        if kind is _Against:
            parts.compare(piece)
        elif kind is list:
            parts.append(piece)
        else:
            parts.update(piece)

    def _chunked(self, data: bytes, pos: int) -> int:
        """Slow path for Transfer-Encoding: chunked. Returns the new position, or -1 to stop."""
        size = len(data)
        while pos < size:
            state = self.chunk_state
            if state == 0:  # a chunk-size line
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self.buf = data[pos:]
                    return size
                try:
                    n = int(data[pos:eol].split(b";", 1)[0], 16)
                except ValueError:
                    self.fail(BAD_RESPONSE)
                    return -1
                pos = eol + 2
                self.chunk_state = n + 2 if n else -1  # data plus its CRLF, or the trailer section
            elif state > 0:  # chunk data and its CRLF
                take = min(size - pos, state)
                data_take = min(take, max(state - 2, 0))
                if data_take:
                    self._piece(data[pos:pos + data_take])
                    self.length += data_take
                pos += take
                self.chunk_state = state - take  # 0 again: the next chunk-size line
            else:  # trailers until an empty line
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    self.buf = data[pos:]
                    return size
                line_empty = eol == pos
                pos = eol + 2
                if line_empty:
                    target = self.inflight[0]
                    if (self.head_error is None and target.expect_length is not None
                            and self.length != target.expect_length):
                        self.head_error = BAD_LENGTH
                    self.need = 0
                    if not self._complete(None):
                        return -1
                    return pos
        return pos

    def _complete(self, body: bytes | None) -> bool:
        """A response is complete. Returns False when the connection must not be read further."""
        now = monotonic_ns()
        target = self.inflight.popleft()
        error = self.head_error
        length = self.length
        if error is None and self.check:
            parts = self.parts
            if body is None:
                kind = type(parts)
                if kind is list:
                    body = b"".join(parts)
                elif kind is _Against:
                    if not parts.matched():
                        error = CORRUPT_BODY
                elif parts is not None and parts is not False:
                    if parts.digest() != target.expect_sha256:
                        error = CORRUPT_BODY
            if body is not None:
                ref = target.reference
                if body is not ref and body != ref:
                    error = self._verify_body(target, body)
        self.need = HEAD
        self.parts = None
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

    def _verify_body(self, target, body: bytes) -> str | None:
        """Hash a body not seen before; keep it as the reference when it is right."""
        if hashlib.sha256(body).digest() != target.expect_sha256:
            return CORRUPT_BODY
        if target.reference is None and _may_keep(self.run, len(body)):
            target.reference = body
            self.run.reference_bytes += len(body)
        return None

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


def preload_references(targets: list, corpus_dir: str) -> int:
    """Take references from the local corpus files, smallest first, within the memory budget.

    A file is used only if its bytes hash to the manifest's sha256, so comparing a body with it
    is the same check as hashing the body, done before the run instead of during it. Returns
    the bytes held."""
    held = 0
    for target in sorted(targets, key=lambda t: t.expect_length or 0):
        size = target.expect_length
        if target.corpus_name is None or target.reference is not None or size is None:
            continue
        if size > REFERENCE_ALWAYS and held + size > REFERENCE_BUDGET:
            continue
        try:
            with open(os.path.join(corpus_dir, target.corpus_name), "rb") as f:
                data = f.read(size + 1)
        except OSError:
            continue
        if len(data) == size and hashlib.sha256(data).digest() == target.expect_sha256:
            target.reference = data
            held += size
    return held


def _may_keep(run, size: int) -> bool:
    return size <= REFERENCE_ALWAYS or run.reference_bytes + size <= REFERENCE_BUDGET


class _Against:
    """Compares the pieces of a streamed body with the reference, in place."""

    __slots__ = ("reference", "offset", "ok")

    def __init__(self, reference: bytes) -> None:
        self.reference = reference
        self.offset = 0
        self.ok = True

    def compare(self, piece: bytes) -> None:
        if self.ok:
            self.ok = self.reference.startswith(piece, self.offset)
        self.offset += len(piece)

    def matched(self) -> bool:
        return self.ok and self.offset == len(self.reference)


class BufferedClientConnection(ClientConnection, asyncio.BufferedProtocol):
    """For the stdlib loop, whose plain Protocol path allocates a large buffer per read."""

    __slots__ = ("_buffer", "_view")

    def __init__(self, driver) -> None:
        super().__init__(driver)
        self._buffer = bytearray(256 * 1024)
        self._view = memoryview(self._buffer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._view[:nbytes]))
