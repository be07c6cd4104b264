"""`serverzoo udp serve`: the other end of every `udp test`.

One selectors loop in one thread serves:
- a UDP socket. DATA datagrams are counted per (client address, run) in a
  ReceiverStats (the "sink"); HELLO and REPORT are answered with JSON (the sink's
  view of the run, and this socket's kernel drop count); PING and anything foreign
  (not our format: empty, garbage, oversized) is echoed back unchanged (the "echo").
  --mode echo echoes everything (a plain echo server); --mode sink echoes nothing.
- a TCP listener on the same port number, for the TCP side of the comparison. The
  first byte a client sends picks the role: b"E" echoes the rest of the connection
  back, b"S" counts bytes until the client shuts down its side, then answers
  "BYTES SPAN_NS\\n" (what arrived, first byte to end) and closes.

Every buffer and table is bounded (sessions, connections, bytes queued per
connection), every datagram is handled whatever its content, and SIGTERM/SIGINT stop
the loop within its 0.2 s tick.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import socket
import sys
import time
from collections import OrderedDict

from . import wire
from .receiver_stats import ReceiverStats

MODES = ("both", "echo", "sink")
MAX_SESSIONS = 16  # runs tracked at once; the least recently used is dropped
MAX_TCP_CONNECTIONS = 256
TCP_QUEUE_LIMIT = 1 << 20  # echo bytes queued for a slow reader before we stop reading
TCP_IDLE_S = 60.0
UDP_BATCH = 512  # datagrams drained per wake-up, so TCP is not starved
TICK_S = 0.2


def udp_socket_drops(sock: socket.socket) -> int | None:
    """The kernel's count of datagrams this socket dropped (receive buffer full), from /proc/net/udp*."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    name = "/proc/net/udp6" if sock.family == socket.AF_INET6 else "/proc/net/udp"
    try:
        with open(name) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 12 and fields[9] == inode:
                    return int(fields[-1])
    except (OSError, ValueError):
        pass
    return None


