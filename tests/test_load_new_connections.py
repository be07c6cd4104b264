"""A new connection per request (the raw-socket path): counts, verification and errors as on the
other paths; loopback source addresses; a one-line explanation when local ports run out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from serverzoo.clients.loadgen import LoadOptions, run_load
from serverzoo.clients.loadgen.corpus import write_corpus
from serverzoo.clients.loadgen.options import OptionError
from serverzoo.clients.loadgen.ports import LoopbackSources, explain_no_local_port
from serverzoo.clients.loadgen.raw_sockets import start_connect

from .load_helpers import MisbehavingServer, refused_port


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("new-conn-corpus"))
    write_corpus(root, ["1KiB", "64KiB"], seed=3)
    return root


def load(url: str, **kw) -> dict:
    kw.setdefault("workers", 1)
    return run_load(LoadOptions(url=url, conn_mode="new", **kw))


@pytest.mark.parametrize(
    "behaviour, file, errors",
    [
        ("ok", "1KiB.bin", {"total": 0}),
        ("ok", "64KiB.bin", {"total": 0}),  # arrives in pieces: the general path takes over
        ("chunked", "64KiB.bin", {"total": 0}),
        ("http10", "64KiB.bin", {"total": 0}),
        ("close", "1KiB.bin", {"total": 0}),
        ("corrupt", "1KiB.bin", {"total": 3, "corrupt_body": 3}),
        ("corrupt", "64KiB.bin", {"total": 3, "corrupt_body": 3}),
        ("short", "64KiB.bin", {"total": 30, "short_body": 30}),
        ("reset", "1KiB.bin", {"total": 30, "reset": 30}),
    ],
)
def test_new_connections_frame_verify_and_classify(corpus: str, behaviour: str, file: str, errors: dict) -> None:
    with MisbehavingServer(behaviour, os.path.join(corpus, file), n=10) as srv:
        doc = load(srv.url + file, corpus=corpus, connections=3, requests=30)
        seen = srv.stop()
    assert doc["errors"] == errors
    assert doc["requests"] == 30 - errors["total"]
    assert doc["body_bytes"] == doc["requests"] * os.path.getsize(os.path.join(corpus, file))
    assert seen == 30, "exactly one request per connection, and exactly the requests asked for"


def test_refused_and_timed_out(corpus: str) -> None:
    doc = load(f"http://127.0.0.1:{refused_port()}/x", connections=2, requests=10)
    assert doc["errors"] == {"total": 10, "connect_refused": 10}
    with MisbehavingServer("silent", os.path.join(corpus, "1KiB.bin")) as srv:
        doc = load(srv.url + "1KiB.bin", connections=2, requests=4, timeout_s=0.3)
    assert doc["errors"] == {"total": 4, "read_timeout": 4}


def time_wait_with(port: int) -> int:
    """TCP sockets in TIME_WAIT (state 06 of /proc/net/tcp) with this local or remote port."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, remote, state = line.split()[1:4]
            if state == "06" and port in (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)):
                count += 1
    return count


def test_timed_run_against_a_real_server(corpus: str) -> None:
    """The known response is counted byte for byte, and every connection ends in a reset: neither side
    keeps one in TIME_WAIT (the server closes first, so an orderly close would leave it there)."""
    from serverzoo.servers.launch import ServerProcess

    with ServerProcess("select", corpus) as srv:
        doc = load(srv.url + "1KiB.bin", corpus=corpus, connections=4, duration=0.5, verify_every=1)
        port = srv.port
        assert time_wait_with(port) == 0
    assert doc["errors"] == {"total": 0} and doc["requests"] > 100
    assert doc["body_bytes"] == doc["requests"] * 1024 and doc["latency_us"]["count"] == doc["requests"]
    assert doc["client"]["cpu_us_per_request"] > 0 and doc["client"]["cpu_us_per_mb"] > 0


