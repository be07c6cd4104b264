"""The sans-IO core as tables: bytes in, response plans out. No sockets here."""

from __future__ import annotations

import os

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serverzoo.protocol import Docroot, FileApp, HttpConnection, TargetError, normalise
from serverzoo.protocol.ranges import Unsatisfiable, parse_range

from .support import FILES, content_for

DATE = b"Sun, 22 Nov 2026 01:02:03 GMT"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from .support import make_corpus

    return FileApp(Docroot(make_corpus(str(tmp_path_factory.mktemp("core")))))


def connect(app: FileApp) -> HttpConnection:
    return HttpConnection(app, "serverzoo-test", lambda: DATE)


def statuses(conn: HttpConnection, data: bytes) -> list[int]:
    return [p.status for p in conn.receive(data)]


REQUESTS = [  # (bytes in, statuses out, connection closed afterwards)
    (b"GET /odd.bin HTTP/1.1\r\nHost: t\r\n\r\n", [200], False),
    (b"HEAD /odd.bin HTTP/1.1\r\nHost: t\r\n\r\n", [200], False),
    (b"GET /odd.bin HTTP/1.0\r\n\r\n", [200], True),
    (b"GET /odd.bin HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", [200], False),
    (b"GET /odd.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", [200], True),
    (b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n", [404], False),
    (b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", [200], False),
    (b"GET /_/work?cpu=1 HTTP/1.1\r\nHost: t\r\n\r\n", [200], False),
    (b"GET /_/work?cpu=x HTTP/1.1\r\nHost: t\r\n\r\n", [400], False),
    (b"POST / HTTP/1.1\r\nHost: t\r\n\r\n", [405], True),
    (b"BREW / HTTP/1.1\r\nHost: t\r\n\r\n", [405], True),
    (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", [505], True),
    (b"GET / HTTP/1.7\r\nHost: t\r\n\r\n", [505], True),
    (b"GET / HTTP/1.1\r\n\r\n", [400], True),
    (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", [413], True),
    (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", [200], False),
    (b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n", [400], True),
    (b"GET http://t/ HTTP/1.1\r\nHost: t\r\n\r\n", [400], True),
    (b"GET /../x HTTP/1.1\r\nHost: t\r\n\r\n", [400], False),
    (b"GET / HTTP/1.1\nHost: t\n\n", [400], True),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 9000 + b"\r\n\r\n", [431], True),
    (b"\r\n\r\n", [400], True),
    (b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /odd.bin HTTP/1.1\r\nHost: t\r\n\r\n", [404, 200], False),
    (b"GET /odd.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n", [200], True),
    (b"GET /odd.bin HTTP/1.1\r\nHost: t\r\n", [], False),  # incomplete: waits for more
]


@pytest.mark.parametrize("data,expected,closed", REQUESTS, ids=[repr(r[0][:40]) for r in REQUESTS])
def test_request_table(app, data, expected, closed):
    conn = connect(app)
    assert statuses(conn, data) == expected
    assert conn.closed == closed


@pytest.mark.parametrize("data,expected,closed", REQUESTS[:8] + REQUESTS[-3:-1])
def test_any_split_of_the_bytes_gives_the_same_plans(app, data, expected, closed):
    """One recv() never has to hold one message: every two-way split parses the same."""
    for cut in range(1, len(data)):
        conn = connect(app)
        assert statuses(conn, data[:cut]) + statuses(conn, data[cut:]) == expected, cut


def test_plans_are_well_formed_http(app):
    conn = connect(app)
    for plan in conn.receive(b"GET /odd.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=1-10\r\n\r\n"):
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
        client.send(h11.EndOfMessage())
        client.receive_data(plan.head + plan.body)
        response = client.next_event()
        assert response.status_code == 206
        assert client.next_event().data == content_for("odd.bin", FILES["odd.bin"])[1:11]


def test_large_files_are_planned_as_slices_not_read(app):
    plan = connect(app).receive(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=10-\r\n\r\n")[0]
    assert plan.body == b"" and plan.file is not None
    assert (plan.file.offset, plan.file.length) == (10, FILES["big.bin"] - 10)


def test_head_plans_have_no_body(app):
    plan = connect(app).receive(b"HEAD /odd.bin HTTP/1.1\r\nHost: t\r\n\r\n")[0]
    assert plan.body == b"" and plan.file is None
    assert b"Content-Length: %d\r\n" % FILES["odd.bin"] in plan.head


def test_work_order(app):
    plan = connect(app).receive(b"GET /_/work?cpu=3&wait=250 HTTP/1.1\r\nHost: t\r\n\r\n")[0]
    assert plan.work.cpu == 3 and plan.work.wait_s == 0.25


def test_timeout_answer_only_mid_head(app):
    conn = connect(app)
    assert conn.error_for_timeout() is None  # idle: close quietly
    conn.receive(b"GET / HT")
    assert conn.error_for_timeout().status == 408


def test_draining_connection_says_close(app):
    conn = connect(app)
    conn.draining = True
    plan = conn.receive(b"GET /odd.bin HTTP/1.1\r\nHost: t\r\n\r\n")[0]
    assert plan.close and b"Connection: close\r\n" in plan.head


NORMALISE = [
    (b"/", ()),
    (b"/a/b", ("a", "b")),
    (b"//a///b/", ("a", "b")),
    (b"/a/./b", ("a", "b")),
    (b"/a/../b", ("b",)),
    (b"/a%2Fb", ("a", "b")),
    (b"/%C3%BC", ("ü",)),
    (b"/%252e%252e", ("%2e%2e",)),
]


@pytest.mark.parametrize("path,segments", NORMALISE)
def test_normalise(path, segments):
    assert normalise(path) == segments


@pytest.mark.parametrize("path", [b"/..", b"/a/../..", b"/%2e%2e", b"/a%00", b"/a\\b", b"/a%5cb", b"/%ff", b"a"])
def test_normalise_refuses(path):
    with pytest.raises(TargetError) as exc:
        normalise(path)
    assert exc.value.status == 400


RANGES = [  # (header, size, result) with None for the whole file and "416" for unsatisfiable
    (None, 10, None),
    (b"bytes=0-0", 10, (0, 1)),
    (b"bytes=2-", 10, (2, 8)),
    (b"bytes=-3", 10, (7, 3)),
    (b"bytes=-30", 10, (0, 10)),
    (b"bytes=5-100", 10, (5, 5)),
    (b"bytes=10-", 10, "416"),
    (b"bytes=-0", 10, "416"),
    (b"bytes=0-", 0, "416"),
    (b"bytes=1-2,4-5", 10, None),
    (b"bytes=x-1", 10, None),
    (b"bytes=3-1", 10, None),
    (b"bits=0-1", 10, None),
    (b"bytes= 1 - 2 ", 10, (1, 2)),
    (b"bytes=-", 10, None),
]


@pytest.mark.parametrize("header,size,result", RANGES)
def test_parse_range(header, size, result):
    if result == "416":
        with pytest.raises(Unsatisfiable):
            parse_range(header, size)
    else:
        assert parse_range(header, size) == result


def test_cache_notices_a_changed_file(tmp_path):
    (tmp_path / "f.txt").write_bytes(b"old")
    root = Docroot(str(tmp_path))
    assert root.lookup(b"/f.txt", "tick-1").content == b"old"
    os.replace(_write(tmp_path / "new", b"newer"), tmp_path / "f.txt")
    assert root.lookup(b"/f.txt", "tick-1").content == b"old"  # within one tick: cached
    assert root.lookup(b"/f.txt", "tick-2").content == b"newer"  # next tick: revalidated


def test_cache_notices_a_symlink_swapped_out_of_the_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "secret").write_bytes(b"secret")
    (tmp_path / "root" / "f").write_bytes(b"fine")
    root = Docroot(str(tmp_path / "root"))
    assert root.lookup(b"/f", 1).content == b"fine"
    os.remove(tmp_path / "root" / "f")
    os.symlink(tmp_path / "secret", tmp_path / "root" / "f")
    with pytest.raises(TargetError):
        root.lookup(b"/f", 2)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_arbitrary_bytes_never_raise(app_for_hypothesis, chunks):
    """Whatever arrives, receive() answers with plans (or waits); it never raises."""
    conn = connect(app_for_hypothesis)
    for chunk in chunks:
        for plan in conn.receive(chunk):
            assert 200 <= plan.status < 600
            assert plan.head.startswith(b"HTTP/1.1 ") and plan.head.endswith(b"\r\n\r\n")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n "), max_size=60))
def test_arbitrary_targets_stay_inside_the_root(app_for_hypothesis, target):
    conn = connect(app_for_hypothesis)
    data = b"GET /" + target.encode("latin-1") + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    for plan in conn.receive(data):
        assert b"TOP-SECRET" not in plan.body
        if plan.file is not None:
            assert plan.file.path.startswith(app_for_hypothesis.docroot.root + os.sep)


@pytest.fixture(scope="module")
def app_for_hypothesis(app):
    return app


@pytest.mark.parametrize("data,expected,closed", REQUESTS, ids=[repr(r[0][:40]) for r in REQUESTS])
def test_parse_cache_changes_no_answer(app, data, expected, closed):
    """A byte-identical head answered from the parse cache (or the reply cache) gets the same
    answer as a fresh parse: the same bytes on the wire, the same file, the same close."""
    plain = HttpConnection(app, "serverzoo-test", lambda: DATE, parse_cache=False).receive(data)
    for _ in range(2):  # the second time round, valid heads come from the cache
        cached = HttpConnection(app, "serverzoo-test", lambda: DATE, parse_cache=True).receive(data)
        assert [(p.status, p.head + p.body, p.file, p.close) for p in cached] == [
            (p.status, p.head + p.body, p.file, p.close) for p in plain
        ]


def test_parse_cache_respects_draining(app):
    data = b"GET /odd.bin HTTP/1.1\r\nHost: t\r\n\r\n"
    connect(app).receive(data)  # now cached
    conn = connect(app)
    conn.draining = True
    assert conn.receive(data)[0].close


def test_out_of_descriptors_is_503_not_404(tmp_path, monkeypatch):
    import errno

    import serverzoo.protocol.docroot as docroot_module

    (tmp_path / "f.txt").write_bytes(b"x")
    root = Docroot(str(tmp_path))

    def no_fds(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(docroot_module.os, "open", no_fds)
    with pytest.raises(TargetError) as exc:
        root.lookup(b"/f.txt", 1)
    assert exc.value.status == 503


@pytest.mark.parametrize("data,expected,closed", REQUESTS, ids=[repr(r[0][:40]) for r in REQUESTS])
def test_ready_reply_is_what_receive_sends(app, data, expected, closed):
    """The reply cache hands out exactly the bytes receive's plan would send, and only for
    a read that is one keep-alive request whose reply is a whole in-memory file."""
    for _ in range(2):  # the second time round, reusable replies are ready
        conn = connect(app)
        ready = conn.ready_reply(data)
        plans = HttpConnection(app, "serverzoo-test", lambda: DATE, parse_cache=False).receive(data)  # the long way
        if ready is not None:
            assert connect(app).receive(data)[0].head == ready  # receive answers from the cache as well
            assert len(plans) == 1 and not plans[0].close and plans[0].file is None and plans[0].status == 200
            assert ready == plans[0].head + plans[0].body
            assert not conn.closed and not conn.has_partial_request
    reusable = b"GET /odd.bin HTTP/1.1\r\nHost: t\r\n\r\n"
    assert (connect(app).ready_reply(data) is not None) == (data in {reusable, reusable.replace(b"GET", b"HEAD")})


def test_ready_reply_follows_the_tick_and_the_file(tmp_path):
    """A ready reply lasts one Date tick; the next tick re-checks the file, so an edited
    file is served as it is now, never stale for longer than a tick."""
    (tmp_path / "f.txt").write_bytes(b"old")
    app, now = FileApp(Docroot(str(tmp_path))), [DATE]
    conn = HttpConnection(app, "serverzoo-test", lambda: now[0])
    req = b"GET /f.txt HTTP/1.1\r\nHost: t\r\n\r\n"
    assert conn.ready_reply(req) is None
    assert conn.receive(req)[0].body == b"old"
    assert conn.ready_reply(req).endswith(b"\r\n\r\nold")  # same tick: ready
    (tmp_path / "f.txt").write_bytes(b"newer")
    now[0] = b"Sun, 22 Nov 2026 01:02:04 GMT"
    assert conn.ready_reply(req) is None  # a new tick: the long way, which re-checks the file
    assert conn.receive(req)[0].body == b"newer"
    assert conn.ready_reply(req).endswith(b"\r\n\r\nnewer")
    other = HttpConnection(FileApp(Docroot(str(tmp_path))), "serverzoo-test", lambda: now[0])
    assert other.ready_reply(req) is None  # another app (docroot) never gets this app's reply
    renamed = HttpConnection(app, "serverzoo-other", lambda: now[0])
    assert renamed.ready_reply(req) is None  # nor a server of another name
    draining = HttpConnection(app, "serverzoo-test", lambda: now[0])
    draining.draining = True
    assert draining.ready_reply(req) is None  # its reply must say Connection: close
    half = HttpConnection(app, "serverzoo-test", lambda: now[0])
    half.receive(req[:10])
    assert half.ready_reply(req) is None  # bytes after a partial head are not a head
    off = HttpConnection(app, "serverzoo-test", lambda: now[0], parse_cache=False)
    assert off.ready_reply(req) is None  # --no-parse-cache: no reply cache either
