"""Request/response latency: the same small request over UDP, over one TCP connection kept
alive, and over a fresh TCP connection each time, interleaved round-robin so that a noisy,
shared machine slows all three alike. The gap between "tcp fresh" and "tcp keep-alive" is
the handshake (and teardown) cost; the gap between keep-alive and UDP is what TCP's stream
machinery costs once connected."""

from __future__ import annotations

import socket
import struct
import time

from . import wire
from .control import UdpTestError, check_size, connect_udp, exchange, new_run_id

UDP_TIMEOUT_S = 1.0  # an unanswered UDP request counts as lost after this
TCP_TIMEOUT_S = 5.0  # SYN loss costs 1 s, data loss at least 200 ms: leave room for both
PERCENTILES = (50, 90, 99, 99.9)


def percentiles(values_ms: list[float]) -> dict:
    """Exact nearest-rank percentiles (no histogram rounding), plus min, max, mean."""
    if not values_ms:
        return {"count": 0}
    ordered = sorted(values_ms)
    n = len(ordered)
    out = {"count": n, "min": ordered[0], "max": ordered[-1], "mean": sum(ordered) / n}
    for p in PERCENTILES:
        rank = max(1, -(-p * n // 100))  # ceil(p/100 * n), 1-based
        out[f"p{p:g}"] = ordered[int(rank) - 1]
    return out


class _Udp:
    name, proto, connection = "udp", "udp", "datagram"

    def __init__(self, host: str, port: int, size: int) -> None:
        self.sock = connect_udp(host, port)
        self.run = new_run_id()
        # one PING first: a clear error if nothing answers (any echo server will do)
        exchange(self.sock, wire.PING, self.run, 0, None)
        # a kernel receive timeout: one recv() per reply, where a Python timeout adds a poll() each time
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100_000))
        self.request = bytearray(size)
        self.reply = bytearray(65536)
        self.seq = 0
        self.times: list[float] = []
        self.failures = 0

    def once(self) -> None:
        self.seq += 1
        start = time.perf_counter()
        wire.HEADER.pack_into(self.request, 0, wire.MAGIC, wire.PING, self.run, self.seq, time.monotonic_ns())
        try:
            self.sock.send(self.request)
        except OSError:
            self.failures += 1
            return
        deadline = start + UDP_TIMEOUT_S
        while time.perf_counter() < deadline:
            try:
                n = self.sock.recv_into(self.reply)
            except BlockingIOError:
                continue  # the 100 ms receive timeout: check the deadline
            except OSError:
                break
            if n >= wire.HEADER_SIZE:
                magic, kind, run, seq, _ = wire.HEADER.unpack_from(self.reply)
                if magic == wire.MAGIC and kind == wire.PING and run == self.run and seq == self.seq:
                    self.times.append((time.perf_counter() - start) * 1e3)
                    return
            # a late answer to an earlier, already counted-as-lost request: skip it
        self.failures += 1

    def close(self) -> None:
        self.sock.close()


class _TcpKeepAlive:
    name, proto, connection = "tcp keep-alive", "tcp", "keep-alive"

    def __init__(self, host: str, port: int, size: int) -> None:
        self.addr = _tcp_addr(host, port)
        self.payload = bytes(size)
        self.size = size
        self.times: list[float] = []
        self.failures = 0
        self.sock: socket.socket | None = None
        self.connect_ms: float | None = None

    def _connect(self) -> None:
        start = time.perf_counter()
        self.sock = _tcp_connect(self.addr)
        self.sock.sendall(b"E")
        self.connect_ms = (time.perf_counter() - start) * 1e3

    def once(self) -> None:
        try:
            if self.sock is None:
                self._connect()  # not timed in the request: that is the point of keep-alive
            start = time.perf_counter()
            self.sock.sendall(self.payload)
            _recv_exactly(self.sock, self.size)
            self.times.append((time.perf_counter() - start) * 1e3)
        except OSError:
            self.failures += 1
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _TcpFresh:
    name, proto, connection = "tcp fresh connection", "tcp", "fresh"

    def __init__(self, host: str, port: int, size: int) -> None:
        self.addr = _tcp_addr(host, port)
        self.payload = b"E" + bytes(size)
        self.size = size
        self.times: list[float] = []
        self.connect_times: list[float] = []
        self.failures = 0

    def once(self) -> None:
        start = time.perf_counter()
        try:
            with _tcp_connect(self.addr) as sock:
                connected = time.perf_counter()
                sock.sendall(self.payload)
                _recv_exactly(sock, self.size)
                done = time.perf_counter()
        except OSError:
            self.failures += 1
            return
        self.times.append((done - start) * 1e3)
        self.connect_times.append((connected - start) * 1e3)

    def close(self) -> None:
        pass


def _tcp_addr(host: str, port: int) -> tuple:
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UdpTestError(f"cannot resolve {host}: {exc.strerror}") from None
    return family, addr


def _tcp_connect(family_addr: tuple) -> socket.socket:
    family, addr = family_addr
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(TCP_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> None:
    got = 0
    while got < size:
        part = sock.recv(min(65536, size - got))
        if not part:
            raise ConnectionResetError("the responder closed the connection")
        got += len(part)


def run_roundtrip(host: str, port: int, size: int, count: int, duration: float, tcp: bool = True) -> dict:
    """Up to `count` requests of each kind, stopping after `duration` seconds, round-robin."""
    check_size(size)
    clients = [_Udp(host, port, size)]
    if tcp:
        try:
            probe = _tcp_connect(_tcp_addr(host, port))
            probe.close()
        except OSError as exc:
            clients[0].close()
            raise UdpTestError(
                f"no TCP listener at {host}:{port} ({exc.strerror or exc}): start the responder "
                "without --no-tcp, or pass --udp-only"
            ) from None
        clients += [_TcpKeepAlive(host, port, size), _TcpFresh(host, port, size)]
    deadline = time.monotonic() + duration
    done = 0
    try:
        while done < count and time.monotonic() < deadline:
            for client in clients:
                client.once()
            done += 1
    finally:
        for client in clients:
            client.close()
    results = []
    for client in clients:
        entry = {
            "proto": client.proto,
            "connection": client.connection,
            "size": size,
            "requests": done,
            "failed": client.failures,
            "rtt_ms": percentiles(client.times),
        }
        if isinstance(client, _TcpFresh):
            entry["connect_ms"] = percentiles(client.connect_times)
        if isinstance(client, _TcpKeepAlive):
            entry["connect_ms_once"] = client.connect_ms
        results.append(entry)
    return {"rounds": done, "results": results}
