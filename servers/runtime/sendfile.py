"""Streaming a file slice to a blocking socket: zero-copy sendfile, or a bounded read loop.

Both send exactly the planned slice and stop early only if the file got shorter since
it was planned; the caller then drops the connection, so the client sees a short body
(detectable by Content-Length) rather than wrong bytes. On loopback a read-and-send
loop can beat sendfile (the copy is cheap, and large send() calls batch better), so
each model says which it uses and the benchmarks measure both.
"""

from __future__ import annotations

import io
import os
import socket

from ...protocol import FileSlice
from .io_sizes import READ_CHUNK


def open_slice(fs: FileSlice) -> int:
    """Open the planned file without following a symlink swapped in since it was resolved."""
    return os.open(fs.path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))


def stream_file(sock: socket.socket, fs: FileSlice, use_sendfile: bool = True, fd: int | None = None) -> int:
    """Send fs to sock (which may have a timeout); return the bytes sent.

    fd: the slice already opened with open_slice (this function closes it), so a caller
    can open the file before it commits to a response head.
    """
    if fd is None:
        fd = open_slice(fs)
    try:
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
            if use_sendfile:
                # socket.sendfile waits with the socket's timeout between partial sends
                return sock.sendfile(f, fs.offset, fs.length)
            return _read_loop(sock, f, fs)
    finally:
        os.close(fd)


def _read_loop(sock: socket.socket, f: io.FileIO, fs: FileSlice) -> int:
    buf = bytearray(min(READ_CHUNK, max(fs.length, 1)))
    view = memoryview(buf)
    f.seek(fs.offset)
    sent = 0
    while sent < fs.length:
        n = f.readinto(view[: min(len(buf), fs.length - sent)])
        if not n:
            break
        sock.sendall(view[:n])
        sent += n
    return sent
