"""Messages between the coordinator and its workers: a 4-byte length, then a pickle.

The channel is a pair of pipes to a child process we started ourselves, so pickle is safe.
"""

from __future__ import annotations

import os
import pickle
import struct


def write_message(fd: int, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    data = struct.pack(">I", len(data)) + data
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_message(fd: int) -> object:
    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise EOFError("the other side closed the message pipe")
            out += chunk
        return out

    (size,) = struct.unpack(">I", exactly(4))
    return pickle.loads(exactly(size))


def parse_messages(buffer: bytes) -> tuple[list, bytes]:
    """The complete messages at the start of buffer, and what is left of it."""
    out = []
    while len(buffer) >= 4:
        (size,) = struct.unpack(">I", buffer[:4])
        if len(buffer) < 4 + size:
            break
        out.append(pickle.loads(buffer[4 : 4 + size]))
        buffer = buffer[4 + size :]
    return out, buffer
