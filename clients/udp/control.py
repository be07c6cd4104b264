"""The tester's side of the conversation: target parsing, the connected socket, HELLO/REPORT
exchanges with retries, and the size warnings (socket buffers, path MTU)."""

from __future__ import annotations

import math
import os
import random
import select
import socket
import time
from urllib.parse import urlsplit

from . import wire

CONTROL_TIMEOUT_S = 0.3  # per attempt; control datagrams can be lost like any other
CONTROL_ATTEMPTS = 10
IP_MTU = getattr(socket, "IP_MTU", 14)  # Linux values; Python's socket module lacks them
IPV6_MTU = getattr(socket, "IPV6_MTU", 24)
# a datagram queued in a receive buffer costs its payload plus the kernel's skb overhead
SKB_OVERHEAD = 768


class UdpTestError(Exception):
    """A test could not run; the message is one line for the user."""


def parse_target(target: str) -> tuple[str, int]:
    """'udp://host:port/', 'host:port' or '[v6]:port' -> (host, port)."""
    text = target if "//" in target else f"udp://{target}"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("udp", "") or not parts.hostname or port is None:
        raise UdpTestError(f"target {target!r}: expected udp://HOST:PORT/ (as `udp serve` prints it) or HOST:PORT")
    return parts.hostname, port


def new_run_id() -> int:
    return random.getrandbits(32)


def connect_udp(host: str, port: int, sndbuf: int | None = None) -> socket.socket:
    """A connected, blocking UDP socket: send() goes to the target, ICMP errors surface here."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as exc:
        raise UdpTestError(f"cannot resolve {host}: {exc.strerror}") from None
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.connect(addr)
    return sock


def exchange(
    sock: socket.socket,
    kind: int,
    run: int,
    seq: int,
    body: dict | None,
    attempts: int = CONTROL_ATTEMPTS,
    timeout: float = CONTROL_TIMEOUT_S,
) -> dict:
    """Send a control request until its ANSWER (same run and seq) comes back; return the JSON.
    kind PING (body None) waits for the echo instead and returns {}: is anyone there?"""
    request = (
        wire.make(kind, run, seq, time.monotonic_ns())
        if body is None
        else wire.make_json(kind, run, seq, time.monotonic_ns(), body)
    )
    buf = bytearray(65536)
    for _ in range(attempts):
        try:
            sock.send(request)
        except ConnectionRefusedError:
            raise UdpTestError(
                f"nothing listens on udp://{_peer(sock)}/ (ICMP port unreachable); start `serverzoo udp serve` there"
            ) from None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            try:
                n = sock.recv_into(buf)
            except ConnectionRefusedError:
                raise UdpTestError(
                    f"nothing listens on udp://{_peer(sock)}/ (ICMP port unreachable); "
                    "start `serverzoo udp serve` there"
                ) from None
            hdr = wire.parse(memoryview(buf)[:n])
            if kind == wire.PING and hdr and hdr.kind == wire.PING and hdr.run == run and hdr.seq == seq:
                return {}
            if hdr and hdr.kind == wire.ANSWER and hdr.run == run and hdr.seq == seq:
                answer = wire.body_json(memoryview(buf)[:n])
                if answer is None:
                    raise UdpTestError("the responder answered with something that is not JSON")
                return answer
            if hdr and hdr.kind == kind and hdr.run == run:
                raise UdpTestError(
                    f"udp://{_peer(sock)}/ echoes instead of answering: it is a plain echo "
                    "server or `udp serve --mode echo`; stream tests need --mode both or sink"
                )
    raise UdpTestError(
        f"no answer from udp://{_peer(sock)}/ after {attempts} tries "
        f"({attempts * timeout:.1f} s): is `serverzoo udp serve` running there?"
    )


def _peer(sock: socket.socket) -> str:
    host, port = sock.getpeername()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def path_mtu(sock: socket.socket) -> int | None:
    """The kernel's path MTU for the connected peer (Linux), or None if it will not say."""
    try:
        if sock.family == socket.AF_INET6:
            return sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU)
        return sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
    except OSError:
        return None


def size_warnings(sock: socket.socket, size: int, peer_rcvbuf: int | None) -> list[str]:
    """Plain-language warnings about a datagram size on this path."""
    warnings = []
    family = 6 if sock.family == socket.AF_INET6 else 4
    mtu = path_mtu(sock)
    overhead = wire.IP_UDP_OVERHEAD[family]
    if mtu and size + overhead > mtu:
        per_fragment = (mtu - (overhead - 8)) // 8 * 8
        pieces = math.ceil((size + 8) / per_fragment)
        warnings.append(
            f"datagram of {size} B + {overhead} B of IP/UDP headers exceeds the path MTU ({mtu} B): "
            f"IP splits it into {pieces} fragments, and losing any one loses the whole datagram"
        )
    sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    if size > sndbuf:
        warnings.append(f"datagram of {size} B is larger than this socket's send buffer ({sndbuf} B)")
    if peer_rcvbuf:
        fit = peer_rcvbuf // (size + SKB_OVERHEAD)
        if fit < 1:
            warnings.append(
                f"datagram of {size} B does not fit the responder's receive buffer "
                f"({peer_rcvbuf} B): every one will be dropped"
            )
        elif fit < 8:
            warnings.append(
                f"the responder's receive buffer ({peer_rcvbuf} B) holds only ~{fit} datagrams of "
                f"{size} B: any pause of the responder loses datagrams"
            )
    return warnings


def check_size(size: int) -> None:
    if size < wire.HEADER_SIZE:
        raise UdpTestError(
            f"--size {size}: a datagram carries a {wire.HEADER_SIZE}-byte header, so at least {wire.HEADER_SIZE}"
        )
    if size > wire.MAX_DATAGRAM:
        raise UdpTestError(f"--size {size}: UDP over IPv4 carries at most {wire.MAX_DATAGRAM} bytes")


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system
