"""A transport for a socket the asyncio model accepted itself, made without a task where the loop allows.

The public way to hand an accepted socket to an asyncio loop, connect_accepted_socket,
is a coroutine: a task and a future per connection, around one call to the loop's
private ``_make_socket_transport(sock, protocol)``. On the stdlib loop the asyncio
model makes that call itself. The guard against a Python upgrade: the method is looked
up once, at start, and must take (sock, protocol) positionally; if it is gone or its
signature changed, the server says so on stderr and uses connect_accepted_socket, as
it always does on uvloop (slower per connection, the same behaviour).
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
from collections.abc import Callable
from typing import cast

MakeTransport = Callable[[socket.socket, asyncio.BaseProtocol], object]


def takes_sock_and_protocol(method: object) -> bool:
    """Whether the stdlib loop's private transport factory still has the shape used here."""
    if not callable(method):
        return False
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 and [p.name for p in params[:2]] == ["sock", "protocol"]


def transport_maker(loop: asyncio.AbstractEventLoop, stdlib: bool) -> MakeTransport:
    """The call that gives an accepted socket its transport, with protocol attached.

    stdlib: the loop is asyncio's own, so its private factory may be used (see the
    module docstring); otherwise connect_accepted_socket, in a task.
    """
    private = getattr(loop, "_make_socket_transport", None)
    if stdlib and takes_sock_and_protocol(private):
        return cast(MakeTransport, private)
    if stdlib:
        print(
            "serverzoo: no loop._make_socket_transport(sock, protocol); using connect_accepted_socket", file=sys.stderr
        )

    def connect(sock: socket.socket, protocol: asyncio.BaseProtocol) -> object:
        return loop.create_task(loop.connect_accepted_socket(lambda: protocol, sock))

    return connect
