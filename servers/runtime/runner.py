"""Start a model: listener, READY line, signals, optional worker processes, clean exit."""

from __future__ import annotations

import gc
import signal
import socket
from collections.abc import Callable

from .. import get_model
from .context import ServerConfig, ServerContext
from .listener import announce_ready, make_listener
from .stderr_log import install as install_bounded_stderr
from .workers import Supervisor


def install_shutdown_signals(ctx: ServerContext) -> None:
    """SIGTERM and SIGINT begin a graceful stop. Event-loop models may replace these
    with their loop's own signal handling, calling ctx.request_shutdown the same way."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: ctx.request_shutdown())


def serve_in_this_process(
    config: ServerConfig,
    listener: socket.socket,
    on_ready: Callable[[], None] | None = None,
    *,
    shares_listener: bool = False,
) -> None:
    model = get_model(config.model).load()
    ctx = ServerContext(config, listener, shares_listener=shares_listener)
    install_shutdown_signals(ctx)
    if on_ready is not None:
        on_ready()
    # Everything alive now (modules, the model's imports, the core's tables) lives as long
    # as the process: move it out of the collector's generations, so a full collection
    # walks only what serving created, and forked workers do not write to the shared
    # pages by touching those objects' GC headers.
    gc.freeze()
    model.serve(ctx)
    # blocking models return once accepting stopped; let responses in flight finish
    ctx.connections.wait_closed(ctx.limits.grace)


def run_server(config: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code."""
    install_bounded_stderr()  # before any worker forks: every process of the server inherits it
    info = get_model(config.model)
    listener = make_listener(config.host, config.port, backlog=config.backlog)
    try:
        if config.workers > 1 or info.supervised:

            def worker(_index: int) -> None:
                serve_in_this_process(config, listener, shares_listener=True)

            sup = Supervisor(config.workers, worker, config.limits.grace)
            return sup.run(on_started=lambda: announce_ready(listener))
        serve_in_this_process(config, listener, on_ready=lambda: announce_ready(listener))
        return 0
    finally:
        listener.close()
