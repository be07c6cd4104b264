"""Threads for the blocking models that leave SIGTERM and SIGINT to the main thread.

A Python signal handler runs in the main thread, but the kernel may deliver a process's
signal to any of its threads. When a connection thread takes it, CPython only notes it,
and a main thread blocked in accept() sleeps on: the server does not stop until the next
connection arrives. A thread started here has the shutdown signals blocked from its first
instruction (it inherits the mask it was started under), so the kernel delivers them to
the main thread, whose accept() returns EINTR and runs the handler.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

SHUTDOWN_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def start_thread(target: Callable[..., object], *args: Any, name: str | None = None, **kwargs: Any) -> threading.Thread:
    """Start a daemon thread running target(*args, **kwargs) that never receives a shutdown signal.

    Daemon: one still busy after the grace period must not keep the process from exiting.
    """
    thread = threading.Thread(target=target, args=args, kwargs=kwargs, name=name, daemon=True)
    # a signal that arrives while the mask is on waits, pending, until it is lifted
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return thread
