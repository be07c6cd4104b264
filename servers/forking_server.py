"""forking: a new process for every connection, with a cap on live children.

How it works: the parent accepts and forks; the child closes its copy of the listener,
serves its one client with the shared blocking conversation and exits; the parent
closes its copy of the client socket and accepts again. Children are reaped by a
SIGCHLD handler the moment they exit, so no zombie lingers (runtime/workers.py).
When --max-children (default 64) are alive the parent stops accepting until one
exits: new clients wait in the kernel's listen backlog, and a line on stderr says the
cap was reached. SIGTERM/SIGINT: the parent stops accepting, forwards SIGTERM to every
child (each finishes its response in flight, then closes), waits for them up to the
grace period, then SIGKILLs the rest.

Good at: isolation (a crash or a leak dies with its connection), CPU-bound requests on
many cores (each child has its own GIL), and the classic notes' clarity.
Breaks down: every connection pays a fork, the child's copy-on-write faults on the
parent's memory, and an exit: milliseconds where a thread pool spends microseconds,
which `small-new-connection` shows. Each keep-alive client holds a process, so past
the cap clients wait (`idle-connections`; `small-keepalive` and `wait-work` with more
connections than the cap). What a child caches (small files) dies with it.
File bodies: read-and-send by default (--file-send sendfile to switch). Zero-copy
sendfile was the textbook pick, but on loopback a copying loop is faster for the
reason `threading` gives; `large-stream` with a `--file-send sendfile` server variant
compares the two on a quiet machine.
"""

from __future__ import annotations

import socket
import sys

from .runtime.blocking import serve_connection
from .runtime.context import ServerContext
from .runtime.workers import ChildProcesses

DEFAULT_MAX_CHILDREN = 64


def serve(ctx: ServerContext) -> None:
    cap = ctx.options.get("max_children", DEFAULT_MAX_CHILDREN)

    def child(sock: socket.socket) -> None:
        ctx.listener.close()  # only the parent accepts
        serve_connection(sock, ctx, use_sendfile=ctx.use_sendfile)

    children = ChildProcesses()
    warned = False
    try:
        for sock in ctx.accept_loop(wakeup_fd=children.wakeup_fd):
            try:
                children.start(child, sock)
            except OSError as exc:  # out of processes or memory: drop this client, keep serving
                print(f"forking: cannot fork: {exc}", file=sys.stderr, flush=True)
                children.wait(lambda: ctx.stopping, 0.1)  # a moment for children to exit
            sock.close()  # the child has its own descriptor; ours would keep the connection open
            if len(children) >= cap and not ctx.stopping:
                if not warned:
                    print(
                        f"forking: {cap} children alive (--max-children); new connections wait in the listen backlog",
                        file=sys.stderr,
                        flush=True,
                    )
                    warned = True
                children.wait(lambda: len(children) < cap or ctx.stopping)
        children.stop(ctx.limits.grace)
    finally:
        children.close()
