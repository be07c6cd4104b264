"""What every model is handed: the listener, the core, the limits, and shutdown state."""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ...protocol import Docroot, FileApp, HttpConnection, Limits
from ...protocol.responses import HeadWriter
from .. import get_model
from .accepting import AcceptBackoff
from .clock import http_date
from .listener import tune_connection
from .wakeup import drain_fd, signal_wakeup


@dataclass
class ServerConfig:
    model: str
    root: str
    host: str = "127.0.0.1"
    port: int = 0
    backlog: int = 1024
    workers: int = 1  # processes, each running the model on the shared listener
    limits: Limits = field(default_factory=Limits)
    parse_cache: bool = True  # reuse the parse of byte-identical request heads (protocol/connection.py)
    options: dict[str, Any] = field(default_factory=dict)  # model-specific, from --option NAME=VALUE


class ServerContext:
    """Shared state of one server process. Models read it; the runtime drives shutdown."""

    def __init__(
        self,
        config: ServerConfig,
        listener: socket.socket,
        docroot: Docroot | None = None,
        *,
        shares_listener: bool = False,
    ):
        self.config = config
        self.listener = listener
        # True in a worker process: sibling processes accept on this same socket
        self.shares_listener = shares_listener
        self._accepting_in_main_thread = False
        self.limits = config.limits
        self.options = config.options
        # --file-send, else the model's own default (the registry's trait)
        self.use_sendfile = config.options.get("file_send", get_model(config.model).file_send) == "sendfile"
        self.server_name = f"serverzoo-{config.model}"
        self.app = FileApp(
            docroot
            or Docroot(
                config.root, small_file_bytes=config.limits.small_file_bytes, cache_bytes=config.limits.cache_bytes
            )
        )
        self.stopping = False
        self.connections = ConnectionTracker()
        self._writer = HeadWriter(self.server_name, http_date)  # shared: it holds no per-connection state

    def new_connection(self) -> HttpConnection:
        """A fresh sans-IO connection for one accepted socket."""
        return HttpConnection(
            self.app,
            self.server_name,
            http_date,
            max_head=self.limits.max_head_bytes,
            parse_cache=self.config.parse_cache,
            writer=self._writer,
        )

    # -- shutdown ------------------------------------------------------------------------
    def request_shutdown(self) -> None:
        """Stop accepting, and close idle keep-alive connections; safe in a signal handler.

        A process with the listener to itself shuts it down: accept() fails from then on
        (EINVAL on Linux), also in another thread. A worker sharing it with sibling
        processes must not: shutdown() acts on the socket, not the descriptor, and would
        stop every sibling too. There accept_loop's descriptor is closed instead (the loop
        then sees ctx.stopping when its poll returns), and a model that accepts in its own
        event loop stops accepting itself (unregister the listener from its loop, then close it).
        """
        if self.stopping:
            return
        self.stopping = True
        try:
            if not self.shares_listener:
                self.listener.shutdown(socket.SHUT_RDWR)
            elif self._accepting_in_main_thread:
                # this handler runs in the main thread, whose accept() the signal just
                # interrupted; that accept() retries on a closed descriptor and fails at once
                self.listener.close()
        except OSError:
            pass
        self.connections.drain()
        # the backstop: whatever is still sending when the grace period is over is cut
        # (a blocking model's main thread may itself be the one sending it)
        timer = threading.Timer(self.limits.grace + 0.5, self._grace_expired)
        timer.daemon = True
        timer.start()

    def _grace_expired(self) -> None:
        sys.stderr.write(f"serverzoo: grace period over, cutting {len(self.connections)} connection(s)\n")
        sys.stderr.flush()
        os._exit(0)

    def accept_loop(self, wakeup_fd: int | None = None) -> Iterator[socket.socket]:
        """Yield accepted, tuned, blocking sockets until shutdown is requested.

        Between connections the main thread waits in poll() on the listener and a signal
        wake-up descriptor, never in a blocking accept(): a signal that lands just before
        accept() blocks (the thread preempted on its way in) would leave its handler
        waiting for the next client, while the byte the signal writes to the wake-up
        descriptor ends the wait whenever it came. wakeup_fd: the descriptor the caller
        already gave signal.set_wakeup_fd (ChildProcesses'); otherwise the loop sets its own.
        """
        in_main_thread = threading.current_thread() is threading.main_thread()
        with ExitStack() as stack:
            waits = select.poll()
            if in_main_thread:  # only the main thread may set a wake-up fd
                if wakeup_fd is None:
                    wakeup_fd = stack.enter_context(signal_wakeup()).fileno()
                waits.register(wakeup_fd, select.POLLIN)
                waits.register(self.listener, select.POLLIN)
                self.listener.setblocking(False)
            # only from here may a signal close a shared listener: a signal before this
            # leaves it open and shows in ctx.stopping, which the loop checks first
            self._accepting_in_main_thread = in_main_thread
            yield from self._accepted(waits, wakeup_fd)

    def _accepted(self, waits: select.poll, wakeup_fd: int | None) -> Iterator[socket.socket]:
        backoff = AcceptBackoff()
        while not self.stopping:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                waits.poll()  # a client, or a signal (whose handler has run by the time poll returns)
                if wakeup_fd is not None:
                    drain_fd(wakeup_fd)
                continue
            except OSError as exc:
                if self.stopping:
                    break
                time.sleep(backoff.pause_after(exc))
                continue
            backoff.accepted()
            tune_connection(sock)
            yield sock
        try:
            self.listener.close()
        except OSError:
            pass


class ConnectionTracker:
    """Live connections of the blocking models, so shutdown can close the idle ones
    and wait for the busy ones (thread-safe; one per process)."""

    def __init__(self) -> None:
        # reentrant: drain() runs in a signal handler in the main thread, which in the
        # iterative and process models may itself be between add() and remove() when the signal lands
        self._lock = threading.RLock()
        self._idle_changed = threading.Condition(self._lock)
        self._live: dict[socket.socket, list[Any]] = {}  # sock -> [conn, idle]
        self._draining = False
        self._waiters = 0  # threads in wait_closed: only then does remove() notify

    def add(self, sock: socket.socket, conn: HttpConnection) -> list[Any]:
        """Track a connection until remove(sock); returns its [conn, idle] state to update.

        (Two calls rather than a context manager: a suspended generator per connection
        is memory that thousands of idle greenlets or threads would each hold.)
        """
        state = [conn, True]
        with self._lock:
            self._live[sock] = state
            if self._draining:
                conn.draining = True
        return state

    def remove(self, sock: socket.socket) -> None:
        with self._lock:
            self._live.pop(sock, None)
            if self._waiters:
                self._idle_changed.notify_all()

    def drain(self) -> None:
        """Mark every connection to close after its response; wake the idle ones now.

        Called from a signal handler. Taking the lock is safe there: it is reentrant for
        the main thread, and other threads hold it only for a dict update. (Giving up
        when it was busy would leave idle clients to their keep-alive timeout.)
        """
        self._draining = True
        with self._lock:
            items = list(self._live.items())
        for sock, state in items:
            state[0].draining = True
            if state[1]:  # waiting for a request: make recv() return b"" now
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def wait_closed(self, timeout: float) -> bool:
        """Wait until no connection is live; False if some were still busy at the deadline."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._waiters += 1
            try:
                while self._live:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._idle_changed.wait(left)
            finally:
                self._waiters -= 1
        return True

    def __len__(self) -> int:
        return len(self._live)
