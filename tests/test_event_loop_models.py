"""The risks particular to the single-threaded event loops (select, asyncio, asyncio + uvloop).

Many connections at once, waits that must not block, CPU work that must (and does)
block, descriptors that must not leak, the selector and file-sending variants, and
the FD_SETSIZE ceiling of select() shown as a clean refusal rather than a crash.
"""

from __future__ import annotations

import selectors
import socket
import time

import psutil
import pytest


from .support import (FILES, Client, check_stalled_reader_is_dropped, check_variant_serves, content_for, model_of,
                      open_fds, raise_nofile, settles_to, sha)

LOOPS = [("select", ()), ("asyncio", ()), ("asyncio-uvloop", ("--loop", "uvloop"))]
FILE_SENDING = [
    ("select-read", "select", ("--file-send", "read")),
    ("select-sendfile", "select", ("--file-send", "sendfile")),
    ("asyncio-read", "asyncio", ("--file-send", "read")),
    ("asyncio-sendfile", "asyncio", ("--file-send", "sendfile")),
    ("asyncio-uvloop", "asyncio", ("--loop", "uvloop")),
]


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

@pytest.mark.parametrize("variant,args", [LOOPS[0], LOOPS[2]], ids=["select", "asyncio-uvloop"])
def test_a_thousand_keep_alive_connections_are_all_served(start, variant, args):
    raise_nofile(4096)
    srv = start(model_of(variant), "--keepalive-timeout", "30", *args)
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
    with Client(srv.url) as c:  # and the loop is still alive
        assert c.request("/odd.bin").status == 200


# -- waiting and computing ----------------------------------------------------------------

@pytest.mark.parametrize("variant,args", LOOPS, ids=[v[0] for v in LOOPS])
def test_a_long_wait_does_not_delay_a_file_request(start, variant, args):
    srv = start(model_of(variant), *args)
    with Client(srv.url, timeout=20) as waiting, Client(srv.url, timeout=20) as other:
        waiting.send(waiting.request_bytes("/_/work?wait=2500"))
        time.sleep(0.1)
        r = other.request("/mid.bin")
        assert r.status == 200 and sha(r.body) == sha(content_for("mid.bin", FILES["mid.bin"]))
        # the file came back while the work request was still waiting
        waiting.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            waiting.sock.recv(1)
        waiting.sock.setblocking(True)
        assert waiting.read_response().body == b"cpu=0 wait_ms=2500\n"


@pytest.mark.parametrize("variant,args", LOOPS, ids=[v[0] for v in LOOPS])
def test_cpu_work_delays_everyone_on_a_single_threaded_loop(start, variant, args):
    """Documented behaviour, not a bug: the kernel runs on the loop's only thread."""
    srv = start(model_of(variant), *args)
    server = psutil.Process(srv.pid)
    with Client(srv.url, timeout=40) as heavy, Client(srv.url, timeout=40) as light:
        heavy.request("/one.bin")  # both connected and served once, so neither waits for accept
        light.request("/one.bin")
        before = server.cpu_times().user
        heavy.send(heavy.request_bytes("/_/work?cpu=10000"))
        deadline = time.monotonic() + 20
        while server.cpu_times().user - before < 0.05 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the server is visibly busy in the kernel
        light.send(light.request_bytes("/one.bin"))
        sel = selectors.DefaultSelector()
        sel.register(heavy.sock, selectors.EVENT_READ, "cpu")
        sel.register(light.sock, selectors.EVENT_READ, "file")
        order: list[str] = []
        while len(order) < 2:
            events = sel.select(40)
            assert events, "no response within 40 s"
            for key, _ in events:
                if key.data not in order:
                    order.append(key.data)
                    sel.unregister(key.fileobj)
        sel.close()
        assert order[0] == "cpu", "the file response overtook the CPU work: the loop was not blocked"
        assert heavy.read_response().status == 200 and light.read_response().status == 200


# -- resources -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,model,args", FILE_SENDING, ids=[v[0] for v in FILE_SENDING])
def test_no_descriptor_or_thread_leak_after_aborted_requests(start, variant, model, args):
    srv = start(model, *args)
    with Client(srv.url) as c:  # warm up: caches, lazily opened descriptors
        assert c.request("/big.bin").status == 200
        assert c.request("/_/work?wait=1").status == 200
    time.sleep(0.2)
    fds, threads = open_fds(srv.pid), psutil.Process(srv.pid).num_threads()
    for i in range(20):
        c = Client(srv.url, rcvbuf=16384)
        c.send(c.request_bytes("/big.bin" if i % 2 else "/_/work?wait=200"))
        if i % 2:
            c.sock.recv(10000)  # the download is under way
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()  # RST
    time.sleep(0.3)  # the aborted waits end and try to answer
    assert settles_to(srv.pid, fds) == fds
    assert psutil.Process(srv.pid).num_threads() == threads
    with Client(srv.url) as c:
        assert c.request("/odd.bin").status == 200


@pytest.mark.parametrize("variant,model,args", FILE_SENDING, ids=[v[0] for v in FILE_SENDING])
def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(start, variant, model, args):
    srv = start(model, "--write-timeout", "1", *args)
    check_stalled_reader_is_dropped(srv)


# -- variants serve correctly ---------------------------------------------------------------

VARIANTS = [
    ("select-poll", "select", ("--selector", "poll")),
    ("select-select", "select", ("--selector", "select")),
    *FILE_SENDING,
]


@pytest.mark.parametrize("variant,model,args", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_variant_serves_correctly(start, variant, model, args):
    srv = start(model, "--header-timeout", "1", *args)
    check_variant_serves(srv.url)
