"""Each model behaves as the registry's traits say it does, asserted over every model.

`bounded` and `cap_option`: at its cap a long backend wait holds up a file request, below it
it does not. `cpu_blocks`: CPU work in one request stalls the others of its process, or
visibly does not. Both file-send modes: aborted downloads and waits leak no descriptors or
threads, and a client that stops reading is let go after the write timeout. The tests read
the table from serverzoo.servers, so a new model is covered by being registered.
"""

from __future__ import annotations

import select
import selectors
import socket
import time

import pytest

from serverzoo.servers import MODELS, ModelInfo

from .support import (
    FILES,
    Client,
    check_stalled_reader_is_dropped,
    check_variant_serves,
    content_for,
    settles_to,
    sha,
    tree_cpu,
    tree_fds,
    tree_threads,
)

RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() resets the connection
QUICK = ("--keepalive-timeout", "30", "--header-timeout", "30", "--grace", "5")


def _ids(models: list[ModelInfo]) -> list[str]:
    return [m.name for m in models]


def serve_args(m: ModelInfo, cap: int | None = None) -> tuple[str, ...]:
    """`serve` arguments for these tests: at most `cap` connections at once where the model
    can be capped, and two processes for a model that would start one per CPU, whatever the machine."""
    args: list[str] = []
    if cap is not None and m.cap_option:
        args += [m.cap_option, str(cap)]
    if m.default_workers is None and "--workers" not in args:
        args += ["--workers", "2"]
    return tuple(args)


def one_at_a_time(m: ModelInfo) -> bool:
    return m.bounded and m.cap_option is None


def readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


CONCURRENT = [m for m in MODELS.values() if not one_at_a_time(m)]
CAPPABLE = [m for m in MODELS.values() if m.bounded or m.cap_option]
FILE_SENDING = [(m, mode) for m in MODELS.values() for mode in ("read", "sendfile")]
FILE_SENDING_IDS = [f"{m.name}-{mode}" for m, mode in FILE_SENDING]


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


def start_long_wait(url: str, wait_ms: int) -> Client:
    slow = Client(url, timeout=30)
    slow.send(slow.request_bytes(f"/_/work?wait={wait_ms}", headers=[("Host", "t"), ("Connection", "close")]))
    time.sleep(0.2)  # let the server take it up before the file request arrives
    return slow


# -- waiting --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", CONCURRENT, ids=_ids(CONCURRENT))
def test_a_long_wait_does_not_delay_a_file_request(start, model):
    srv = start(model.name, *QUICK, *serve_args(model, cap=2))
    with start_long_wait(srv.url, 3000) as slow, Client(srv.url, timeout=20) as other:
        r = other.request("/mid.bin", headers=[("Host", "t"), ("Connection", "close")])  # a streamed file
        assert r.status == 200 and sha(r.body) == sha(content_for("mid.bin", FILES["mid.bin"]))
        assert not readable(slow.sock), "the file was only served after the wait ended"
        assert slow.read_response().body == b"cpu=0 wait_ms=3000\n"


@pytest.mark.parametrize("model", CAPPABLE, ids=_ids(CAPPABLE))
def test_at_its_cap_a_long_wait_does_delay_a_file_request(start, model):
    """The documented breakdown: with one thread/child/worker/greenlet, the file waits behind the wait."""
    srv = start(model.name, *QUICK, *serve_args(model, cap=1))
    with start_long_wait(srv.url, 1500) as slow, Client(srv.url, timeout=20) as fast:
        fast.send(fast.request_bytes("/one.bin"))
        assert answered_first({"wait": slow.sock, "file": fast.sock}) == ["wait", "file"]
        assert slow.read_response().body == b"cpu=0 wait_ms=1500\n"
        assert fast.read_response().body == content_for("one.bin", 1)


# -- computing ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS.values(), ids=list(MODELS))
def test_cpu_work_stalls_the_process_exactly_when_the_registry_says_so(start, model):
    """The kernel runs where the request is handled: on an event loop's (or the iterative
    server's) only thread it holds up everyone; threads share the interpreter by turns and
    processes run apart, so there a small file overtakes it."""
    srv = start(model.name, *QUICK, *serve_args(model, cap=2))
    with Client(srv.url, timeout=40) as heavy, Client(srv.url, timeout=40) as light:
        if not one_at_a_time(model):  # both accepted and served once, so neither waits for accept
            heavy.request("/one.bin")
            light.request("/one.bin")
        # (one at a time: heavy connected first, so it is accepted first, and it closes when done)
        before = tree_cpu(srv.pid)
        heavy.send(heavy.request_bytes("/_/work?cpu=10000", headers=[("Host", "t"), ("Connection", "close")]))
        deadline = time.monotonic() + 20
        while tree_cpu(srv.pid) - before < 0.05 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the server is visibly busy in the kernel
        light.send(light.request_bytes("/one.bin"))
        order = answered_first({"cpu": heavy.sock, "file": light.sock})
        if model.cpu_blocks:
            assert order == ["cpu", "file"], "the file response overtook the CPU work: the process was not blocked"
        else:
            assert order == ["file", "cpu"], "the file response waited for the CPU work"
        assert heavy.read_response().status == 200 and light.read_response().status == 200


# -- resources ------------------------------------------------------------------------------


@pytest.mark.parametrize("model,mode", FILE_SENDING, ids=FILE_SENDING_IDS)
def test_no_descriptor_or_thread_leak_after_aborted_requests(start, model, mode):
    srv = start(model.name, *QUICK, "--file-send", mode, *serve_args(model))
    with Client(srv.url) as c:  # warm up: lazily opened descriptors, the loop's own
        assert c.request("/big.bin").status == 200
        assert c.request("/_/work?wait=1").status == 200
    time.sleep(0.2)
    fds, threads = tree_fds(srv.pid), tree_threads(srv.pid)
    for i in range(24):
        c = Client(srv.url, rcvbuf=16384)
        c.send(c.request_bytes("/_/work?wait=200" if i % 3 == 0 else "/big.bin"))
        if i % 3:
            c.sock.recv(10000)  # the download is under way
        if i % 3 == 1:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RST)
        c.close()  # a reset, or a plain close with most of the body unsent
    assert settles_to(srv.pid, fds) <= fds
    assert settles_to(srv.pid, threads, count=tree_threads) <= threads
    with Client(srv.url) as c:  # still serving, whole files
        r = c.request("/big.bin")
        assert r.status == 200 and sha(r.body) == sha(content_for("big.bin", FILES["big.bin"]))


@pytest.mark.parametrize("model,mode", FILE_SENDING, ids=FILE_SENDING_IDS)
def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(start, model, mode):
    srv = start(model.name, "--write-timeout", "1", "--file-send", mode, *serve_args(model))
    check_stalled_reader_is_dropped(srv)


# -- the file-send mode the conformance suite does not start serves the same bytes ---------------


@pytest.mark.parametrize("model", MODELS.values(), ids=list(MODELS))
def test_the_other_file_send_mode_serves_exact_bytes_ranges_and_pipelines(start, model):
    other = "sendfile" if model.file_send == "read" else "read"
    srv = start(model.name, "--header-timeout", "1", "--file-send", other, *serve_args(model))
    check_variant_serves(srv.url)
