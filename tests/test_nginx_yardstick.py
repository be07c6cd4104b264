"""The nginx yardstick holds as many connections as a scenario opens.

A worker closes a connection at once when it already holds worker_connections, so
a scenario with thousands of idle clients would measure nginx churning through
reconnects. The runner raises the figure to what the scenario opens; this checks
that nginx then really holds more than its default, on a real nginx.
"""

from __future__ import annotations

import resource
import socket
from collections.abc import Iterator

import pytest

from serverzoo.bench.nginx import CONNECTIONS, NginxServer, nginx_binary
from serverzoo.clients.loadgen.corpus import write_corpus

from .support import world_readable_dir

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")

HELD = CONNECTIONS + 500  # past the default, which this nginx must not close


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    with world_readable_dir("serverzoo-nginx-yardstick-") as path:
        write_corpus(path, ["1KiB"])
        yield path


def test_worker_connections_leave_room_and_never_fall_below_the_default(root: str) -> None:
    assert "worker_connections 8192;" in NginxServer(root, connections=100).config_text()
    text = NginxServer(root, connections=10_000).config_text()
    assert "worker_connections 20000;" in text  # twice: nginx reuses idle connections when few are free
    assert "worker_rlimit_nofile" in text


def test_nginx_holds_more_idle_connections_than_its_default(root: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = HELD + 256
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    held: list[socket.socket] = []
    try:
        with NginxServer(root, cpus=None, connections=HELD + 1) as ngx:
            for _ in range(HELD):
                s = socket.create_connection(("127.0.0.1", ngx.port), timeout=5)
                held.append(s)
            with socket.create_connection(("127.0.0.1", ngx.port), timeout=5) as s:
                s.sendall(b"GET /1KiB.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
            closed = 0
            for s in held:
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        closed += 1
                except BlockingIOError:
                    pass  # still open, as an idle keep-alive connection should be
            assert closed == 0, f"nginx closed {closed} of {HELD} idle connections"
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
