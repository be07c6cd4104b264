"""What belongs to one model's own mechanism, beyond the traits test_model_traits.py covers.

forking: zombies and the cap on children. prefork: a dead worker is replaced, SIGTERM leaves
no worker behind. The caps under SIGTERM. select: the FD_SETSIZE ceiling of select() as a
clean refusal; the event loops hold a thousand connections. gevent and trio: out of
descriptors they back off, shutdown finishes what is in flight within the grace, trio reads
cold files off the loop, and gevent stays inside its own process: no monkey-patching anywhere.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import psutil
import pytest

from serverzoo.servers import resolve

from .support import FILES, Client, check_variant_serves, content_for, open_fds, raise_nofile, settles_to

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
    assert wait_until(lambda: not children_of(srv.pid), 5), (
        f"{len(children_of(srv.pid))} children left, {zombies_of(srv.pid)} of them zombies"
    )


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


def read_small_response(sock: socket.socket) -> bytes:
    """Read one response with a Content-Length body from a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def connect_many(url: str, count: int) -> list[socket.socket]:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection((host, int(port)), timeout=20)
            socks.append(s)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


# -- many connections ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["select", "asyncio-uvloop"])
def test_a_thousand_keep_alive_connections_are_all_served(start, name):
    raise_nofile(4096)
    server = resolve(name)
    srv = start(server.model.name, "--keepalive-timeout", "30", *server.args)
    expected = content_for("page.txt", FILES["page.txt"])
    request = b"GET /page.txt HTTP/1.1\r\nHost: t\r\n\r\n"
    socks = connect_many(srv.url, 1000)
    try:
        for round_ in range(2):  # the second round proves every connection was kept alive
            for s in socks:
                s.sendall(request)
            for i, s in enumerate(socks):
                raw = read_small_response(s)
                assert raw.startswith(b"HTTP/1.1 200"), f"round {round_}, connection {i}: {raw[:60]!r}"
                assert raw.endswith(expected)
        assert open_fds(srv.pid) >= 1000  # all of them really were open at once
    finally:
        for s in socks:
            s.close()


