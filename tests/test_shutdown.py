"""Graceful shutdown for every model: responses in flight finish, idle connections close, exit 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from .conftest import VARIANTS
from .support import FILES, Client, content_for, sha


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_sigterm_during_a_download_lets_it_finish(fresh_server, variant):
    _id, model, args = variant
    srv = fresh_server(model, "--grace", "10", "--keepalive-timeout", "30", *args)
    expected = sha(content_for("big.bin", FILES["big.bin"]))
    with Client(srv.url, rcvbuf=32768, timeout=20) as busy:
        busy.send(busy.request_bytes("/big.bin"))
        first = busy.sock.recv(65536)  # the response is under way, most of it still unsent
        assert first.startswith(b"HTTP/1.1 200")
        srv.signal(signal.SIGTERM)
        time.sleep(0.3)
        rest = busy.read_until_close(limit=20)
    raw = first + rest
    _head, _, body = raw.partition(b"\r\n\r\n")
    assert sha(body) == expected, f"{_id}: got {len(body)} of {FILES['big.bin']} bytes after SIGTERM"
    assert srv.proc.wait(15) == 0
    assert "Traceback" not in srv.stderr_text()


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_sigterm_closes_idle_connections_and_stops_accepting(fresh_server, variant):
    _id, model, args = variant
    srv = fresh_server(model, "--grace", "10", "--keepalive-timeout", "30", *args)
    idle = Client(srv.url, timeout=10)
    try:
        assert idle.request("/one.bin").status == 200  # now idle in keep-alive
        started = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert srv.proc.wait(12) == 0
        # the idle connection was closed by the server, long before its 30 s keep-alive ran out
        assert idle.closed_by_peer(within=2)
        assert time.monotonic() - started < 11
    finally:
        idle.close()
    with pytest.raises(OSError):
        socket.create_connection((srv.host, srv.port), timeout=2).close()


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_grace_period_bounds_a_stalled_download(fresh_server, variant):
    """A client that stops reading cannot keep the server alive past the grace period."""
    _id, model, args = variant
    srv = fresh_server(model, "--grace", "1", "--write-timeout", "60", *args)
    with Client(srv.url, rcvbuf=16384, timeout=20) as stalled:
        stalled.send(stalled.request_bytes("/big.bin"))
        assert stalled.sock.recv(1024).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)  # the server is now blocked on a full socket buffer
        started = time.monotonic()
        srv.signal(signal.SIGTERM)
        code = srv.proc.wait(15)
        assert time.monotonic() - started < 8, f"{_id} outlived its 1 s grace period"
    assert code == 0


SUPERVISED = """
import os, signal, sys, time
from serverzoo.servers.runtime.workers import Supervisor

def worker(index):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit({status}))
    os.write(1, b"ready\\n")  # one write: lines from three processes do not interleave
    time.sleep(60)

sys.exit(Supervisor(2, worker, grace=5).run(on_started=lambda: os.write(1, b"started\\n")))
"""


@pytest.mark.parametrize("worker_status,expected", [(0, 0), (3, 1)], ids=["clean", "failed"])
def test_supervisor_exit_code_says_whether_every_worker_stopped_cleanly(worker_status, expected):
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISED.format(status=worker_status)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = sorted(proc.stdout.readline() for _ in range(3))  # both workers have their handler now
        assert lines == ["ready\n", "ready\n", "started\n"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == expected, err
    assert ("exited with status 3 while stopping" in err) == (worker_status == 3), err
