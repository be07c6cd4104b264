"""threading: a new thread for every connection, with no bound.

How it works: the main thread accepts; each accepted socket gets a fresh daemon
thread that runs the shared blocking conversation (recv, core, send) until the client
leaves. Blocking calls release the GIL, so threads overlap on I/O and on the work
endpoint's wait (time.sleep).

Good at: simple code that serves slow, idle and backend-bound clients side by side.
Breaks down: CPU-bound Python (the GIL runs one thread at a time, and with many
runnable threads p99 latency grows: see the "cpu work" and "small files keep-alive"
scenarios at high concurrency), thread start-up on connection churn ("new connection
per request"), and memory per thread when thousands of clients stay connected.
File bodies: read-and-send by default (--file-send sendfile to switch): on loopback a
copying loop moves large files faster than sendfile, because the receiving client
spends less CPU per byte of copied data and its core is the limit; bench/ measures
both for this model.
"""

from __future__ import annotations

import threading

from .runtime.blocking import serve_connection
from .runtime.context import ServerContext


def serve(ctx: ServerContext) -> None:
    for sock in ctx.accept_loop():
        threading.Thread(target=serve_connection, args=(sock, ctx),
                         kwargs={"use_sendfile": ctx.use_sendfile}, daemon=True).start()
