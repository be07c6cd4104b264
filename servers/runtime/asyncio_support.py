"""What the asyncio model needs from its loop besides its protocol's callbacks.

- report_loop_error, the loop's exception handler: a reset peer or a lack of
  descriptors is one rate-limited line (runtime/stderr_log.py), a bug the full report;
- send_file, --file-send sendfile: loop.sendfile in SENDFILE_SEGMENT steps, because
  loop.sendfile reports no progress until it returns, and the write timeout must see
  some;
- until_stop_signal: SIGTERM or SIGINT, as the loop's signal handlers see them;
- LiveConnections, the live connections and the shutdown's grace period: drain each,
  wait for the last to go, abort what is left when the grace period is over.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Protocol, TypeVar

from .context import ServerContext
from .nonblocking import FileSource
from .stderr_log import report

SENDFILE_SEGMENT = 1024 * 1024  # bytes per loop.sendfile call: progress the write timeout sees


def report_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """One line for the loop's OS-level troubles (out of descriptors on accept, a reset
    peer); the full default report, traceback included, for anything else (a bug)."""
    exc = context.get("exception")
    if isinstance(exc, OSError):
        message = context.get("message", "event loop error")
        report(message, f"serverzoo: {message}: {exc}")
    else:
        loop.default_exception_handler(context)


class Written(Protocol):
    written: int  # bytes handed to the transport, which the write timeout compares


async def send_file(
    loop: asyncio.AbstractEventLoop, transport: asyncio.WriteTransport, f: FileSource, conn: Written
) -> bool:
    """Send the rest of f with loop.sendfile, a segment at a time, counting each into
    conn.written. True once it is all sent; False when the transport was aborted: the
    client is gone, the send was cancelled (shutdown, write timeout), or the file shrank
    (a short body, then drop).

    The transport's buffer must be empty when this starts (a zero high-water mark), and
    the transport is aborted only here, after loop.sendfile has unwound: aborting it
    mid-call breaks the 3.11 selector transport (its empty-waiter future is already done).
    """
    try:
        with open(f.fd, "rb", buffering=0, closefd=False) as fileobj:
            while f.left:
                segment = min(f.left, SENDFILE_SEGMENT)
                # fallback=False: a reset client must not send the rest through executor threads
                sent = await loop.sendfile(transport, fileobj, f.offset, segment, fallback=False)
                conn.written += sent
                f.offset += sent
                f.left -= sent
                if sent < segment:
                    transport.abort()
                    return False
    except (OSError, RuntimeError, asyncio.CancelledError):  # client gone, or we gave up on it
        transport.abort()
        return False
    return True


async def until_stop_signal(loop: asyncio.AbstractEventLoop, ctx: ServerContext) -> None:
    """Wait for SIGTERM or SIGINT, or return at once if one came before the handlers were in place."""
    stop = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if ctx.stopping:
        on_signal()
    await stop


class Drainable(Protocol):
    def drain(self) -> None: ...  # shutdown: close now if idle, else close after the response in progress

    def abort(self) -> None: ...  # the grace period is over: drop it now


D = TypeVar("D", bound=Drainable)


class LiveConnections(set[D]):
    """A callback loop's live connections (a set: adding one costs one C call), and its
    shutdown (drain_all). A connection leaves it by discard(), from connection_lost."""

    __slots__ = ("_all_gone",)

    def __init__(self) -> None:
        super().__init__()
        self._all_gone: asyncio.Future[None] | None = None  # made when shutdown begins

    def discard(self, conn: object) -> None:
        super().discard(conn)
        if not self and self._all_gone is not None and not self._all_gone.done():
            self._all_gone.set_result(None)

    async def drain_all(self, grace: float) -> None:
        """Drain every connection; give the busy ones grace seconds to finish, then abort them."""
        self._all_gone = asyncio.get_running_loop().create_future()
        for conn in list(self):
            conn.drain()
        if self:
            try:
                await asyncio.wait_for(asyncio.shield(self._all_gone), grace)
            except TimeoutError:
                for conn in list(self):
                    conn.abort()
                await asyncio.sleep(0)  # let connection_lost run