@pytest.mark.parametrize("conn_mode", ["new", "keepalive"])
def test_timed_runs_find_a_bad_body_among_known_responses(corpus: str, conn_mode: str) -> None:
    """Timed runs of one target take the batched fast paths; one response in ten has a flipped byte."""
    path = os.path.join(corpus, "1KiB.bin")
    with MisbehavingServer("corrupt", path, n=10) as srv:
        doc = run_load(
            LoadOptions(
                url=srv.url + "1KiB.bin", corpus=corpus, conn_mode=conn_mode, connections=3, duration=0.4, workers=1
            )
        )
        seen = srv.stop()
    bad = doc["errors"]["total"]
    assert doc["errors"] == {"total": bad, "corrupt_body": bad} and doc["requests"] > 0
    # the server spoiled every tenth response it sent (seen // 10); the measured window holds a run of at
    # least twenty of them, so some of the bad ones, and no more than were sent
    assert doc["requests"] + bad >= 20 and 1 <= bad <= seen // 10
    assert doc["body_bytes"] == doc["requests"] * 1024 and doc["latency_us"]["count"] == doc["requests"]


class PeerRecorder:
    """A listener answering every request with an empty 200 and noting each peer's address."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/x"
        self.peers: set[str] = set()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            self.peers.add(peer[0])
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with conn:
            data = b""
            try:
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                    while b"\r\n\r\n" in data:
                        head, _, data = data.partition(b"\r\n\r\n")
                        closing = b"connection: close" in head.lower()
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                            + (b"Connection: close\r\n" if closing else b"")
                            + b"\r\n"
                        )
                        if closing:
                            return
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize("conn_mode", ["new", "keepalive"])
def test_loopback_sources_spread_the_connections(conn_mode: str) -> None:
    server = PeerRecorder()
    try:
        doc = run_load(
            LoadOptions(url=server.url, conn_mode=conn_mode, connections=4, requests=40, workers=1, loopback_sources=4)
        )
    finally:
        server.close()
    assert doc["errors"] == {"total": 0} and doc["requests"] == 40
    assert server.peers == {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"}


def test_loopback_sources_need_a_loopback_server() -> None:
    with pytest.raises(OptionError, match="127"):
        LoadOptions(url="http://192.0.2.1/x", loopback_sources=4).validate()
    with pytest.raises(OptionError, match="loopback-sources must be"):
        LoadOptions(url="http://127.0.0.1/x", loopback_sources=1 << 24).validate()


def test_loopback_source_addresses() -> None:
    s = LoopbackSources(3)
    assert [s.next() for _ in range(4)] == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]
    whole = LoopbackSources((1 << 24) - 2, start=(1 << 24) - 3)
    assert [whole.next(), whole.next()] == ["127.255.255.254", "127.0.0.1"]
    assert LoopbackSources(1000, start=256).next() == "127.0.1.1"


def test_the_explanation_says_what_ran_out_and_what_to_change() -> None:
    line = explain_no_local_port(123, 0)
    assert "\n" not in line and line.startswith("123 connects found no free local port")
    assert "ip_local_port_range" in line and "--loopback-sources" in line


def test_running_out_of_local_ports_is_explained(corpus: str) -> None:
    """In a private network namespace with four local ports, eight keep-alive connections cannot all open."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here (needs root and unshare)")
    script = (
        "ip link set lo up && echo '40000 40003' > /proc/sys/net/ipv4/ip_local_port_range && "
        f"exec {sys.executable} -m serverzoo load /1KiB.bin --serve select --corpus {corpus} "
        "-c 8 -w 1 -d 0.6 --quiet"
    )
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 1, proc.stderr  # some requests failed
    explained = [line for line in (proc.stdout + proc.stderr).splitlines() if "no free local port" in line]
    assert len(explained) == 1, proc.stdout + proc.stderr
    assert "ports 40000-40003 (4 per source address)" in explained[0]


@pytest.mark.parametrize("ack_with_request", [True, False])
def test_the_handshake_ack_waits_for_the_request_only_when_asked(ack_with_request: bool) -> None:
    """Asked to, the connecting socket holds its last handshake ACK back for the request (TCP_DEFER_ACCEPT on
    the connecting side); either way the server gets the connection and the request whole."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        sock = start_connect(socket.AF_INET, listener.getsockname(), None, ack_with_request)
        try:
            held = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
            sock.setblocking(True)
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            conn, _peer = listener.accept()
            with conn:
                assert conn.recv(100) == b"GET / HTTP/1.1\r\n\r\n"
        finally:
            sock.close()
    finally:
        listener.close()
    assert bool(held) is ack_with_request
