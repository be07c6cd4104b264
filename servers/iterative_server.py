"""iterative: one connection at a time, start to finish.

How it works: the main thread accepts a connection and serves every request on it
until the client leaves or goes idle past the keep-alive timeout; only then does it
accept the next. This is the first server of the classic socket notes, with their
bugs fixed (framing, streaming, timeouts) but their shape kept.

Good at: being easy to read and reason about; no locks, no shared state.
Breaks down: any concurrency at all. One slow or idle client stalls everyone behind
it (the "idle connections" and "slow readers" scenarios show it), and a keep-alive
client holds the server for the whole keep-alive timeout.
File bodies: a read-and-send loop by default, --file-send sendfile for zero-copy. As
in the other models, copying is the default because on loopback the receiving client
spends more CPU per byte of sendfile'd data, and the client's core is what limits the
large-file scenario; sendfile costs this server less CPU, which matters only where
the server's core is the limit.
"""

from __future__ import annotations

from .runtime.blocking import serve_connection
from .runtime.context import ServerContext


def serve(ctx: ServerContext) -> None:
    for sock in ctx.accept_loop():
        serve_connection(sock, ctx, use_sendfile=ctx.use_sendfile)
