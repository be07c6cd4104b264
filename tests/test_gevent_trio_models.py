"""The risks particular to the gevent and trio models.

Both run every connection of a process on one thread: a long wait must not block the
others, CPU work must (and does: documented, asserted as an ordering), descriptors must
not leak when downloads are aborted, slow readers must be let go, shutdown must finish
what is in flight within the grace period and cut the rest. gevent must stay inside its
own process: no monkey-patching anywhere, not even there.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest


from .support import (FILES, Client, check_stalled_reader_is_dropped, check_variant_serves, content_for, open_fds,
                      settles_to, sha)

MODELS = ["gevent", "trio"]
FILE_SENDING = [  # (id, model, args): each model's default (a read-and-send loop) and sendfile
    ("gevent", "gevent", ()),
    ("gevent-sendfile", "gevent", ("--file-send", "sendfile")),
    ("trio", "trio", ()),
    ("trio-sendfile", "trio", ("--file-send", "sendfile")),
]
RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() resets the connection


def answered_first(socks: dict[str, socket.socket], limit: float = 40.0) -> list[str]:
    """Names of the sockets in the order their first response bytes arrived."""
    order: list[str] = []
    with selectors.DefaultSelector() as sel:
        for name, sock in socks.items():
            sel.register(sock, selectors.EVENT_READ, name)
        while len(order) < len(socks):
            events = sel.select(limit)
            assert events, f"no response within {limit} s; so far {order}"
            for key, _ in events:
                order.append(key.data)
                sel.unregister(key.fileobj)
    return order


def has_pending_bytes(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)


# -- waiting and computing --------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_a_long_wait_does_not_delay_a_file_request(start, model):
    srv = start(model)
    with Client(srv.url, timeout=20) as waiting, Client(srv.url, timeout=20) as other:
        waiting.send(waiting.request_bytes("/_/work?wait=3000"))
        time.sleep(0.1)
        r = other.request("/mid.bin")  # a streamed file, not a cached one
        assert r.status == 200 and sha(r.body) == sha(content_for("mid.bin", FILES["mid.bin"]))
        assert not has_pending_bytes(waiting.sock), "the file waited for the work request"
        assert waiting.read_response().body == b"cpu=0 wait_ms=3000\n"


@pytest.mark.parametrize("model", MODELS)
def test_cpu_work_delays_everyone_in_the_process(start, model):
    """Documented behaviour, not a bug: the kernel runs on the only thread of the process."""
    srv = start(model)
    server = psutil.Process(srv.pid)
    with Client(srv.url, timeout=40) as heavy, Client(srv.url, timeout=40) as light:
        heavy.request("/one.bin")  # both accepted and served once, so neither waits for accept
        light.request("/one.bin")
        before = server.cpu_times().user
        heavy.send(heavy.request_bytes("/_/work?cpu=10000"))
        deadline = time.monotonic() + 20
        while server.cpu_times().user - before < 0.05 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the server is visibly busy in the kernel
        light.send(light.request_bytes("/one.bin"))
        order = answered_first({"cpu": heavy.sock, "file": light.sock})
        assert order == ["cpu", "file"], "the file response overtook the CPU work: the loop was not blocked"
        assert heavy.read_response().status == 200 and light.read_response().status == 200


# -- the non-default variants serve exactly what the conformance suite checks by default ---------

OTHER_VARIANTS = [
    ("gevent-sendfile", "gevent", ("--file-send", "sendfile")),
    ("trio-sendfile", "trio", ("--file-send", "sendfile")),
    ("gevent-pool", "gevent", ("--pool", "4")),
]


@pytest.mark.parametrize("variant,model,args", OTHER_VARIANTS, ids=[v[0] for v in OTHER_VARIANTS])
def test_variant_serves_exact_bytes_ranges_and_pipelines(start, variant, model, args):
    srv = start(model, "--header-timeout", "1", *args)
    check_variant_serves(srv.url)


# -- resources --------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,model,args", FILE_SENDING, ids=[v[0] for v in FILE_SENDING])
def test_no_descriptor_or_thread_leak_after_aborted_downloads(start, variant, model, args):
    srv = start(model, *args)
    with Client(srv.url) as c:  # warm up: lazily opened descriptors, the loop's own
        assert c.request("/big.bin").status == 200
        assert c.request("/_/work?wait=1").status == 200
    time.sleep(0.2)
    fds, threads = open_fds(srv.pid), psutil.Process(srv.pid).num_threads()
    for i in range(30):
        c = Client(srv.url, rcvbuf=16384)
        c.send(c.request_bytes("/_/work?wait=200" if i % 3 == 0 else "/big.bin"))
        if i % 3:
            c.sock.recv(10000)  # the download is under way
        if i % 3 == 1:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        c.close()  # a reset, or a plain close with most of the body unsent
    assert settles_to(srv.pid, fds) == fds
    assert psutil.Process(srv.pid).num_threads() == threads
    with Client(srv.url) as c:
        r = c.request("/big.bin")
        assert r.status == 200 and sha(r.body) == sha(content_for("big.bin", FILES["big.bin"]))


@pytest.mark.parametrize("variant,model,args", FILE_SENDING, ids=[v[0] for v in FILE_SENDING])
def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(start, variant, model, args):
    srv = start(model, "--write-timeout", "1", *args)
    check_stalled_reader_is_dropped(srv)


@pytest.mark.parametrize("model", MODELS)
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
    with Client(srv.url) as c:
        assert c.request("/odd.bin").status == 200


# -- shutdown ---------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
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


@pytest.mark.parametrize("model", MODELS)
def test_sigint_closes_idle_connections_and_exits_cleanly(start, model):
    srv = start(model, "--keepalive-timeout", "30")
    with Client(srv.url) as idle:
        assert idle.request("/one.bin").status == 200
        srv.signal(signal.SIGINT)
        assert idle.closed_by_peer(within=10)
        assert srv.proc.wait(10) == 0


# -- gevent's pool cap --------------------------------------------------------------------------

def test_gevent_pool_cap_queues_connections_until_a_greenlet_is_free(start):
    srv = start("gevent", "--pool", "1", "--keepalive-timeout", "30")
    with Client(srv.url) as first:
        assert first.request("/one.bin").status == 200  # holds the only greenlet, idle
        second = Client(srv.url)  # the kernel completes the handshake; gevent does not accept it
        try:
            second.send(second.request_bytes("/one.bin"))
            assert first.request("/odd.bin").status == 200  # the first is still served
            time.sleep(0.3)
            assert not has_pending_bytes(second.sock), "a second connection was served beyond --pool 1"
            first.close()  # frees the greenlet: the queued connection is accepted and answered
            assert second.read_response().status == 200
        finally:
            second.close()


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
    code = ("import sys; import serverzoo.servers, serverzoo.servers.launch, serverzoo.servers.runtime.command, "
            "serverzoo.servers.runtime.runner; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('gevent', 'trio')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_loading_the_gevent_model_patches_nothing():
    code = ("import socket, time, threading, select, ssl; "
            "from serverzoo.servers import get_model; get_model('gevent').load(); "
            "import gevent.monkey; "
            "assert not gevent.monkey.is_anything_patched(), gevent.monkey.saved; "
            "assert socket.socket.__module__ == 'socket', socket.socket; "
            "assert time.sleep.__module__ == 'time', time.sleep; "
            "assert threading.Lock.__module__ == '_thread', threading.Lock; print('clean')")
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
