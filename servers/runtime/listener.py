"""Creating the listening socket and announcing it."""

from __future__ import annotations

import socket
import sys


def make_listener(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
    """A bound, listening TCP socket (IPv4 or IPv6 by the host's form), blocking."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        # accepted sockets inherit TCP_NODELAY from the listener on Linux (see tune_connection)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def announce_ready(sock: socket.socket) -> None:
    """One line on stdout, flushed, so scripts and tests wait for it instead of polling."""
    sys.stdout.write(f"READY {url_of(sock)}\n")
    sys.stdout.flush()


NODELAY_INHERITED = sys.platform.startswith("linux")  # a listener's TCP_NODELAY passes to accepted sockets


def tune_connection(sock: socket.socket) -> None:
    """Small responses go out at once; Nagle would hold a head back waiting for an ACK.

    On Linux the socket already has TCP_NODELAY from the listener, which saves a
    system call per connection; elsewhere it is set here.
    """
    if NODELAY_INHERITED:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (a UNIX socket in a test) or already closed
