"""What event-loop models need that blocking models get from the kernel for free.

A blocking model waits in recv() with a timeout and lets sendall()/sendfile() finish;
an event loop instead keeps deadlines itself, sends what fits and resumes later, and
must turn away a connection it cannot watch. These helpers hold those pieces once, so
the loop files (select, asyncio) show only how they wait.
"""

from __future__ import annotations

import os
import resource

from ...protocol import FileSlice, HttpConnection, Limits
from ...protocol.responses import HeadWriter
from .clock import http_date
from .io_sizes import READ_CHUNK
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


def deadline_after_read(http: HttpConnection, was_partial: bool, had_plans: bool, current: float, now: float,
                        limits: Limits) -> float:
    """The connection's next deadline once the core has seen some bytes.

    A request head has header_timeout from its first byte (a dribbling client cannot
    extend it); an idle connection has keepalive_timeout from its last response.
    """
    if http.has_partial_request:
        if not was_partial or had_plans:  # a new head started in these bytes
            return now + limits.header_timeout
        return current
    return now + limits.keepalive_timeout


def refusal(server_name: str, reason: str) -> bytes:
    """A complete 503 response (head and body) for a connection the loop cannot take."""
    plan = HeadWriter(server_name, http_date).error(503, reason, close=True)
    return plan.head + plan.body


class FileSource:
    """The unsent rest of a planned file slice, for a loop that sends a step at a time.

    Either mode stops short only if the file shrank since it was planned; the model
    then drops the connection so the client sees a short body, never wrong bytes.
    """

    __slots__ = ("fd", "offset", "left")

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