def test_select_selector_refuses_beyond_fd_setsize_and_keeps_serving(start):
    raise_nofile(4096)
    srv = start("select", "--selector", "select", "--keepalive-timeout", "30")
    socks = connect_many(srv.url, 1100)
    try:
        outcomes = {"200": 0, "503": 0, "closed": 0}
        for s in socks:
            try:
                s.sendall(b"GET /one.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                raw = read_small_response(s)
            except (ConnectionResetError, BrokenPipeError):
                raw = b""
            key = raw[9:12].decode() if raw.startswith(b"HTTP/1.1 ") else "closed"
            assert key in outcomes, raw[:80]
            outcomes[key] += 1
        assert outcomes["200"] >= 1000, outcomes  # everything select() can watch is served
        assert outcomes["503"] + outcomes["closed"] > 0, outcomes  # the rest is turned away...
        assert outcomes["503"] > 0, outcomes  # ...with a 503 that says why
    finally:
        for s in socks:
            s.close()
    # the loop sees each close in its own time: until it has, a new connection's descriptor
    # would be beyond FD_SETSIZE too, and rightly refused
    assert settles_to(srv.pid, 64, within=20) <= 64
    with Client(srv.url) as c:  # and the loop is still alive
        assert c.request("/odd.bin").status == 200


# -- model options the conformance suite does not start serve the same bytes ---------------------

OPTIONS = [("select", ("--selector", "poll")), ("select", ("--selector", "select")), ("gevent", ("--pool", "4"))]


@pytest.mark.parametrize("model,args", OPTIONS, ids=[f"{m}{a[0]}={a[1]}" for m, a in OPTIONS])
def test_a_model_option_serves_exact_bytes_ranges_and_pipelines(start, model, args):
    srv = start(model, "--header-timeout", "1", *args)
    check_variant_serves(srv.url)


# -- gevent and trio --------------------------------------------------------------------------

GREEN = ["gevent", "trio"]


@pytest.mark.parametrize("model", GREEN)
def test_out_of_descriptors_the_server_backs_off_then_serves_everyone(start, model):
    srv = start(model, "--keepalive-timeout", "30")
    with Client(srv.url) as c:  # the model is running (READY comes before its own set-up)
        assert c.request("/_/work").status == 200
    server = psutil.Process(srv.pid)
    limit = open_fds(srv.pid) + 8
    server.rlimit(psutil.RLIMIT_NOFILE, (limit, server.rlimit(psutil.RLIMIT_NOFILE)[1]))
    clients = [Client(srv.url, timeout=30) for _ in range(24)]  # the kernel queues what is not accepted
    try:
        for c in clients:
            c.send(c.request_bytes("/_/work"))  # needs no descriptor to answer
        deadline = time.monotonic() + 10
        while open_fds(srv.pid) < limit and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_fds(srv.pid) == limit, "the server never ran out of descriptors"
        time.sleep(0.3)
        before = sum(server.cpu_times()[:2])
        time.sleep(1.0)
        assert sum(server.cpu_times()[:2]) - before < 0.5, "accept() failing with EMFILE made the server spin"
        # as clients leave, the queued connections are accepted and answered, every one
        answered = 0
        with selectors.DefaultSelector() as sel:
            for c in clients:
                sel.register(c.sock, selectors.EVENT_READ, c)
            while answered < len(clients):
                events = sel.select(20)
                assert events, f"{len(clients) - answered} clients never answered"
                for key, _ in events:
                    assert key.data.read_response().status == 200
                    sel.unregister(key.fileobj)
                    key.data.close()
                    answered += 1
    finally:
        for c in clients:
            c.close()
    # The server frees a connection's descriptor when it reads that client's EOF, a moment after
    # the close above; a file request before then would rightly get 503 (no descriptor to open it).
    deadline = time.monotonic() + 10
    while open_fds(srv.pid) >= limit and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds(srv.pid) < limit, "the server kept the descriptors of clients that left"
    with Client(srv.url) as c:
        assert c.request("/odd.bin").status == 200


# -- shutdown ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", GREEN)
def test_shutdown_finishes_work_in_flight_within_the_grace_and_cuts_the_rest(start, model):
    srv = start(model, "--grace", "2")
    with Client(srv.url, timeout=30) as short, Client(srv.url, timeout=30) as long:
        short.send(short.request_bytes("/_/work?wait=700"))
        long.send(long.request_bytes("/_/work?wait=30000"))
        time.sleep(0.2)  # both are waiting now
        started = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert short.read_response().body == b"cpu=0 wait_ms=700\n"  # planned before the signal...
        assert short.closed_by_peer(within=5)  # ...and the connection is closed after it
        assert long.read_until_close(limit=25) == b""  # cut at the end of the grace, no half response
        assert srv.proc.wait(25) == 0
        assert time.monotonic() - started < 20, "the 30 s wait was not cut at the 2 s grace"


@pytest.mark.parametrize("model", GREEN)
def test_sigint_closes_idle_connections_and_exits_cleanly(start, model):
    srv = start(model, "--keepalive-timeout", "30")
    with Client(srv.url) as idle:
        assert idle.request("/one.bin").status == 200
        srv.signal(signal.SIGINT)
        assert idle.closed_by_peer(within=10)
        assert srv.proc.wait(10) == 0


# -- trio's read-and-send loop ----------------------------------------------------------------


def test_trio_read_loop_reads_uncached_files_in_a_worker_thread(start, tmp_path):
    """Page-cached chunks are read on the loop; uncached ones in a thread, so a cold disk
    never stalls the loop. Evicting the file from the page cache shows both paths."""
    root = tmp_path / "root"
    root.mkdir()
    path = root / "cold.bin"
    data = os.urandom(3 * 1024 * 1024)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # clean pages can be evicted; dirty ones cannot
    if not _evict(str(path)):
        pytest.skip("the page cache keeps this file (tmpfs?), so it cannot be made cold here")
    assert path.read_bytes() == data and _first_page_cached(str(path))  # back in the page cache
    srv = start("trio", "--file-send", "read", root=str(root))
    server = psutil.Process(srv.pid)
    with Client(srv.url) as c:
        assert c.request("/cold.bin").body == data  # cached: read on the loop, no thread
        assert server.num_threads() == 1
        assert _evict(str(path))
        assert c.request("/cold.bin").body == data
        assert server.num_threads() > 1, "uncached chunks were read on the loop's thread"


def _first_page_cached(path: str) -> bool:
    """mincore() on a mapping of the file: asks the kernel without reading (or reading ahead)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    vec = ctypes.create_string_buffer(1)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), mmap.PAGESIZE, access=mmap.ACCESS_COPY) as m:
        first = ctypes.c_char.from_buffer(m)  # a private mapping, never written: the file's own pages
        try:
            if libc.mincore(ctypes.addressof(first), mmap.PAGESIZE, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del first  # the mapping cannot close while a pointer into it exists
    return bool(vec.raw[0] & 1)


def _evict(path: str, attempts: int = 40) -> bool:
    """Drop the file from the page cache (retried: pages still in another CPU's LRU batch
    are skipped by one fadvise); True once its first page is no longer cached."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(attempts):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            if not _first_page_cached(path):
                return True
            time.sleep(0.05)
        return False
    finally:
        os.close(fd)


# -- gevent stays in its own process ------------------------------------------------------------


def _mapped_files(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_gevent_is_loaded_only_in_a_gevent_server_process(start):
    threaded = start("threading")
    greened = start("gevent")
    for srv in (threaded, greened):
        with Client(srv.url) as c:
            assert c.request("/one.bin").status == 200
    assert "gevent" in _mapped_files(greened.pid)  # the check can see gevent where it is...
    assert "gevent" not in _mapped_files(threaded.pid)  # ...and it is not in another model's process


def test_the_registry_and_launcher_do_not_import_gevent():
    code = (
        "import sys; import serverzoo.servers, serverzoo.servers.launch, serverzoo.servers.runtime.serve_cli, "
        "serverzoo.servers.runtime.runner; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('gevent', 'trio')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_loading_the_gevent_model_patches_nothing():
    code = (
        "import socket, time, threading, select, ssl; "
        "from serverzoo.servers import get_model; get_model('gevent').load(); "
        "import gevent.monkey; "
        "assert not gevent.monkey.is_anything_patched(), gevent.monkey.saved; "
        "assert socket.socket.__module__ == 'socket', socket.socket; "
        "assert time.sleep.__module__ == 'time', time.sleep; "
        "assert threading.Lock.__module__ == '_thread', threading.Lock; print('clean')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_the_test_process_is_unpatched_after_using_the_gevent_model(start):
    srv = start("gevent")
    with Client(srv.url) as c:
        assert c.request("/one.bin").status == 200
    assert socket.socket.__module__ == "socket"
    assert time.sleep.__module__ == "time"
    if "gevent.monkey" in sys.modules:  # imported by some other test: still nothing patched
        assert not sys.modules["gevent.monkey"].is_anything_patched()
