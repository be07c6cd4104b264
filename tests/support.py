"""Test helpers: a corpus with known bytes, and an HTTP client independent of our core.

Responses are parsed with h11, a different HTTP implementation from the servers'
(httptools/llhttp), so a framing bug in the core cannot hide behind the same bug in
the client.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import psutil
import pytest

FILES = {  # name -> size; contents are deterministic pseudo-random bytes
    "empty.bin": 0,
    "one.bin": 1,
    "odd.bin": 12_345,
    "mid.bin": 1_000_003,
    "big.bin": 5 * 1024 * 1024 + 7,
    "page.txt": 700,
    "sub/nested.bin": 4_321,
    "with space.txt": 11,
    "ünïcode.txt": 13,
}
SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT\n"


def one_scenario_plan(scenario: Any, servers: dict[str, Any]) -> Any:
    """A BenchPlan of one scenario: one repetition, server and generator both on CPU 0, a 1 KiB
    corpus, for tests that run its cells with CellRunner."""
    from serverzoo.bench.plan import BenchPlan
    from serverzoo.bench.scenarios import CorpusSpec, RunSettings

    return BenchPlan(
        preset="t",
        servers=servers,
        scenarios={scenario.name: scenario},
        repeat=1,
        run=RunSettings(0.1, 0.01, ()),
        corpus=CorpusSpec(seed=1, files=("1KiB",)),
        server_cpus=[0],
        client_cpus=[0],
    )


@contextmanager
def world_readable_dir(prefix: str) -> Iterator[str]:
    """A temporary folder nginx's workers (which run as nobody) can read, removed afterwards."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def content_for(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    out = bytearray()
    block = seed
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def make_corpus(base: str) -> str:
    """Build root/ (served) and outside/ (must never be served) under base; return root."""
    root = os.path.join(base, "root")
    outside = os.path.join(base, "outside")
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    os.makedirs(os.path.join(root, "emptydir"), exist_ok=True)
    os.makedirs(os.path.join(root, "_"), exist_ok=True)  # shadowed by the reserved prefix
    os.makedirs(outside, exist_ok=True)
    for name, size in FILES.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(content_for(name, size))
    with open(os.path.join(root, "_", "work"), "wb") as f:
        f.write(b"a file that must never shadow the work endpoint\n")
    with open(os.path.join(outside, "secret.txt"), "wb") as f:
        f.write(SECRET)
    os.symlink(os.path.join(outside, "secret.txt"), os.path.join(root, "link_out"))
    os.symlink(outside, os.path.join(root, "dir_out"))
    os.symlink("odd.bin", os.path.join(root, "link_in"))
    os.mkfifo(os.path.join(root, "pipe"))
    return root


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    version: str


