"""HTTP/1.x response framing without I/O: bytes in; heads, body pieces and ends out.

    reader = ResponseReader()
    reader.feed(data)                      # whatever one recv() returned
    while (event := reader.next_event()) is not NEED_DATA:
        ...                                # a Head, a body piece (bytes or memoryview), or END
    reader.feed_eof()                      # the peer closed: ends a close-delimited body

Only what a load generator needs is read from a head: the status, the framing
(Content-Length, chunked, or until the close; none for 1xx, 204 and 304) and whether the
server closes the connection afterwards. Header names are matched in a lower-cased copy of
the head. Interim 1xx responses are skipped; 101 (a protocol switch) is an error here.
A framing error raises FramingError with one of the error classes of a load result.

Body pieces are slices of what was fed, never copies joined together: a body that arrives
whole in one read comes out as one piece, and a memoryview fed while a body is being read
(a reused receive buffer) comes out as memoryviews of it, valid until the next feed. The
reader keeps no reference to a fed memoryview after next_event returns NEED_DATA.

whole_response() is the keep-alive fast path: one call that recognises a read holding
exactly one complete, expected response (a head seen before is matched byte for byte).
"""

from __future__ import annotations

MAX_HEAD = 64 * 1024

# framing error classes (the names are those of a load result's "errors" object)
BAD_RESPONSE = "bad_response"  # not parseable as HTTP/1.x, or framing we cannot follow
CLOSED = "closed"  # the server closed the connection before a response began
SHORT_BODY = "short_body"  # the server closed the connection in the middle of a body

# states
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, _END, _FINISHED = range(9)


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Marker("NEED_DATA")
END = _Marker("END")


class FramingError(Exception):
    """The bytes cannot be framed as responses; kind is one of BAD_RESPONSE, CLOSED, SHORT_BODY."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Head:
    """A final response head: status, Content-Length (None: chunked or until the close), closes."""

    __slots__ = ("chunked", "closes", "length", "status")

    def __init__(self, status: int, length: int | None, chunked: bool, closes: bool) -> None:
        self.status, self.length, self.chunked, self.closes = status, length, chunked, closes

    def __repr__(self) -> str:
        return f"Head({self.status}, length={self.length}, chunked={self.chunked}, closes={self.closes})"


def says_close(head: bytes) -> bool:
    """Whether a lower-cased response head has a Connection header listing "close"."""
    at = head.find(b"\r\nconnection:")
    while at >= 0:
        end = head.find(b"\r\n", at + 13)
        if b"close" in (token.strip() for token in head[at + 13 : end].split(b",")):
            return True
        at = head.find(b"\r\nconnection:", end)
    return False


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a lower-cased head; None if absent; FramingError if unreadable."""
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        return None
    try:
        length = int(head[at + 17 : head.find(b"\r\n", at + 17)])
    except ValueError:
        raise FramingError(BAD_RESPONSE) from None
    if length < 0:
        raise FramingError(BAD_RESPONSE)
    return length


def parse_head(head: bytes) -> Head | None:
    """Parse a lower-cased head (status line to the last header's CRLF). None for an interim 1xx."""
    if not head.startswith(b"http/1.") or head[8:9] != b" ":
        raise FramingError(BAD_RESPONSE)
    try:
        status = int(head[9:12])
    except ValueError:
        raise FramingError(BAD_RESPONSE) from None
    if status < 200:
        if status == 101 or status < 100:
            raise FramingError(BAD_RESPONSE)  # a protocol switch (or nonsense) we cannot follow
        return None
    chunked = False
    length = None
    if head.find(b"\r\ntransfer-encoding:") >= 0:
        if head.find(b"chunked\r\n") < 0:
            raise FramingError(BAD_RESPONSE)  # a transfer coding we cannot frame
        chunked = True
    elif status in (204, 304):
        length = 0
    else:
        length = _content_length(head)
    # the server will close after this response: HTTP/1.0 unless it says keep-alive, Connection:
    # close, or a body that only the close can end
    closes = (length is None and not chunked) or says_close(head) or (head[7] == 48 and head.find(b"keep-alive") < 0)
    return Head(status, length, chunked, closes)


