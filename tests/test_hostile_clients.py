"""What hostile clients must not be able to do to any model: make it log without bound,
stop it through a stderr nobody reads, or (event loops) overwhelm it with idle connections.
"""

from __future__ import annotations

import os
import socket
import time

import psutil
import pytest

from serverzoo.servers import MODELS, resolve

from .support import FILES, Client, content_for, open_fds, raise_nofile, settles_to, sha

# every model once, in its default shape (prefork with its own default worker count), and uvloop
EVERY_MODEL = [resolve(name) for name in [*MODELS, "asyncio-uvloop"]]
# the models that hold every connection of a process on one thread, without a cap
EVENT_LOOPS = [v for v in EVERY_MODEL if v.model.cpu_blocks and not v.model.bounded]
RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends a RST


def connect(srv, rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(20)
    s.connect((srv.host, srv.port))
    return s


def reset(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    s.close()


def abort_downloads(srv, count: int, batch: int = 40) -> None:
    """count clients that ask for a big file, read a little of it and reset the connection,
    batch at a time; every sixth sends half a request head instead."""
    done = 0
    while done < count:
        socks = [connect(srv, rcvbuf=16384) for _ in range(min(batch, count - done))]
        for i, s in enumerate(socks):
            s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n" if i % 6 else b"GET /big.bin HTT")
        for i, s in enumerate(socks):
            if i % 6:
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
            reset(s)
        done += len(socks)


@pytest.mark.slow
@pytest.mark.parametrize("variant", EVERY_MODEL, ids=[v.name for v in EVERY_MODEL])
def test_aborted_downloads_write_a_bounded_number_of_log_lines(start, variant):
    srv = start(variant.model.name, *variant.args)
    abort_downloads(srv, 1200)
    with Client(srv.url) as c:  # still serving, exact bytes
        r = c.request("/big.bin")
        assert r.status == 200 and sha(r.body) == sha(content_for("big.bin", FILES["big.bin"]))
    assert srv.stop(timeout=15) == 0
    lines = srv.stderr_text().splitlines()
    assert len(lines) <= 50, f"{variant.name} wrote {len(lines)} lines for 1,200 aborted downloads:\n" + "\n".join(
        lines[:20]
    )


def full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is already full, its write end blocking again (as a real stderr would be)."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        while True:
            os.write(w, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(w, True)
    return r, w


def lowest_free_descriptor(pid: int) -> int:
    """The number the process's next descriptor would get: as a soft limit, it allows none."""
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return min(set(range(len(used) + 1)) - used)


def server_nofile_limits(pid: int) -> dict[psutil.Process, tuple[int, int]]:
    """RLIMIT_NOFILE of the server and its children (prefork's workers; forking's
    per-connection children, which may exit while we look)."""
    proc = psutil.Process(pid)
    out = {}
    for p in [proc, *proc.children()]:
        try:
            out[p] = p.rlimit(psutil.RLIMIT_NOFILE)
        except (psutil.NoSuchProcess, FileNotFoundError):
            pass
    return out


def set_nofile(proc: psutil.Process, limits) -> None:
    try:
        proc.rlimit(psutil.RLIMIT_NOFILE, limits())
    except (psutil.NoSuchProcess, FileNotFoundError):
        pass  # a forking child whose connection has ended meanwhile


@pytest.mark.parametrize("variant", EVERY_MODEL, ids=[v.name for v in EVERY_MODEL])
def test_a_full_stderr_pipe_does_not_stop_the_server(start, variant):
    """Out of descriptors, every model reports it on stderr (rate-limited); with stderr a
    full pipe nobody reads, that report must not block the server."""
    r, w = full_pipe()
    try:
        srv = start(variant.model.name, *variant.args, stderr=w)
        with Client(srv.url) as c:
            assert c.request("/odd.bin").status == 200
        # no descriptor to spare: each accept() now fails with EMFILE and is reported
        limits = server_nofile_limits(srv.pid)
        procs = list(limits)
        for p in procs:
            set_nofile(p, lambda p=p: (lowest_free_descriptor(p.pid), limits[p][1]))
        # (a blocking accept() already waiting got its descriptor before the limit: it takes
        # the first, which closes after its response, so the next accept fails)
        triggers = [connect(srv) for _ in range(3)]
        for s in triggers:
            s.sendall(b"GET /one.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        time.sleep(1.0)  # accepts fail, are reported, back off
        for p in procs:
            set_nofile(p, lambda p=p: limits[p])
        for s in triggers:
            s.close()
        with Client(srv.url, timeout=10) as c:  # bounded: the back-off is at most a second
            r_ = c.request("/odd.bin")
            assert r_.status == 200 and r_.body == content_for("odd.bin", FILES["odd.bin"])
        assert srv.stop(timeout=15) == 0
    finally:
        os.close(r)
        os.close(w)


def request_all(socks: list[socket.socket], request: bytes, expected_tail: bytes) -> None:
    for s in socks:
        s.sendall(request)
    for i, s in enumerate(socks):
        data = b""
        while not data.endswith(expected_tail):
            chunk = s.recv(65536)
            assert chunk, f"connection {i} closed before its response"
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:60]


@pytest.mark.slow
@pytest.mark.parametrize("variant", EVENT_LOOPS, ids=[v.name for v in EVENT_LOOPS])
def test_ten_thousand_idle_connections_are_held_while_others_are_served(start, variant):
    idle_count = 10_000
    raise_nofile(idle_count + 200)
    srv = start(variant.model.name, "--keepalive-timeout", "120", "--header-timeout", "120", *variant.args)
    with Client(srv.url) as c:  # warm up: the loop's own descriptors are open once it has served
        assert c.request("/odd.bin").status == 200
    time.sleep(0.2)
    fds = open_fds(srv.pid)
    expected = content_for("page.txt", FILES["page.txt"])
    request = b"GET /page.txt HTTP/1.1\r\nHost: t\r\n\r\n"
    idle: list[socket.socket] = []
    try:
        for _ in range(idle_count):
            idle.append(connect(srv))
        request_all(idle, request, expected)  # each served once, now idle in keep-alive
        assert open_fds(srv.pid) >= fds + idle_count  # all of them really are held at once
        with Client(srv.url) as c:  # the others are served, exact bytes, with the idle set held
            for name in ("odd.bin", "mid.bin"):
                r = c.request("/" + name)
                assert r.status == 200 and sha(r.body) == sha(content_for(name, FILES[name]))
        request_all(idle[:: idle_count // 100], request, expected)  # and idle ones were kept alive
    finally:
        for s in idle:
            s.close()
    assert settles_to(srv.pid, fds, within=20) == fds  # each closed connection let go
