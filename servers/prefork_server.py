"""prefork: N processes share one listening socket, each accepting in a loop.

How it works: the parent opens the listener, forks N workers (--workers N, default
the CPU count) and from then on only supervises them (runtime/workers.py: a worker
that dies is replaced, SIGTERM/SIGINT are forwarded, the parent exits when every
worker is gone). Each worker runs the loop below: accept a connection, serve it to
the end, accept the next; the iterative server N times over, the gunicorn-sync and
Apache-prefork shape. Linux wakes one blocked accept() per new connection, so the
workers take turns without a thundering herd.

Good at: CPU-bound requests on many cores (each worker has its own GIL: `cpu-work`),
isolation (a crash loses one connection and the worker is replaced), no locks at all,
and no per-connection start-up cost (`small-new-connection`).
Breaks down: concurrency is exactly N. N keep-alive clients occupy every worker and
client N+1 waits in the listen backlog until one leaves or idles past the keep-alive
timeout: `small-keepalive` and `wait-work` with more connections than workers serve N
of them and starve the rest, and `idle-connections` stalls the server outright.
File bodies: read-and-send by default (--file-send sendfile to switch), as in
`threading`, which runs the same blocking loop, for the reason it gives;
`large-stream` with a `--file-send sendfile` server variant compares the two on a
quiet machine.
"""

from __future__ import annotations

from .runtime.blocking import serve_connection
from .runtime.context import ServerContext


def serve(ctx: ServerContext) -> None:
    """One worker's loop; the runtime runs it in each of the N processes."""
    for sock in ctx.accept_loop():
        serve_connection(sock, ctx, use_sendfile=ctx.use_sendfile)