class ResponseReader:
    """Frames a stream of responses; see the module docstring."""

    __slots__ = (
        "close_ok",
        "data",
        "eof",
        "known_head",
        "known_length",
        "known_stop",
        "need",
        "pos",
        "state",
        "status_bytes",
    )

    def __init__(self, expect_status: int = 200, close_ok: bool = False) -> None:
        """close_ok: whole_response accepts responses after which the server closes (for a
        client that closes the connection after one response anyway)."""
        self.data: bytes | memoryview = b""
        self.pos = 0
        self.state = _HEAD
        self.need = 0  # body (or chunk) bytes still to come
        self.eof = False
        self.known_head: bytes | None = None  # the last head whole_response accepted, and its length
        self.known_length = self.known_stop = 0
        self.status_bytes = b"%03d" % expect_status
        self.close_ok = close_ok

    @property
    def idle(self) -> bool:
        """Between responses with nothing buffered."""
        return self.state == _HEAD and self.pos >= len(self.data)

    @property
    def in_body(self) -> bool:
        """In a Content-Length or close-delimited body with nothing buffered: the next feed is body
        bytes (or begins with them), so a reused receive buffer can be fed as a memoryview."""
        return (self.state in (_BODY, _UNTIL_CLOSE)) and self.pos >= len(self.data)

    @property
    def body_left(self) -> int:
        """In a Content-Length body with nothing buffered: how many of its bytes are still to come (the
        server owes at least these before anything else); else 0."""
        return self.need if self.state == _BODY and self.pos >= len(self.data) else 0

    def take_body(self, n: int) -> bool:
        """The middle of a Content-Length body without events: when the next n bytes would be body
        bytes short of its end, count them as read and return True (the caller checks them
        itself); else return False and change nothing. Saves the events' calls per read of a
        large body."""
        if self.state == _BODY and n < self.need and self.pos >= len(self.data):
            self.need -= n
            return True
        return False

    @property
    def until_close(self) -> bool:
        """In a body that only the server's close ends."""
        return self.state == _UNTIL_CLOSE

    def feed(self, data: bytes | memoryview) -> None:
        if self.pos < len(self.data):
            rest = self.data[self.pos :]
            self.data = bytes(rest) + data if type(rest) is memoryview else rest + data
        else:
            self.data = data
        self.pos = 0

    def feed_eof(self) -> None:
        self.eof = True

    def whole_response(self, data: bytes) -> int:
        """The keep-alive fast path. When the reader is idle and data begins with a whole response
        of the expected status, framed by Content-Length, on a connection that stays open (or
        any connection, with close_ok), return where that response ends in data; its body is
        the known_length bytes before that. Otherwise return -1 and leave the reader as it was."""
        if self.state or self.data:  # not idle (_HEAD is 0; data is b"" when nothing is buffered)
            return -1
        known = self.known_head
        if known is not None and data.startswith(known):
            # byte for byte the head accepted last time (servers repeat it until the Date changes)
            stop = self.known_stop
            return stop if len(data) >= stop else -1
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return -1
        head = data[: end + 2].lower()
        at = head.find(b"\r\ncontent-length:")
        if (
            at < 0
            or head[9:12] != self.status_bytes
            or not head.startswith(b"http/1.1")
            or head.find(b"\r\ntransfer-encoding:") >= 0
            or (not self.close_ok and b"close" in head and says_close(head))
        ):
            return -1
        try:
            length = int(head[at + 17 : head.find(b"\r\n", at + 17)])
        except ValueError:
            return -1
        if length < 0:
            return -1
        start = end + 4
        stop = start + length
        self.known_head, self.known_length, self.known_stop = data[:start], length, stop
        return stop if len(data) >= stop else -1

    def next_event(self):
        """The next Head, body piece, END, or NEED_DATA; raises FramingError."""
        state = self.state
        if state == _BODY:
            return self._body(_END)
        if state == _HEAD:
            return self._head()
        if state == _END:
            self.state = _HEAD
            return self._end()
        if state == _UNTIL_CLOSE:
            data, pos = self.data, self.pos
            if pos < len(data):
                self.pos = len(data)
                return data[pos:] if pos else data
            if self.eof:
                self.state = _FINISHED  # the close ended the body, and with it the stream
                return self._end()
            self.data, self.pos = b"", 0
            return NEED_DATA
        if state == _FINISHED:
            return NEED_DATA
        return self._chunked()

    def _end(self):
        if self.pos >= len(self.data):
            self.data, self.pos = b"", 0  # nothing buffered: whole_response may be used again
        return END

    def _as_bytes(self) -> tuple[bytes, int]:
        """What is buffered, as bytes: lines are searched in it, and a fed buffer will be reused."""
        data, pos = self.data, self.pos
        if type(data) is memoryview:
            data = self.data = bytes(data[pos:])
            pos = self.pos = 0
        return data, pos

    def _head(self):
        while True:
            data, pos = self._as_bytes()
            end = data.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(data) - pos > MAX_HEAD:
                    raise FramingError(BAD_RESPONSE)
                if self.eof:
                    raise FramingError(CLOSED if pos >= len(data) else BAD_RESPONSE)
                if pos >= len(data):
                    self.data, self.pos = b"", 0  # nothing buffered: whole_response may be used
                return NEED_DATA
            head = parse_head(data[pos : end + 2].lower())
            self.pos = end + 4
            if head is None:
                continue  # an interim response: the real head follows
            if head.chunked:
                self.state = _CHUNK_SIZE
            elif head.length is None:
                self.state = _UNTIL_CLOSE
            elif head.length:
                self.state, self.need = _BODY, head.length
            else:
                self.state = _END
            return head

    def _body(self, done_state: int):
        """Up to `need` bytes of a body or chunk; done_state follows the last of them."""
        data, pos = self.data, self.pos
        size = len(data)
        if pos >= size:
            if self.eof:
                raise FramingError(SHORT_BODY)
            self.data, self.pos = b"", 0
            return NEED_DATA
        need = self.need
        if size - pos <= need:
            piece = data[pos:] if pos else data
            self.pos = size
            need -= size - pos
        else:
            piece = data[pos : pos + need]
            self.pos = pos + need
            need = 0
        self.need = need
        if not need:
            self.state = done_state
        return piece

    def _chunked(self):
        while True:
            data, pos = self._as_bytes()
            state = self.state
            if state == _CHUNK_DATA:
                return self._body(_CHUNK_CRLF)
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                if len(data) - pos > MAX_HEAD:
                    raise FramingError(BAD_RESPONSE)
                if self.eof:
                    raise FramingError(SHORT_BODY)
                return NEED_DATA
            line = data[pos:eol]
            self.pos = eol + 2
            if state == _CHUNK_SIZE:
                size_text = line.split(b";", 1)[0].strip()
                try:
                    n = int(size_text, 16)
                except ValueError:
                    raise FramingError(BAD_RESPONSE) from None
                if n < 0 or size_text.startswith((b"+", b"-")):
                    raise FramingError(BAD_RESPONSE)
                if n:
                    self.state, self.need = _CHUNK_DATA, n
                else:
                    self.state = _TRAILERS
            elif state == _CHUNK_CRLF:
                if line:
                    raise FramingError(BAD_RESPONSE)
                self.state = _CHUNK_SIZE
            elif not line:  # the empty line after the trailers: the body is complete
                self.state = _HEAD
                return self._end()
