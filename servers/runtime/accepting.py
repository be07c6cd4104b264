"""One accept policy for every model: which accept() errors to skip, which to back off from.

Running out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) is a state the
server recovers from when connections close, so the model stops accepting for a while
(BACKOFF_FIRST, doubling up to BACKOFF_MAX, reset by the next successful accept) and
reports it, rate-limited, instead of dying or spinning on a listener that stays
readable. Errors about a single connection that was gone before we took it
(ECONNABORTED, EPROTO, EPERM) and EAGAIN (a sibling worker took it) are skipped. The
sets are the ones trio's serve_listeners uses.
"""

from __future__ import annotations

import _socket
import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .stderr_log import report

if TYPE_CHECKING:
    from .context import ServerContext  # context.py imports this module

# accept() errors that mean "out of a resource for now": back off and try again rather than die
ACCEPT_BACKOFF = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# errors about one connection that was gone before we accepted it, or none left to take
ACCEPT_SKIP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN})
ACCEPT_BATCH = 64  # accepts per wake-up of an event loop: absorb a burst without starving the others
BACKOFF_FIRST = 0.01  # seconds
BACKOFF_MAX = 1.0


class AcceptBackoff:
    """What to do after a failed accept(): the pause grows while resources stay short."""

    __slots__ = ("delay",)

    def __init__(self) -> None:
        self.delay = 0.0

    def pause_after(self, exc: OSError) -> float:
        """Seconds to stop accepting after exc (0.0: skip it and carry on); re-raises anything else."""
        if exc.errno in ACCEPT_BACKOFF:
            self.delay = min(max(self.delay * 2, BACKOFF_FIRST), BACKOFF_MAX)
            report(
                "accept: out of descriptors or memory",
                f"serverzoo: accept: {exc.strerror or exc}; pausing accepts (up to {BACKOFF_MAX:g} s at a time)",
            )
            return self.delay
        if exc.errno in ACCEPT_SKIP or isinstance(exc, BlockingIOError):
            return 0.0
        raise exc

    def accepted(self) -> None:
        self.delay = 0.0


class Acceptor:
    """An event loop's accepts: each readiness of the non-blocking listener takes up to
    ACCEPT_BATCH connections, as non-blocking C-level sockets (the socket.socket wrapper
    adds a Python __init__, enum conversions and a Python close per connection, none of
    which the loops use; TCP_NODELAY comes from the listener, see runtime/listener.py).
    After a burst, pause says how long to stop watching the listener (0.0: keep on)."""

    __slots__ = ("_accept", "_ctx", "_family", "_proto", "_type", "backoff", "pause")

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        listener = ctx.listener
        listener.setblocking(False)
        self._accept = listener._accept  # type: ignore[attr-defined]  # (fd, address), no wrapper
        self._family, self._type, self._proto = int(listener.family), int(listener.type), listener.proto
        self.backoff = AcceptBackoff()
        self.pause = 0.0

    def burst(self) -> Iterator[_socket.socket]:
        self.pause = 0.0
        for _ in range(ACCEPT_BATCH):
            try:
                fd, _ = self._accept()
            except OSError as exc:
                if self._ctx.stopping:  # shutdown shut the listener down under us: done
                    return
                self.pause = self.backoff.pause_after(exc)  # re-raises what is neither skip nor back-off
                if self.pause or isinstance(exc, BlockingIOError):
                    return
                continue
            self.backoff.accepted()
            sock = _socket.socket(self._family, self._type, self._proto, fd)
            sock.setblocking(False)
            yield sock
