"""The definition of "works": every model variant passes every test here, unchanged.

Each model runs as a real subprocess on a real loopback socket (the `server` fixture
starts one per variant per session). Tests close their connections promptly so the
iterative model, which serves one connection at a time, is never held up for long.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from .support import FILES, SECRET, Client, content_for, raw_exchange, sha

FILE_NAMES = ["empty.bin", "one.bin", "odd.bin", "mid.bin", "big.bin"]


def status_of(raw: bytes) -> int:
    assert raw.startswith(b"HTTP/1.1 "), raw[:80]
    return int(raw[9:12])


# -- exact bytes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", FILE_NAMES)
def test_file_bytes_are_exact(server, name):
    with Client(server.url) as c:
        r = c.request("/" + name)
    assert r.status == 200
    assert int(r.headers["content-length"]) == FILES[name]
    assert sha(r.body) == sha(content_for(name, FILES[name]))


def test_nested_unicode_and_space_names(server):
    with Client(server.url) as c:
        for name, target in [
            ("sub/nested.bin", "/sub/nested.bin"),
            ("with space.txt", "/with%20space.txt"),
            ("ünïcode.txt", "/%C3%BCn%C3%AFcode.txt"),
        ]:
            r = c.request(target)
            assert r.status == 200, target
            assert r.body == content_for(name, FILES[name])


def test_symlink_inside_root_is_served(server):
    with Client(server.url) as c:
        r = c.request("/link_in")
    assert r.status == 200 and r.body == content_for("odd.bin", FILES["odd.bin"])


def test_every_response_carries_the_common_headers(server):
    with Client(server.url) as c:
        r = c.request("/page.txt")
        assert r.status == 200
        for h in ("content-length", "content-type", "date", "server", "accept-ranges", "last-modified", "etag"):
            assert h in r.headers, h
        assert r.headers["server"] == f"serverzoo-{server.model}"
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["accept-ranges"] == "bytes"
        r = c.request("/missing")
        assert r.status == 404
        for h in ("content-length", "content-type", "date", "server"):
            assert h in r.headers, h
        assert "transfer-encoding" not in r.headers


def test_head_matches_get_without_body(server):
    with Client(server.url) as c:
        get = c.request("/odd.bin")
        head = c.request("/odd.bin", method="HEAD")
        after = c.request("/one.bin")  # the connection is still in step after a HEAD
    assert head.status == 200 and head.body == b""
    for h in ("content-length", "content-type", "etag", "last-modified"):
        assert head.headers[h] == get.headers[h]
    assert after.body == content_for("one.bin", 1)


def test_conditional_get_gives_304(server):
    with Client(server.url) as c:
        first = c.request("/odd.bin")
        r = c.request("/odd.bin", headers=[("Host", "t"), ("If-None-Match", first.headers["etag"])])
        assert r.status == 304 and r.body == b""
        r = c.request("/odd.bin", headers=[("Host", "t"), ("If-None-Match", '"other"')])
        assert r.status == 200 and len(r.body) == FILES["odd.bin"]


# -- ranges --------------------------------------------------------------------------

SIZE = FILES["odd.bin"]
RANGE_CASES = [
    ("bytes=0-0", 206, (0, 1)),
    ("bytes=0-99", 206, (0, 100)),
    ("bytes=100-", 206, (100, SIZE - 100)),
    ("bytes=-100", 206, (SIZE - 100, 100)),
    ("bytes=-99999999", 206, (0, SIZE)),
    (f"bytes={SIZE - 1}-999999", 206, (SIZE - 1, 1)),
    (f"bytes={SIZE}-", 416, None),
    ("bytes=-0", 416, None),
    ("bytes=0-1,5-6", 200, (0, SIZE)),
    ("bytes=abc", 200, (0, SIZE)),
    ("bytes=5-1", 200, (0, SIZE)),
    ("items=0-5", 200, (0, SIZE)),
]


@pytest.mark.parametrize("spec,status,span", RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_range(server, spec, status, span):
    data = content_for("odd.bin", SIZE)
    with Client(server.url) as c:
        r = c.request("/odd.bin", headers=[("Host", "t"), ("Range", spec)])
    assert r.status == status
    if status == 416:
        assert r.headers["content-range"] == f"bytes */{SIZE}"
        return
    start, length = span
    assert r.body == data[start : start + length]
    if status == 206:
        assert r.headers["content-range"] == f"bytes {start}-{start + length - 1}/{SIZE}"


def test_range_in_a_streamed_file(server):
    size = FILES["big.bin"]
    start, end = 3_000_001, 4_500_000
    with Client(server.url) as c:
        r = c.request("/big.bin", headers=[("Host", "t"), ("Range", f"bytes={start}-{end}")])
    assert r.status == 206
    assert r.body == content_for("big.bin", size)[start : end + 1]


def test_range_on_empty_file_is_unsatisfiable(server):
    with Client(server.url) as c:
        r = c.request("/empty.bin", headers=[("Host", "t"), ("Range", "bytes=0-")])
    assert r.status == 416 and r.headers["content-range"] == "bytes */0"


def test_if_range_mismatch_sends_whole_file(server):
    with Client(server.url) as c:
        r = c.request("/odd.bin", headers=[("Host", "t"), ("Range", "bytes=0-9"), ("If-Range", '"stale"')])
    assert r.status == 200 and len(r.body) == SIZE


# -- not found, traversal --------------------------------------------------------------


def test_missing_file_is_404_with_a_reason(server):
    with Client(server.url) as c:
        r = c.request("/no/such/file.bin")
    assert r.status == 404
    assert b"404" in r.body and b"no such file" in r.body


def test_fifo_is_not_served(server):
    with Client(server.url, timeout=5) as c:
        r = c.request("/pipe")
    assert r.status == 404


TRAVERSALS = [
    "/../outside/secret.txt",
    "/../../../../etc/passwd",
    "/sub/../../outside/secret.txt",
    "/%2e%2e/outside/secret.txt",
    "/%2E%2E/outside/secret.txt",
    "/%2e%2e%2foutside%2fsecret.txt",
    "/sub/%2e%2e/%2e%2e/outside/secret.txt",
    "/..%2foutside/secret.txt",
    "/..%2Foutside%2Fsecret.txt",
    "/%252e%252e/outside/secret.txt",
    "/%252e%252e%252foutside%252fsecret.txt",
    "/.%2e/outside/secret.txt",
    "/%2e./outside/secret.txt",
    "/..\\outside\\secret.txt",
    "/..%5coutside%5csecret.txt",
    "/%5c..%5csecret.txt",
    "/link_out",
    "/dir_out/secret.txt",
    "/dir_out/",
    "/sub/../link_out",
    "/./link_out",
    "/odd.bin%00.txt",
    "/%00",
    "/sub%00/../../outside/secret.txt",
    "//etc/passwd",
    "/..",
    "/sub/..%2f..%2foutside/secret.txt",
    "/%c0%ae%c0%ae/outside/secret.txt",
    "/%ff/../../outside/secret.txt",
    "/..;/outside/secret.txt",
    "/...//outside/secret.txt",
    "/./../outside/secret.txt",
    "/%2e%2e%5coutside%5csecret.txt",
    "/sub/./../../outside/./secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_never_leaves_the_root(server, target):
    raw = raw_exchange(server.url, f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert SECRET not in raw and b"root:" not in raw
    assert status_of(raw) in (400, 404), raw[:200]


def test_traversal_in_absolute_form_is_refused(server):
    raw = raw_exchange(server.url, b"GET http://t/../outside/secret.txt HTTP/1.1\r\nHost: t\r\n\r\n")
    assert SECRET not in raw and status_of(raw) == 400


# -- methods, versions, malformed, limits --------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO"])
def test_other_methods_get_405(server, method):
    raw = raw_exchange(server.url, f"{method} /odd.bin HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert status_of(raw) == 405
    assert b"\r\nAllow: GET, HEAD\r\n" in raw


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/1.2", "HTTP/3.0"])
def test_other_versions_get_505(server, version):
    raw = raw_exchange(server.url, f"GET /odd.bin {version}\r\nHost: t\r\n\r\n".encode())
    assert status_of(raw) == 505


@pytest.mark.parametrize(
    "head",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /odd.bin HTTP/1.1\r\n\r\n",  # 1.1 without Host
        b"GET /odd.bin HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /odd.bin HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
        b"GET odd.bin HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /odd.bin HTTP/1.1\nHost: t\n\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello
    ],
    ids=["garbage", "no-host", "two-hosts", "bad-header", "no-slash", "bare-lf", "tls"],
)
def test_malformed_requests_get_400_and_close(server, head):
    raw = raw_exchange(server.url, head)
    assert status_of(raw) == 400
    assert b"\r\nConnection: close\r\n" in raw


def test_oversized_head_gets_431(server):
    head = b"GET /odd.bin HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    assert status_of(raw_exchange(server.url, head)) == 431


def test_oversized_head_without_end_gets_431(server):
    assert status_of(raw_exchange(server.url, b"GET /" + b"a" * 9000)) == 431


def test_request_body_is_refused_and_connection_closed(server):
    raw = raw_exchange(server.url, b"GET /odd.bin HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
    assert status_of(raw) == 413 and raw.count(b"HTTP/1.1 ") == 1
    raw = raw_exchange(server.url, b"GET /odd.bin HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status_of(raw) == 400 and raw.count(b"HTTP/1.1 ") == 1


# -- connections -------------------------------------------------------------------------


def test_keep_alive_many_requests(server):
    with Client(server.url) as c:
        for i in range(200):
            name = FILE_NAMES[i % 3]
            r = c.request("/" + name)
            assert r.status == 200 and len(r.body) == FILES[name]
            assert "connection" not in r.headers


def test_pipelined_requests_answered_in_order(server):
    names = [
        "odd.bin",
        "one.bin",
        "page.txt",
        "missing",
        "empty.bin",
        "sub/nested.bin",
        "odd.bin",
        "page.txt",
        "one.bin",
        "mid.bin",
    ]
    with Client(server.url) as c:
        c.send(b"".join(c.request_bytes("/" + n) for n in names))
        for n in names:
            r = c.read_response()
            if n == "missing":
                assert r.status == 404
            else:
                assert r.status == 200 and r.body == content_for(n, FILES[n]), n


def test_request_written_one_byte_at_a_time(server):
    with Client(server.url) as c:
        for byte in c.request_bytes("/odd.bin"):
            c.send(bytes([byte]))
            time.sleep(0.002)
        r = c.read_response()
    assert r.status == 200 and len(r.body) == SIZE


def test_http10_closes_by_default(server):
    with Client(server.url) as c:
        r = c.request("/one.bin", headers=[], version="1.0")
        assert r.status == 200 and r.body == content_for("one.bin", 1)
        assert c.closed_by_peer(within=5)


def test_http10_keep_alive_when_asked(server):
    with Client(server.url) as c:
        for _ in range(3):
            r = c.request("/one.bin", headers=[("Connection", "keep-alive")], version="1.0")
            assert r.status == 200 and r.headers.get("connection", "").lower() == "keep-alive"


def test_connection_close_is_honoured(server):
    with Client(server.url) as c:
        r = c.request("/odd.bin", headers=[("Host", "t"), ("Connection", "close")])
        assert r.status == 200 and r.headers["connection"] == "close"
        assert c.closed_by_peer(within=5)


def test_half_closed_client_still_gets_its_answer(server):
    raw = raw_exchange(server.url, b"GET /one.bin HTTP/1.1\r\nHost: t\r\n\r\n", half_close=True)
    assert status_of(raw) == 200 and raw.endswith(content_for("one.bin", 1))


def test_client_that_leaves_mid_body_does_not_hurt_the_server(server):
    for _ in range(3):
        c = Client(server.url, rcvbuf=16384)
        c.send(c.request_bytes("/big.bin"))
        c.sock.recv(10000)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()  # RST with most of the body unsent
    with Client(server.url) as c:
        r = c.request("/big.bin")
    assert r.status == 200 and sha(r.body) == sha(content_for("big.bin", FILES["big.bin"]))


def test_fifty_concurrent_clients_get_correct_bytes(server):
    expected = {n: sha(content_for(n, FILES[n])) for n in ("odd.bin", "mid.bin", "page.txt")}
    failures: list[str] = []

    def client(i: int) -> None:
        try:
            with Client(server.url, timeout=30) as c:
                for n, digest in expected.items():
                    r = c.request("/" + n)
                    if r.status != 200 or sha(r.body) != digest:
                        failures.append(f"client {i}: {n} status {r.status}")
        except Exception as exc:  # collected and reported below
            failures.append(f"client {i}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(45)
    assert not any(t.is_alive() for t in threads), "clients still running"
    assert failures == []


# -- timeouts ----------------------------------------------------------------------------------


def test_idle_keep_alive_connection_is_closed(server):
    with Client(server.url) as c:
        assert c.request("/one.bin").status == 200
        started = time.monotonic()
        assert c.closed_by_peer(within=12), "idle connection was never closed"
        assert time.monotonic() - started >= 1.0  # not closed at once: it was kept alive for a while


def test_slow_head_gets_408(server):
    with Client(server.url) as c:
        c.send(b"GET /odd.bin HTTP/1.1\r\nHost: t\r\n")
        raw = c.read_until_close(limit=12)
    assert status_of(raw) == 408


def test_dribbling_client_cannot_outlast_the_header_timeout(server):
    with Client(server.url) as c:
        started = time.monotonic()
        closed = False
        for i in range(120):  # one byte every 0.1 s would take 12 s; the header timeout is 2 s
            try:
                c.send(b"X-Slow: y\r\n"[i % 11 : i % 11 + 1] if i else b"GET /odd.bin HTTP/1.1\r\nHost: t\r\n")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if c.closed_by_peer(within=0.001):
                closed = True
                break
        assert closed, "server kept a dribbling client past its header timeout"
        assert time.monotonic() - started < 10


# -- listings and the work endpoint -----------------------------------------------------------


def test_listing_text_and_json(server):
    with Client(server.url) as c:
        text = c.request("/")
        assert text.status == 200 and text.headers["content-type"].startswith("text/plain")
        lines = text.body.decode().splitlines()
        assert f"odd.bin\t{SIZE}" in lines and "sub/\t-" in lines
        assert not any(line.startswith("_") for line in lines)  # reserved prefix is not listed
        doc = json.loads(c.request("/?format=json").body)
        names = {e["name"]: e for e in doc["entries"]}
        assert names["odd.bin"]["size"] == SIZE and names["sub"]["type"] == "dir"
        assert "link_out" not in names and "dir_out" not in names
        doc2 = json.loads(c.request("/sub/", headers=[("Host", "t"), ("Accept", "application/json")]).body)
        assert [e["name"] for e in doc2["entries"]] == ["nested.bin"]


def test_work_endpoint(server):
    with Client(server.url) as c:
        r = c.request("/_/work?cpu=2&wait=20")
        assert r.status == 200 and r.body == b"cpu=2 wait_ms=20\n"
        assert c.request("/_/work").body == b"cpu=0 wait_ms=0\n"
        assert c.request("/_/work?cpu=-1").status == 400
        assert c.request("/_/work?cpu=1&bogus=2").status == 400
        assert c.request("/_/nothing").status == 404


def test_a_file_cannot_shadow_the_work_endpoint(server):
    with Client(server.url) as c:
        r = c.request("/_/work?wait=1")
    assert r.body == b"cpu=0 wait_ms=1\n"
