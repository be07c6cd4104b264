"""The descriptors an event loop watches: epoll itself, or a selectors selector behind the same calls."""

from __future__ import annotations

import select
import selectors
from collections.abc import Callable

FD_SETSIZE = 1024  # select(2) cannot watch a descriptor at or above this (a fixed-size bitmap)


class Poller:
    """register / modify / unregister / poll / close over descriptors, by kind: "epoll" uses
    select.epoll directly with the descriptor as key (the selectors module wraps each
    registration and event in Python objects); "poll" and "select" go through selectors.
    fd_ceiling is the first descriptor the kind cannot watch."""

    register: Callable[[int, int], object]
    modify: Callable[[int, int], object]
    unregister: Callable[[int], object]
    poll: Callable[[float | None], list[tuple[int, int]]]
    close: Callable[[], None]

    def __init__(self, kind: str) -> None:
        if kind == "epoll" and hasattr(select, "epoll"):
            ep = select.epoll()
            self.register, self.modify, self.unregister, self.poll, self.close = (
                ep.register,
                ep.modify,
                ep.unregister,
                ep.poll,
                ep.close,
            )
            self.READ, self.WRITE = select.EPOLLIN, select.EPOLLOUT
            self.fd_ceiling = float("inf")
            return
        sel = selectors.SelectSelector() if kind == "select" else selectors.PollSelector()
        self.register, self.modify, self.unregister, self.close = sel.register, sel.modify, sel.unregister, sel.close
        self.poll = lambda timeout: [(key.fd, events) for key, events in sel.select(timeout)]
        self.READ, self.WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
        self.fd_ceiling = FD_SETSIZE if kind == "select" else float("inf")
