"""The client connection's framing and body checks, fed canned bytes in awkward pieces.

The end-to-end tests use real servers; these drive one ClientConnection directly so every
way a body can arrive (whole, split anywhere, chunked, streamed past the reference budget)
is checked deterministically, on both the fast path and the general one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket

import pytest

from serverzoo.clients.loadgen import verification
from serverzoo.clients.loadgen.connection import (
    RECEIVE_CHUNK,
    SO_RCVLOWAT,
    BufferedClientConnection,
    ClientConnection,
    receive_low_water,
)
from serverzoo.clients.loadgen.drivers import ClosedLoopDriver
from serverzoo.clients.loadgen.options import LoadOptions
from serverzoo.clients.loadgen.state import Run, WorkerShare
from serverzoo.clients.loadgen.targets import build_plan

BODY = hashlib.shake_256(b"framing").digest(300_000)


class FakeSocket:
    """Records the receive low-water marks a connection sets."""

    def __init__(self) -> None:
        self.low_water: list[int] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        assert (level, option) == (socket.SOL_SOCKET, SO_RCVLOWAT)
        self.low_water.append(value)


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.socket = FakeSocket()

    def get_extra_info(self, name: str, default=None):
        return self.socket if name == "socket" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed


@pytest.fixture
def manifest_dir(tmp_path) -> str:
    """A manifest with no files beside it: bodies can only be checked by hashing."""
    with open(tmp_path / "manifest.json", "w") as f:
        json.dump(
            {
                "schema": "serverzoo.corpus/1",
                "seed": 0,
                "files": [{"name": "b.bin", "size": len(BODY), "sha256": hashlib.sha256(BODY).hexdigest()}],
            },
            f,
        )
    return str(tmp_path)


def make_connection(corpus: str, conn_class=ClientConnection):
    loop = asyncio.new_event_loop()
    opts = LoadOptions(url="http://127.0.0.1:1/b.bin", corpus=corpus, connections=1, workers=1, requests=1000)
    plan = build_plan(opts)
    run = Run(loop, opts, plan, WorkerShare(0, 1, 1, 0, 1, None, 1000, 0, 0, 0, None), "127.0.0.1", 2)
    run.enter("measure")
    run.budget = 1000
    driver = ClosedLoopDriver(run, 0)
    driver.connect = lambda: None  # no sockets here: a lost connection is simply not replaced
    conn = conn_class(driver)
    conn.connection_made(FakeTransport())
    driver.conn = conn
    conn.send(run.take(), 0, 0, run.phase)
    return loop, run, conn


def response(body: bytes, chunked: bool = False) -> bytes:
    if not chunked:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    pieces = [body[i : i + 70_001] for i in range(0, len(body), 70_001)]
    return (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
        + b"0\r\nX-Trailer: y\r\n\r\n"
    )


def feed(conn, data: bytes, sizes: list[int]) -> None:
    """In reads of the given sizes, in turn; a buffered connection gets them in its reused buffer."""
    i = 0
    k = 0
    buffered = isinstance(conn, BufferedClientConnection)
    while i < len(data):
        n = sizes[k % len(sizes)]
        if buffered:
            buffer = conn.get_buffer(-1)
            n = min(n, len(buffer))
            piece = data[i : i + n]
            buffer[: len(piece)] = piece
            conn.buffer_updated(len(piece))
            buffer[: len(piece)] = b"\xff" * len(piece)  # what a later read would overwrite
        else:
            conn.data_received(data[i : i + n])
        i += n
        k += 1


def corrupt(body: bytes, at: int) -> bytes:
    b = bytearray(body)
    b[at] ^= 0x20
    return bytes(b)


@pytest.mark.parametrize("conn_class", [ClientConnection, BufferedClientConnection], ids=["bytes", "buffer"])
@pytest.mark.parametrize("budget", [verification.REFERENCE_BUDGET, 0], ids=["reference", "hash-only"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
@pytest.mark.parametrize("sizes", [[1 << 20], [7, 1000, 65536], [1]], ids=["whole", "odd-pieces", "bytewise"])
@pytest.mark.parametrize("digest_from", [verification.DIGEST_FROM, 1000], ids=["memcmp", "xxh3"])
def test_bodies_are_checked_however_they_arrive(
    manifest_dir, monkeypatch, budget, chunked, sizes, conn_class, digest_from
) -> None:
    monkeypatch.setattr(verification, "REFERENCE_ALWAYS", 0)
    monkeypatch.setattr(verification, "REFERENCE_BUDGET", budget)
    monkeypatch.setattr(verification, "DIGEST_FROM", digest_from)
    if sizes == [1] and (chunked or conn_class is BufferedClientConnection or digest_from != 1000):
        sizes = [997]  # byte by byte through every combination is only slow, not different
    loop, run, conn = make_connection(manifest_dir, conn_class)
    try:
        good, bad = response(BODY, chunked), response(corrupt(BODY, 123_456), chunked)
        stream = good + bad + good + response(corrupt(BODY, len(BODY) - 1), chunked) + good
        feed(conn, stream, sizes if sizes != [1] else [1, 4096])
        phase = run.phases["measure"]
        assert len(phase.lat) == 3
        assert dict(phase.errors) == {"corrupt_body": 2}
        assert phase.body_bytes == 3 * len(BODY)
        assert (conn.inflight[0].reference is not None) == (budget > 0)
        assert len(conn.transport.written) == 6  # the first request and one after each response
    finally:
        loop.close()


@pytest.mark.parametrize(
    "body_left, current, expected",
    [
        (0, 1, 1),  # between responses, or in a head: any byte
        (RECEIVE_CHUNK - 1, 1, 1),  # a body shorter than a chunk: reads as it comes
        (RECEIVE_CHUNK, 1, RECEIVE_CHUNK),  # a chunk or more owed: wait for a whole chunk
        (10 * RECEIVE_CHUNK, RECEIVE_CHUNK, RECEIVE_CHUNK),
        (RECEIVE_CHUNK - 1, RECEIVE_CHUNK, RECEIVE_CHUNK - 1),  # the tail: exactly what is left
        (5, 7, 5),
        (1, RECEIVE_CHUNK, 1),
        (0, RECEIVE_CHUNK, 1),  # the body ended: any byte again
        (0, 5, 1),
    ],
)
def test_receive_low_water(body_left: int, current: int, expected: int) -> None:
    assert receive_low_water(body_left, current) == expected


def _large_body_manifest(tmp_path) -> bytes:
    """A body of a few chunks, and a manifest naming it beside no file (checked by hashing)."""
    big = hashlib.shake_256(b"low water").digest(3 * RECEIVE_CHUNK + 12_345)
    with open(tmp_path / "manifest.json", "w") as f:
        json.dump(
            {
                "schema": "serverzoo.corpus/1",
                "seed": 0,
                "files": [{"name": "b.bin", "size": len(big), "sha256": hashlib.sha256(big).hexdigest()}],
            },
            f,
        )
    return big


def test_a_head_handed_over_whole_then_the_mark_follows_its_body(tmp_path) -> None:
    """The keep-alive raw path reads a response's head into its own buffer and hands it over with
    data_received; follow_low_water then sets the mark for the body under way, as buffer_updated does."""
    big = _large_body_manifest(tmp_path)
    loop, _run, conn = make_connection(str(tmp_path), BufferedClientConnection)
    try:
        conn.data_received(response(big)[:4096])
        conn.follow_low_water()
        assert conn.transport.socket.low_water == [RECEIVE_CHUNK]
    finally:
        loop.close()


@pytest.mark.parametrize("sizes", [[RECEIVE_CHUNK], [7, 1000, 65536], [99_999]], ids=["chunks", "odd", "uneven"])
def test_large_bodies_wait_for_whole_chunks_and_their_ends_are_never_held_back(tmp_path, sizes) -> None:
    """After every read of a response: while a chunk or more of the body is owed the mark is a chunk, it
    never exceeds what is owed (the server owes at least that much, so the socket becomes readable), and it
    is 1 once the response is complete (the next head, of any size, must wake the client). Bodies are
    checked as without the marks."""
    big = _large_body_manifest(tmp_path)
    loop, run, conn = make_connection(str(tmp_path), BufferedClientConnection)
    marks = conn.transport.socket.low_water
    try:
        for body in (big, corrupt(big, len(big) - 1), big):
            data, i, k = response(body), 0, 0
            while i < len(data):
                piece = data[i : i + sizes[k % len(sizes)]]
                conn.get_buffer(-1)[: len(piece)] = piece
                conn.buffer_updated(len(piece))
                i, k = i + len(piece), k + 1
                mark, owed = (marks[-1] if marks else 1), conn.reader.body_left
                assert mark == RECEIVE_CHUNK if owed >= RECEIVE_CHUNK else 1 <= mark <= max(owed, 1)
            assert (marks[-1] if marks else 1) == 1
        phase = run.phases["measure"]
        assert len(phase.lat) == 2 and dict(phase.errors) == {"corrupt_body": 1}
        assert RECEIVE_CHUNK in marks
    finally:
        loop.close()


def test_local_corpus_files_become_references(tmp_path) -> None:
    from serverzoo.clients.loadgen.corpus import write_corpus

    write_corpus(str(tmp_path), ["3MiB", "1KiB"])
    loop, run, _conn = make_connection(str(tmp_path))
    try:
        target = run.targets[0]
        target.corpus_name = "3MiB.bin"
        with open(os.path.join(tmp_path, "3MiB.bin"), "rb") as f:
            data = f.read()
        target.expect_length, target.expect_sha256 = len(data), hashlib.sha256(data).digest()
        assert verification.preload_references(run.targets, str(tmp_path)) == len(data)
        assert target.reference == data
        with open(os.path.join(tmp_path, "3MiB.bin"), "r+b") as f:  # a local file that differs is not used
            f.write(b"X")
        target.reference = None
        assert verification.preload_references(run.targets, str(tmp_path)) == 0 and target.reference is None
    finally:
        loop.close()


def test_split_heads_and_unsolicited_bytes(manifest_dir) -> None:
    loop, run, conn = make_connection(manifest_dir)
    try:
        data = response(BODY)
        feed(conn, data, [5, 3, 20])  # the head arrives a few bytes at a time
        assert len(run.phases["measure"].lat) == 1
        conn.inflight.clear()
        conn.data_received(b"HTTP/1.1 200 OK\r\n")  # nothing was asked for
        assert dict(run.phases["measure"].errors) == {"bad_response": 1} and conn.ended
    finally:
        loop.close()


@pytest.mark.parametrize(
    "head, error",
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "bad_status"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello world!", "bad_length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n", "bad_response"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "bad_response"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "bad_response"),
    ],
)
def test_bad_heads_are_classified(manifest_dir, head: bytes, error: str) -> None:
    loop, run, conn = make_connection(manifest_dir)
    try:
        conn.data_received(head)
        assert dict(run.phases["measure"].errors) == {error: 1}
    finally:
        loop.close()


def test_interim_responses_are_skipped(manifest_dir) -> None:
    loop, run, conn = make_connection(manifest_dir)
    try:
        conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\n" + response(BODY))
        assert len(run.phases["measure"].lat) == 1 and not run.phases["measure"].errors
    finally:
        loop.close()