class Client:
    """One TCP connection; send raw bytes or requests, read responses with h11."""

    def __init__(self, url: str, timeout: float = 15.0, rcvbuf: int | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((self.host, self.port))
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request_bytes(
        self, target: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None, version: str = "1.1"
    ) -> bytes:
        hs = headers if headers is not None else [("Host", "test")]
        lines = [f"{method} {target} HTTP/{version}"] + [f"{k}: {v}" for k, v in hs]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def request(
        self, target: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None, version: str = "1.1"
    ) -> Response:
        self.send(self.request_bytes(target, method, headers, version))
        return self.read_response(method, version)

    def read_response(self, method: str = "GET", version: str = "1.1") -> Response:
        conn = h11.Connection(h11.CLIENT)
        conn.send(
            h11.Request(method=method, target="/", headers=[("Host", "test")])
        )  # h11 only speaks 1.1; the framing is the same
        conn.send(h11.EndOfMessage())
        status, headers, body, resp_version = 0, {}, bytearray(), ""
        if self.buf:
            conn.receive_data(self.buf)
            self.buf = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(256 * 1024)
                conn.receive_data(data)
                if not data and conn.their_state is h11.SEND_BODY:
                    raise ConnectionError("connection closed mid-body")
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                resp_version = event.http_version.decode()
                for k, v in event.headers:
                    key = k.decode().lower()
                    headers[key] = headers[key] + ", " + v.decode() if key in headers else v.decode()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("connection closed before a response")
        self.buf = bytes(conn.trailing_data[0])
        return Response(status, headers, bytes(body), resp_version)

    def read_until_close(self, limit: float = 10.0) -> bytes:
        out = bytearray(self.buf)
        self.buf = b""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            out += data
        return bytes(out)

    def closed_by_peer(self, within: float) -> bool:
        """True if the server closes the connection (EOF or reset) within `within` seconds."""
        self.sock.settimeout(within)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return data == b""


def raw_exchange(url: str, data: bytes, timeout: float = 10.0, half_close: bool = False) -> bytes:
    """Send bytes, then read until the server closes (for requests that end the connection).

    half_close: shut our side for writing after the request, as some clients do; the
    server must still answer.
    """
    with Client(url, timeout=timeout) as c:
        c.send(data)
        if half_close:
            c.sock.shutdown(socket.SHUT_WR)
        return c.read_until_close(timeout)


def check_variant_serves(url: str) -> None:
    """A short conformance pass for server variants the main suite does not start
    (another selector, file-send mode or pool size): exact bytes, a range, a pipeline
    mixing files, a wait and an error, and the 408 of an unfinished head.
    The server must run with --header-timeout 1."""
    with Client(url) as c:
        for name in ("empty.bin", "one.bin", "odd.bin", "mid.bin", "big.bin"):
            r = c.request("/" + name)
            assert r.status == 200 and sha(r.body) == sha(content_for(name, FILES[name])), name
        big = content_for("big.bin", FILES["big.bin"])
        r = c.request("/big.bin", headers=[("Host", "t"), ("Range", "bytes=3000001-4500000")])
        assert r.status == 206 and r.body == big[3_000_001:4_500_001]
        targets = ["/odd.bin", "/_/work?wait=50", "/mid.bin", "/missing", "/one.bin"]
        c.send(b"".join(c.request_bytes(t) for t in targets))
        got = [c.read_response() for _ in targets]
        assert [r.status for r in got] == [200, 200, 200, 404, 200]
        assert got[2].body == content_for("mid.bin", FILES["mid.bin"])
    with Client(url) as c:
        c.send(b"GET /odd.bin HTTP/1.1\r\nHost: t\r\n")
        assert c.read_until_close(limit=10).startswith(b"HTTP/1.1 408")


def open_fds(pid: int) -> int:
    """How many descriptors the process has open (Linux /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def server_tree(pid: int) -> list[psutil.Process]:
    """The server process and its live descriptors' owners: workers, per-connection children."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _each_alive(pid: int, measure) -> list[int]:
    out = []
    for p in server_tree(pid):
        try:
            out.append(measure(p))
        except (psutil.NoSuchProcess, FileNotFoundError):
            pass  # a child that exited between the listing and the reading
    return out


def tree_fds(pid: int) -> int:
    """Descriptors open in the server's whole process tree."""
    return sum(_each_alive(pid, lambda p: open_fds(p.pid)))


def tree_threads(pid: int) -> int:
    """Threads in the server's whole process tree."""
    return sum(_each_alive(pid, lambda p: p.num_threads()))


def tree_cpu(pid: int) -> float:
    """User CPU seconds of the server's live processes."""
    return sum(_each_alive(pid, lambda p: p.cpu_times().user))


def tree_max_rss(pid: int) -> int:
    """The largest resident set among the server's processes."""
    return max(_each_alive(pid, lambda p: p.memory_info().rss), default=0)


def settles_to(pid: int, expected: int, within: float = 10.0, count=tree_fds) -> int:
    """Poll `count` (descriptors in the server's process tree) until it is down to `expected`;
    return the last count."""
    deadline = time.monotonic() + within
    now = count(pid)
    while now > expected and time.monotonic() < deadline:
        time.sleep(0.05)
        now = count(pid)
    return now


def check_stalled_reader_is_dropped(srv) -> None:
    """For a server started with --write-timeout 1: a client that asks for much and reads
    nothing neither grows the server's memory nor keeps its connection past the timeout."""
    with Client(srv.url) as c:  # warm up: the loop is running, lazily opened descriptors are open
        assert c.request("/big.bin").status == 200
    time.sleep(0.2)
    fds = tree_fds(srv.pid)
    rss_limit = tree_max_rss(srv.pid) + 64 * 1024 * 1024
    c = Client(srv.url, rcvbuf=16384)
    try:
        # 50 pipelined downloads of 5 MiB, never read: back-pressure must keep the server
        # from buffering them, and the write timeout must make it let go of the client
        c.send(b"".join(c.request_bytes("/big.bin") for _ in range(50)))
        time.sleep(0.5)
        assert tree_max_rss(srv.pid) < rss_limit
        # closed by the server while we still hold it open (a per-connection child may have
        # exited since the count before, so at most as many as then)
        assert settles_to(srv.pid, fds) <= fds
    finally:
        c.close()


def raise_nofile(wanted: int) -> None:
    """Lift this test process's descriptor limit to `wanted`, or skip if the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {wanted} descriptors this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
