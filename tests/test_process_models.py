"""Risks of the thread- and process-based models that the conformance suite does not reach.

forking: zombies, the cap on children. prefork: a dead worker is replaced, SIGTERM
leaves nothing behind. threadpool/threading: descriptors and threads do not leak when
clients abort downloads. All of them: a long backend wait does not hold up a file
request, and their documented bound (threads, children, workers) really is the bound.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from typing import Callable

import psutil
import pytest

from .support import FILES, Client, content_for, open_fds, sha

QUICK = ("--keepalive-timeout", "30", "--header-timeout", "30", "--grace", "5")


def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def children_of(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children()


def zombies_of(pid: int) -> int:
    count = 0
    for child in children_of(pid):
        try:
            count += child.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
    return count


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def one_request(url: str, target: str = "/one.bin") -> bytes:
    with Client(url, timeout=10) as c:
        return c.request(target, headers=[("Host", "t"), ("Connection", "close")]).body


def has_data(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


# -- forking ---------------------------------------------------------------------------

def test_forking_leaves_no_zombies_after_200_short_connections(fresh_server):
    srv = fresh_server("forking", "--max-children", "1000", *QUICK)  # the cap is not what this tests
    errors: list[str] = []

    def client(n: int) -> None:
        for _ in range(n):
            try:
                assert one_request(srv.url) == content_for("one.bin", 1)
            except Exception as exc:  # reported below
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(50,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert errors == []
    # every child has exited and been reaped: none left as a zombie, none still alive
    assert wait_until(lambda: not children_of(srv.pid), 5), \
        f"{len(children_of(srv.pid))} children left, {zombies_of(srv.pid)} of them zombies"


def test_forking_cap_makes_new_clients_wait_in_the_backlog(fresh_server):
    srv = fresh_server("forking", "--max-children", "2", *QUICK)
    holders = [Client(srv.url, timeout=10) for _ in range(2)]
    waiting = None
    try:
        for c in holders:
            assert c.request("/one.bin").status == 200  # each now holds a child, idle in keep-alive
        assert len(children_of(srv.pid)) == 2
        waiting = Client(srv.url, timeout=10)  # the kernel completes the handshake from the backlog
        waiting.send(waiting.request_bytes("/odd.bin"))
        assert not wait_until(lambda: has_data(waiting.sock), 1.0), "a third client was served past the cap"
        assert len(children_of(srv.pid)) == 2
        holders[0].close()  # its child exits; the parent accepts the waiting client
        r = waiting.read_response()
        assert r.status == 200 and r.body == content_for("odd.bin", FILES["odd.bin"])
        assert "--max-children" in srv.stderr_text()
    finally:
        for c in holders + ([waiting] if waiting else []):
            c.close()


# -- prefork ---------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_prefork_worker_that_dies_is_replaced(fresh_server, sig):
    srv = fresh_server("prefork", "--workers", "2", *QUICK)
    before = {p.pid for p in children_of(srv.pid)}
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, sig)  # SIGTERM to one worker must stop that worker only, not its siblings

    def replaced() -> bool:
        now = {p.pid for p in children_of(srv.pid)}
        return len(now) == 2 and victim not in now

    assert wait_until(replaced, 5), "the worker was not replaced"
    after = {p.pid for p in children_of(srv.pid)}
    assert victim not in after and len(after - before) == 1
    for _ in range(20):  # new connections, spread over both workers
        assert one_request(srv.url, "/odd.bin") == content_for("odd.bin", FILES["odd.bin"])
    assert "starting a new one" in srv.stderr_text()
    assert "Traceback" not in srv.stderr_text()


def test_prefork_sigterm_stops_every_worker_before_the_parent_exits(fresh_server):
    srv = fresh_server("prefork", "--workers", "3", *QUICK)
    workers = [p.pid for p in children_of(srv.pid)]
    assert len(workers) == 3
    with Client(srv.url, timeout=10) as idle:
        assert idle.request("/one.bin").status == 200  # one worker holds an idle keep-alive client
        srv.signal(signal.SIGTERM)
        assert srv.proc.wait(10) == 0
        assert idle.closed_by_peer(within=1)
    alive = [pid for pid in workers if psutil.pid_exists(pid)]
    assert alive == [], f"workers outlived the parent: {alive}"
    assert "Traceback" not in srv.stderr_text()


# -- no leaks after aborted downloads ---------------------------------------------------

def abort_download(url: str, reset: bool) -> None:
    c = Client(url, timeout=10, rcvbuf=16384)
    c.send(c.request_bytes("/big.bin"))
    c.sock.recv(10000)
    if reset:  # RST with most of the body unsent; otherwise a plain FIN with unread data
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()


@pytest.mark.parametrize("model,args", [("threading", ()), ("threadpool", ("--pool", "4")), ("forking", ())],
                         ids=["threading", "threadpool", "forking"])
def test_aborted_downloads_leak_no_descriptors_or_threads(fresh_server, model, args):
    srv = fresh_server(model, *QUICK, *args)
    one_request(srv.url, "/big.bin")  # warm up whatever is created on first use
    assert wait_until(lambda: not children_of(srv.pid), 5)
    fds, threads = open_fds(srv.pid), threads_of(srv.pid)
    clients = [threading.Thread(target=abort_download, args=(srv.url, i % 2 == 0)) for i in range(24)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(20)
    body = one_request(srv.url, "/big.bin")  # still serving, whole files
    assert sha(body) == sha(content_for("big.bin", FILES["big.bin"]))
    settled = wait_until(lambda: (open_fds(srv.pid), threads_of(srv.pid)) == (fds, threads)
                         and not children_of(srv.pid), 10)
    assert settled, (f"fds {fds} -> {open_fds(srv.pid)}, threads {threads} -> {threads_of(srv.pid)}, "
                     f"children {len(children_of(srv.pid))}")


# -- concurrency, and its bound -----------------------------------------------------------

CONCURRENT = [("threadpool", ()), ("forking", ()), ("prefork", ("--workers", "2"))]
BOUNDED_TO_ONE = [("threadpool", ("--pool", "1")), ("forking", ("--max-children", "1")),
                  ("prefork", ("--workers", "1"))]


def start_long_wait(url: str, wait_ms: int) -> Client:
    slow = Client(url, timeout=20)
    slow.send(slow.request_bytes(f"/_/work?wait={wait_ms}", headers=[("Host", "t"), ("Connection", "close")]))
    time.sleep(0.2)  # let the server take it up before the file request arrives
    return slow


@pytest.mark.parametrize("model,args", CONCURRENT, ids=[m for m, _ in CONCURRENT])
def test_long_wait_does_not_delay_a_file_request(fresh_server, model, args):
    srv = fresh_server(model, *QUICK, *args)
    with start_long_wait(srv.url, 4000) as slow:
        body = one_request(srv.url, "/mid.bin")
        assert sha(body) == sha(content_for("mid.bin", FILES["mid.bin"]))
        assert not has_data(slow.sock), "the file was only served after the 4 s wait ended"
        r = slow.read_response()
    assert r.status == 200 and r.body == b"cpu=0 wait_ms=4000\n"


@pytest.mark.parametrize("model,args", BOUNDED_TO_ONE, ids=[f"{m}{a[0]}=1" for m, a in BOUNDED_TO_ONE])
def test_at_its_bound_a_long_wait_does_delay_a_file_request(fresh_server, model, args):
    """The documented breakdown: with one thread/child/worker, the file waits behind the wait."""
    srv = fresh_server(model, *QUICK, *args)
    with start_long_wait(srv.url, 1500) as slow:
        with Client(srv.url, timeout=20) as fast:
            fast.send(fast.request_bytes("/one.bin"))
            assert slow.read_response().body == b"cpu=0 wait_ms=1500\n"
            assert fast.read_response().body == content_for("one.bin", 1)


# -- shutdown while at capacity ------------------------------------------------------------

AT_CAPACITY = [("threadpool", ("--pool", "2")), ("forking", ("--max-children", "2"))]


@pytest.mark.parametrize("model,args", AT_CAPACITY, ids=[m for m, _ in AT_CAPACITY])
def test_sigterm_while_at_capacity_exits_promptly(fresh_server, model, args):
    # a grace longer than the wait below: exiting in time means idle clients were closed, not waited for
    srv = fresh_server(model, *QUICK, *args, "--grace", "30")
    holders = [Client(srv.url, timeout=10) for _ in range(2)]
    try:
        for c in holders:
            assert c.request("/one.bin").status == 200  # idle in keep-alive, holding the pool
        queued = Client(srv.url, timeout=10)  # waits in the backlog
        queued.send(queued.request_bytes("/one.bin"))
        time.sleep(0.3)
        srv.signal(signal.SIGTERM)
        assert srv.proc.wait(10) == 0
        for c in holders:
            assert c.closed_by_peer(within=1)
        # the queued client was never accepted: the kernel resets it when the listener closes
        assert queued.closed_by_peer(within=1)
        queued.close()
    finally:
        for c in holders:
            c.close()
    assert "Traceback" not in srv.stderr_text()
