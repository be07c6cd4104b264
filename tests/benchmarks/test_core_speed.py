"""Micro-benchmarks of the core (pytest-benchmark). Run them on a quiet machine:

    pytest tests/benchmarks --benchmark-only --benchmark-columns=min,median,ops

In the normal test run (`--benchmark-disable`) each body runs once, as a test.
The parser comparison is why the core uses httptools: on the same request head it
is compared with h11 here, and a hand-written parser would have to beat both.
"""

from __future__ import annotations

import h11
import httptools
import pytest

from serverzoo.protocol import Docroot, FileApp, HttpConnection

from ..support import make_corpus

WRK_REQUEST = b"GET /page.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
CURL_REQUEST = b"GET /page.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
DATE = b"Sun, 22 Nov 2026 01:02:03 GMT"


@pytest.fixture(scope="module")
def conn(tmp_path_factory):
    app = FileApp(Docroot(make_corpus(str(tmp_path_factory.mktemp("bench")))))
    return HttpConnection(app, "serverzoo-bench", lambda: DATE)


@pytest.mark.parametrize("request_bytes", [WRK_REQUEST, CURL_REQUEST], ids=["wrk", "curl"])
def test_request_to_plan(benchmark, conn, request_bytes):
    """The whole core per request: framing, parsing, routing, cache hit, head building."""
    plans = benchmark(conn.receive, request_bytes)
    assert plans[0].status == 200 and len(plans[0].body) == 700


def test_parse_httptools(benchmark):
    class Sink:
        """Keeps what a parse must yield (the target, the header count) and nothing more."""

        def __init__(self) -> None:
            self.url, self.headers, self.heads = b"", 0, []

        def on_message_begin(self):
            self.url, self.headers = b"", 0

        def on_url(self, url):
            self.url += url

        def on_header(self, name, value):
            self.headers += 1

        def on_headers_complete(self):
            self.heads.append((self.url, self.headers))

    sink = Sink()
    parser = httptools.HttpRequestParser(sink)
    benchmark(parser.feed_data, CURL_REQUEST)
    assert sink.heads and set(sink.heads) == {(b"/page.txt", 3)}


def test_parse_h11(benchmark):
    def parse() -> object:
        c = h11.Connection(h11.SERVER)
        c.receive_data(CURL_REQUEST)
        return c.next_event()

    assert isinstance(benchmark(parse), h11.Request)
