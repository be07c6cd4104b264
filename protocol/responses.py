"""Response plans: what a model must send, decided without touching a socket.

A plan is the head as ready bytes, an in-memory body (errors, listings, small cached
files, work replies) and optionally a file slice that the model streams itself with
sendfile or a bounded read loop. The core never reads a large file into memory.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

DateSource = Callable[[], bytes]  # returns an IMF-fixdate, e.g. b"Sun, 22 Nov 2026 01:02:03 GMT"

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


@dataclass(frozen=True, slots=True)
class FileSlice:
    """Bytes [offset, offset + length) of the file at path, streamed by the model."""

    path: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class WorkOrder:
    """The work endpoint's request: run the CPU kernel cpu times, then wait."""

    cpu: int
    wait_s: float


@dataclass(slots=True)
class ResponsePlan:
    status: int
    head: bytes
    body: bytes = b""
    file: FileSlice | None = None
    work: WorkOrder | None = None
    close: bool = False  # close the connection once this response is sent
    # the Date (tick) during which a byte-identical request head gets this same response
    # (a whole small file, keep-alive): HttpConnection may then send it again as is
    valid_during: bytes | None = None


@functools.cache
def _server_line(server_name: str) -> bytes:
    """One bytes object per server name, so cached heads can be matched by identity."""
    return b"Server: " + server_name.encode("ascii") + b"\r\n"


class HeadWriter:
    """Builds response heads with the headers every response carries."""

    __slots__ = ("date", "server_line")

    def __init__(self, server_name: str, date: DateSource) -> None:
        self.server_line = _server_line(server_name)
        self.date = date

    def head(self, status: int, fields: bytes, *, close: bool, keep_alive_header: bool = False) -> bytes:
        """fields: pre-rendered header lines (each ending in CRLF) specific to this response."""
        if close:
            conn = b"Connection: close\r\n"
        elif keep_alive_header:  # HTTP/1.0 clients that asked for keep-alive need to see it
            conn = b"Connection: keep-alive\r\n"
        else:
            conn = b""
        return b"".join(
            (_STATUS_LINES[status], b"Date: ", self.date(), b"\r\n", self.server_line, fields, conn, b"\r\n")
        )

    def simple(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"text/plain; charset=utf-8",
        *,
        close: bool,
        keep_alive_header: bool = False,
        extra: bytes = b"",
        head_only: bool = False,
    ) -> ResponsePlan:
        fields = b"Content-Type: %s\r\nContent-Length: %d\r\n%s" % (content_type, len(body), extra)
        head = self.head(status, fields, close=close, keep_alive_header=keep_alive_header)
        return ResponsePlan(status, head, b"" if head_only else body, close=close)

    def error(
        self,
        status: int,
        message: str,
        *,
        close: bool,
        extra: bytes = b"",
        head_only: bool = False,
        keep_alive_header: bool = False,
    ) -> ResponsePlan:
        """A short text body that says what was wrong: '404 Not Found: no such file'."""
        body = f"{status} {HTTPStatus(status).phrase}: {message}\n".encode("utf-8", "replace")
        return self.simple(
            status, body, close=close, extra=extra, head_only=head_only, keep_alive_header=keep_alive_header
        )
