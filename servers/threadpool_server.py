"""threadpool: a fixed pool of threads, fed one connection at a time by the accept loop.

How it works: --pool N threads (default 32) are started once and wait on a hand-off
queue. The main thread takes a free thread first, then accepts, then hands the
socket over; each thread runs the shared blocking conversation until its client
leaves, then waits for the next. When all N threads are busy the main thread stops
accepting: new clients wait in the kernel's listen backlog (connected, unanswered),
not in a queue inside the server, and beyond the backlog the kernel drops their SYNs.
Unlike `threading`, no thread is created per connection and their number is capped.

Good at: connection churn without thread start-up cost (`small-new-connection`),
backend-bound requests up to N at once (`wait-work`), and a footprint that stays put
however many clients arrive.
Breaks down: an idle keep-alive client holds a whole thread, so with more keep-alive
clients than threads the extra ones starve until a holder leaves or idles past the
keep-alive timeout: `small-keepalive` and `wait-work` with more connections than
threads, and `idle-connections` fills the pool outright. CPU-bound work still queues
on the GIL as in `threading` (`cpu-work`).
File bodies: read-and-send by default (--file-send sendfile to switch), for the reason
`threading` gives; `large-stream` with a `--file-send sendfile` server variant compares
the two on a quiet machine.
"""

from __future__ import annotations

import queue
import socket
import threading
import traceback

from .runtime.blocking import serve_connection
from .runtime.context import ServerContext

DEFAULT_POOL = 32


def serve(ctx: ServerContext) -> None:
    size = ctx.options.get("pool", DEFAULT_POOL)
    free = threading.Semaphore(size)  # threads waiting for a connection
    handoff: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()

    def worker() -> None:
        while (sock := handoff.get()) is not None:
            try:
                serve_connection(sock, ctx, use_sendfile=ctx.use_sendfile)
            except Exception:  # a bug in one conversation must not shrink the pool
                traceback.print_exc()
            free.release()

    # daemon threads (not concurrent.futures): one still busy after the grace period
    # must not keep the process from exiting
    for i in range(size):
        threading.Thread(target=worker, name=f"pool-{i}", daemon=True).start()

    def take_free_thread() -> bool:
        while not free.acquire(timeout=0.25):  # all busy; wake now and then to see a shutdown
            if ctx.stopping:
                return False
        return True

    accepted = ctx.accept_loop()
    while take_free_thread() and (sock := next(accepted, None)) is not None:
        handoff.put(sock)
    for _ in range(size):
        handoff.put(None)  # each thread exits after its current client
