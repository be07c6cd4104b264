"""Badly behaved clients held open during a run, to show what they do to the well-behaved ones.

- idle: connect and send nothing (a browser's spare connection, a port scanner);
- slow readers: request a large file and read it at a fixed byte rate through a small
  receive buffer, so the server's writes block (a phone on a bad network);
- slow senders: dribble the request head one byte at a time (slowloris).

Each reconnects when the server drops it, so the pressure lasts the whole run; what
happened (connections, server closes, bytes, responses) is counted for the report.
Their latencies are never mixed into the measured ones.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from time import monotonic

RECONNECT_DELAY = 0.05
SLOW_READER_RCVBUF = 4096


class _Conn(asyncio.Protocol):
    """Hands every event to its owner."""

    def __init__(self, owner: _Adversary) -> None:
        self.owner = owner
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.owner.on_data(self, data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.on_lost(self, exc)


class _Adversary:
    kind = ""

    def __init__(self, run, stats: dict) -> None:
        self.run = run
        self.loop = run.loop
        self.stats = stats
        self.conn: _Conn | None = None
        self.stopped = False
        self.task: asyncio.Task | None = None
        self.connected_at = 0.0

    def start(self) -> None:
        self.task = self.loop.create_task(self._connect())

    def _sock(self) -> socket.socket:
        sock = socket.socket(self.run.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        return sock

    async def _connect(self) -> None:
        sock = self._sock()
        try:
            await asyncio.wait_for(
                self.loop.sock_connect(sock, (self.run.address, self.run.port)), self.run.connect_timeout_s
            )
            conn = _Conn(self)
            await self.loop.create_connection(lambda: conn, sock=sock)
        except (TimeoutError, OSError):
            sock.close()
            self.stats["connect_failures"] += 1
            self._later()
            return
        except asyncio.CancelledError:
            sock.close()
            return
        self.conn = conn
        self.connected_at = monotonic()
        self.stats["connects"] += 1
        self.on_connected(conn)

    def _later(self) -> None:
        if not self.stopped:
            self.loop.call_later(RECONNECT_DELAY, self.start)

    def on_connected(self, conn: _Conn) -> None:
        pass

    def on_data(self, conn: _Conn, data: bytes) -> None:
        pass

    def on_lost(self, conn: _Conn, exc: Exception | None) -> None:
        if self.stopped:
            return
        self.stats["closed_by_server"] += 1
        self.stats["held_s"] += monotonic() - self.connected_at
        self.conn = None
        self._later()

    def stop(self) -> None:
        self.stopped = True
        if self.task is not None:
            self.task.cancel()
        if self.conn is not None:
            self.stats["held_s"] += monotonic() - self.connected_at
            self.stats["open_at_end"] += 1
            self.conn.transport.abort()


class IdleClient(_Adversary):
    kind = "idle"


class SlowReader(_Adversary):
    """GET the target again and again, reading at most `rate` bytes per second."""

    kind = "slow_readers"

    def __init__(self, run, stats: dict, target, rate: float) -> None:
        super().__init__(run, stats)
        self.target = target
        self.rate = rate
        self.head = b""
        self.remaining = -1  # body bytes left, -1 while reading the head

    def _sock(self) -> socket.socket:
        sock = super()._sock()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READER_RCVBUF)
        return sock

    def on_connected(self, conn: _Conn) -> None:
        self._request(conn)

    def _request(self, conn: _Conn) -> None:
        self.head, self.remaining = b"", -1
        conn.transport.write(self.target.request)

    def on_data(self, conn: _Conn, data: bytes) -> None:
        self.stats["bytes"] += len(data)
        conn.transport.pause_reading()
        self.loop.call_later(len(data) / self.rate, self._resume, conn)
        while data:
            if self.remaining < 0:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                data = self.head[end + 4 :]
                head = self.head[:end].lower()
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    self.remaining = 1 << 62  # read until the server closes
                else:
                    stop = head.find(b"\r\n", at + 17)
                    self.remaining = int(head[at + 17 : stop if stop >= 0 else len(head)])
            take = min(len(data), self.remaining)
            self.remaining -= take
            data = data[take:]
            if self.remaining == 0:
                self.stats["responses"] += 1
                if not self.stopped:
                    self._request(conn)

    def _resume(self, conn: _Conn) -> None:
        if not self.stopped and conn is self.conn and not conn.transport.is_closing():
            conn.transport.resume_reading()


class SlowSender(_Adversary):
    """Send the request head one byte every `interval` seconds, then read whatever comes back."""

    kind = "slow_senders"

    def __init__(self, run, stats: dict, target, interval: float) -> None:
        super().__init__(run, stats)
        self.request = target.request
        self.interval = interval
        self.sent = 0
        self.reply = b""

    def on_connected(self, conn: _Conn) -> None:
        self.sent, self.reply = 0, b""
        self._dribble(conn)

    def _dribble(self, conn: _Conn) -> None:
        if self.stopped or conn is not self.conn or conn.transport.is_closing():
            return
        conn.transport.write(self.request[self.sent : self.sent + 1])
        self.sent += 1
        self.stats["bytes_sent"] += 1
        if self.sent < len(self.request):
            self.loop.call_later(self.interval, self._dribble, conn)
        else:
            self.stats["heads_completed"] += 1

    def on_data(self, conn: _Conn, data: bytes) -> None:
        if not self.reply:
            self.reply = data
            parts = data.split(b" ", 2)
            status = parts[1].decode("latin-1") if len(parts) > 1 and parts[1].isdigit() else "?"
            self.stats["statuses"][status] += 1
            self.stats["responses"] += 1


def new_stats() -> dict:
    return {
        "idle": {
            "connections": 0,
            "connects": 0,
            "connect_failures": 0,
            "closed_by_server": 0,
            "open_at_end": 0,
            "held_s": 0.0,
        },
        "slow_readers": {
            "connections": 0,
            "connects": 0,
            "connect_failures": 0,
            "closed_by_server": 0,
            "open_at_end": 0,
            "held_s": 0.0,
            "responses": 0,
            "bytes": 0,
            "rate_bytes_per_s": 0.0,
        },
        "slow_senders": {
            "connections": 0,
            "connects": 0,
            "connect_failures": 0,
            "closed_by_server": 0,
            "open_at_end": 0,
            "held_s": 0.0,
            "bytes_sent": 0,
            "heads_completed": 0,
            "responses": 0,
            "statuses": Counter(),
        },
    }


def start_adversaries(
    run,
    idle: int,
    slow_readers: int,
    slow_senders: int,
    read_target,
    read_rate: float,
    send_target,
    send_interval: float,
) -> tuple[list[_Adversary], dict]:
    stats = new_stats()
    made: list[_Adversary] = []
    for _ in range(idle):
        made.append(IdleClient(run, stats["idle"]))
    for _ in range(slow_readers):
        made.append(SlowReader(run, stats["slow_readers"], read_target, read_rate))
    for _ in range(slow_senders):
        made.append(SlowSender(run, stats["slow_senders"], send_target, send_interval))
    stats["idle"]["connections"] = idle
    stats["slow_readers"]["connections"] = slow_readers
    stats["slow_readers"]["rate_bytes_per_s"] = read_rate
    stats["slow_senders"]["connections"] = slow_senders
    for a in made:
        a.start()
    return made, stats


def merge_stats(many: list[dict]) -> dict:
    """Add the adversary counters of several workers."""
    total = new_stats()
    for stats in many:
        for kind, values in stats.items():
            for key, value in values.items():
                if key == "statuses":
                    total[kind][key].update(value)
                elif key == "rate_bytes_per_s":
                    total[kind][key] = value
                else:
                    total[kind][key] += value
    for kind in total.values():
        if "statuses" in kind:
            kind["statuses"] = dict(kind["statuses"])
        kind["held_s"] = round(kind["held_s"], 3)
    return total
