"""Waking a waiting loop when a signal arrives: a socket the signal writes a byte to.

The runtime's signal handlers only set ctx.stopping; a loop asleep in select(), poll() or
epoll_wait() learns of it through this socket at once instead of at its next timeout.
Kept apart from the non-blocking helpers, which need the server context: the context
itself uses these while it waits for a signal.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def signal_wakeup() -> Iterator[socket.socket]:
    """A socket that becomes readable when a signal arrives (signal.set_wakeup_fd), for a
    loop that waits in select(): the runtime's handlers only set ctx.stopping, and the
    byte on this socket wakes the loop so it sees that at once. Read it with drain_fd()."""
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    previous = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    try:
        yield wake_r
    finally:
        signal.set_wakeup_fd(previous)
        wake_r.close()
        wake_w.close()


def drain_fd(fd: int) -> None:
    """Read and forget whatever a non-blocking descriptor (a wake-up pipe or socket) holds."""
    try:
        while os.read(fd, 512):
            pass
    except OSError:
        pass
