"""The event loops' accepting (servers/runtime/nonblocking.py ListenerWatch), on a real listener with a fake loop."""

from __future__ import annotations

import errno
import socket

import pytest

from serverzoo.protocol import Limits
from serverzoo.servers.runtime.accepting import BACKOFF_FIRST
from serverzoo.servers.runtime.context import ServerConfig, ServerContext
from serverzoo.servers.runtime.nonblocking import ListenerWatch

BIG = 4 * 1024 * 1024  # a body held in memory that no fresh socket buffer takes whole


class FakeLoop:
    """Records what ListenerWatch asks of the loop; the test plays the loop's part."""

    def __init__(self) -> None:
        self.watched: dict[int, object] = {}
        self.later: list[tuple[float, object]] = []
        self.taken: list[tuple] = []

    def take(self, conversations) -> None:
        self.taken.extend(conversations)

    def watch(self, fd, callback) -> None:
        assert fd not in self.watched
        self.watched[fd] = callback

    def unwatch(self, fd) -> None:
        del self.watched[fd]

    def call_later(self, delay, callback) -> None:
        self.later.append((delay, callback))


@pytest.fixture
def served(tmp_path):
    (tmp_path / "small.txt").write_bytes(b"x" * 10)
    (tmp_path / "big.bin").write_bytes(b"y" * BIG)
    listener = socket.create_server(("127.0.0.1", 0))
    limits = Limits(small_file_bytes=BIG, cache_bytes=2 * BIG)
    ctx = ServerContext(ServerConfig("select", str(tmp_path), limits=limits), listener)
    loop = FakeLoop()
    watch = ListenerWatch(ctx, loop.take, loop.watch, loop.unwatch, loop.call_later)
    clients: list[socket.socket] = []

    def connect(request: bytes, rcvbuf: int = 0) -> socket.socket:
        c = socket.socket()
        if rcvbuf:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        c.connect(listener.getsockname())
        c.sendall(request)
        clients.append(c)
        return c

    yield ctx, loop, watch, connect
    for c in clients:
        c.close()
    for item in loop.taken:
        item[0].close()
    listener.close()


def get(path: str, close: bool) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{'Connection: close' if close else ''}\r\n\r\n".encode()


def test_a_burst_answers_what_ends_and_hands_on_the_rest(served):
    _ctx, loop, watch, connect = served
    answered = connect(get("/small.txt", close=True))
    silent = connect(b"")
    keep_alive = connect(get("/small.txt", close=False))
    watch.start()
    (callback,) = loop.watched.values()
    callback()
    assert answered.recv(4096).startswith(b"HTTP/1.1 200 ")
    assert answered.recv(4096) == b""  # answered in the first exchange, and closed
    plans_of = {item[0].getpeername(): item[2] for item in loop.taken}
    assert plans_of[silent.getsockname()] is None  # nothing read yet
    (plan,) = plans_of[keep_alive.getsockname()]
    assert plan.status == 200 and not plan.close and plan.body == b"x" * 10


def test_a_last_response_that_did_not_fit_comes_back_as_its_unsent_rest(served):
    _ctx, loop, watch, connect = served
    client = connect(get("/big.bin", close=True), rcvbuf=4096)
    watch.start()
    next(iter(loop.watched.values()))()
    ((_sock, http, plans),) = loop.taken
    (rest,) = plans
    assert rest.close and rest.file is None and rest.work is None and rest.body == b"" and http.closed
    client.settimeout(5)
    got = b""
    while b"\r\n\r\n" not in got:
        got += client.recv(1 << 20)
    whole_length = got.index(b"\r\n\r\n") + 4 + BIG
    while len(got) + len(rest.head) < whole_length:  # what the first send took
        got += client.recv(1 << 20)
    whole = got + rest.head
    assert len(whole) == whole_length
    assert whole.startswith(b"HTTP/1.1 200 ") and whole.endswith(b"\r\n\r\n" + b"y" * BIG)


def test_out_of_descriptors_unwatches_for_the_pause_and_close_ends_it(served):
    ctx, loop, watch, _connect = served

    def emfile():
        raise OSError(errno.EMFILE, "Too many open files")

    watch._acceptor._accept = emfile
    watch.start()
    next(iter(loop.watched.values()))()
    assert loop.watched == {} and not watch.watching
    ((delay, resume),) = loop.later
    assert delay == BACKOFF_FIRST
    resume()
    assert len(loop.watched) == 1  # watched again after the pause
    next(iter(loop.watched.values()))()
    watch.close()
    assert loop.watched == {} and ctx.listener.fileno() == -1
    loop.later[-1][1]()  # a pause that ends after close: nothing to watch
    assert loop.watched == {}