class _TcpConn:
    __slots__ = ("closing", "count", "events", "fd", "first_ns", "last_active", "out", "role", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.role = b""  # b"E" echo, b"S" sink, b"" not chosen yet
        self.out = bytearray()
        self.count = 0
        self.first_ns = 0
        self.last_active = time.monotonic()
        self.closing = False  # close once out is sent
        self.events = selectors.EVENT_READ


class Responder:
    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, mode: str = "both", tcp: bool = True, rcvbuf: int | None = None
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.host, self.port, self.mode, self.tcp, self.rcvbuf = host, port, mode, tcp, rcvbuf
        self.udp: socket.socket | None = None
        self.listener: socket.socket | None = None
        self.sessions: OrderedDict[tuple, tuple[ReceiverStats, int | None]] = OrderedDict()
        self.conns: dict[int, _TcpConn] = {}
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self.counters = {
            "datagrams": 0,
            "foreign": 0,
            "echoed": 0,
            "reply_errors": 0,
            "tcp_connections": 0,
            "tcp_refused": 0,
        }
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)

    # -- setup -------------------------------------------------------------------------
    def open(self) -> Responder:
        family, _, _, _, addr = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )[0]
        # with port 0, the TCP port must match the UDP one: retry if another program holds it
        for _attempt in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.rcvbuf:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            try:
                udp.bind(addr)
            except OSError:
                udp.close()
                raise
            port = udp.getsockname()[1]
            if not self.tcp:
                break
            try:
                self.listener = self._tcp_listener(family, (addr[0], port, *tuple(addr[2:])))
                break
            except OSError as exc:
                udp.close()
                if self.port != 0 or exc.errno != errno.EADDRINUSE:
                    raise
        else:
            raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")
        udp.setblocking(False)
        self.udp = udp
        self.port = port
        self.sel.register(udp, selectors.EVENT_READ, None)
        if self.listener is not None:
            self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        return self

    @staticmethod
    def _tcp_listener(family: int, addr: tuple) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    @property
    def url(self) -> str:
        host = self.udp.getsockname()[0] if self.udp else self.host
        return f"udp://[{host}]:{self.port}/" if ":" in host else f"udp://{host}:{self.port}/"

    def request_stop(self) -> None:
        self.stopping = True

    # -- loop --------------------------------------------------------------------------
    def run(self, max_seconds: float | None = None) -> None:
        deadline = time.monotonic() + max_seconds if max_seconds else None
        last_sweep = time.monotonic()
        try:
            while not self.stopping:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                for key, mask in self.sel.select(TICK_S):
                    if key.data is None:
                        self._drain_udp()
                    elif key.data == "accept":
                        self._accept()
                    else:
                        self._tcp_event(key.data, mask)
                now = time.monotonic()
                if now - last_sweep > 1.0:
                    last_sweep = now
                    for conn in [c for c in self.conns.values() if now - c.last_active > TCP_IDLE_S]:
                        self._close(conn)
        finally:
            self.close()

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        for sock in (self.udp, self.listener):
            if sock is not None:
                try:
                    self.sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()
        self.udp = self.listener = None
        self.sel.close()

    # -- UDP ---------------------------------------------------------------------------
    def _drain_udp(self) -> None:
        sock, buf, view = self.udp, self._buf, self._view
        magic = wire.MAGIC
        for _ in range(UDP_BATCH):
            try:
                n, addr = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. an ICMP error queued on the socket: nothing to read now
            now = time.monotonic_ns()
            self.counters["datagrams"] += 1
            if n >= wire.HEADER_SIZE and buf[0:4] == magic:
                _, kind, run, seq, sent = wire.HEADER.unpack_from(buf)
                if kind == wire.DATA and self.mode != "echo":
                    self._session(addr, run)[0].record(seq, sent, now, n)
                    continue
                if kind == wire.HELLO and self.mode != "echo":
                    self._answer_hello(addr, run, seq)
                    continue
                if kind == wire.REPORT and self.mode != "echo":
                    self._answer_report(addr, run, seq, view[:n])
                    continue
                if kind == wire.ANSWER:
                    self.counters["foreign"] += 1
                    continue  # never answer an answer: two responders could ping-pong forever
            else:
                self.counters["foreign"] += 1
            if self.mode != "sink":
                self._reply(view[:n], addr)
                self.counters["echoed"] += 1

    def _reply(self, data: bytes | memoryview, addr) -> None:
        try:
            self.udp.sendto(data, addr)
        except OSError:
            self.counters["reply_errors"] += 1  # full send buffer, unreachable: UDP drops it

    def _session(self, addr, run: int, reset: bool = False) -> tuple[ReceiverStats, int | None]:
        key = (addr, run)
        entry = self.sessions.get(key)
        if entry is None or reset:
            entry = (ReceiverStats(), udp_socket_drops(self.udp))
            self.sessions[key] = entry
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
        self.sessions.move_to_end(key)
        return entry

    def _socket_info(self) -> dict:
        return {
            "rcvbuf": self.udp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            "mode": self.mode,
            "tcp": self.listener is not None,
        }

    def _answer_hello(self, addr, run: int, seq: int) -> None:
        # a repeated HELLO (the answer was lost) must not wipe DATA already counted
        if (addr, run) not in self.sessions:
            self._session(addr, run)
        self._reply(wire.make_json(wire.ANSWER, run, seq, time.monotonic_ns(), self._socket_info()), addr)

    def _answer_report(self, addr, run: int, seq: int, data: memoryview) -> None:
        body = wire.body_json(data) or {}
        sent = body.get("sent")
        sent = sent if isinstance(sent, int) and sent >= 0 else None
        entry = self.sessions.get((addr, run))
        if entry is None:
            answer = {"error": "unknown run (no HELLO or DATA seen from this address)"}
        else:
            stats, drops_at_start = entry
            drops_now = udp_socket_drops(self.udp)
            answer = stats.summary(sent)
            answer["socket_drops"] = (
                drops_now - drops_at_start if drops_now is not None and drops_at_start is not None else None
            )
            answer.update(self._socket_info())
        self._reply(wire.make_json(wire.ANSWER, run, seq, time.monotonic_ns(), answer), addr)

    # -- TCP ---------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and friends: try again on the next wake-up
            if len(self.conns) >= MAX_TCP_CONNECTIONS:
                self.counters["tcp_refused"] += 1
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _TcpConn(sock)
            self.conns[conn.fd] = conn
            self.counters["tcp_connections"] += 1
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _tcp_event(self, conn: _TcpConn, mask: int) -> None:
        conn.last_active = time.monotonic()
        if mask & selectors.EVENT_READ and not conn.closing:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._close(conn)
                return
            if data is not None:
                self._tcp_data(conn, data)
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
                del conn.out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close(conn)
                return
        if conn.closing and not conn.out:
            self._close(conn)
            return
        self._update_interest(conn)

    def _tcp_data(self, conn: _TcpConn, data: bytes) -> None:
        if not data:  # the client shut down its side
            if conn.role == b"S":
                span = time.monotonic_ns() - conn.first_ns if conn.first_ns else 0
                conn.out += f"{conn.count} {span}\n".encode()
            conn.closing = True
            return
        if not conn.role:
            conn.role, data = data[:1], data[1:]
            if conn.role not in (b"E", b"S"):
                conn.closing = True  # not our protocol
                return
            conn.first_ns = time.monotonic_ns()
        if conn.role == b"E":
            conn.out += data
        else:
            conn.count += len(data)

    def _update_interest(self, conn: _TcpConn) -> None:
        events = 0
        if not conn.closing and len(conn.out) < TCP_QUEUE_LIMIT:
            events |= selectors.EVENT_READ
        if conn.out:
            events |= selectors.EVENT_WRITE
        events = events or selectors.EVENT_WRITE
        if events != conn.events:  # epoll_ctl only when interest changes
            conn.events = events
            try:
                self.sel.modify(conn.sock, events, conn)
            except (KeyError, ValueError):
                pass

    def _close(self, conn: _TcpConn) -> None:
        self.conns.pop(conn.fd, None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()


def serve(host: str, port: int, mode: str, tcp: bool, rcvbuf: int | None, max_seconds: float | None) -> int:
    """Run until SIGTERM/SIGINT (or max_seconds); print the READY line once listening."""
    responder = Responder(host, port, mode, tcp, rcvbuf)
    responder.open()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: responder.request_stop())
    sys.stdout.write(f"READY {responder.url}\n")
    sys.stdout.flush()
    responder.run(max_seconds)
    sys.stderr.write("serverzoo udp serve: stopped; " + json.dumps(responder.counters) + "\n")
    return 0
