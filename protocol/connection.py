"""One HTTP/1.1 connection, sans-IO: bytes in, response plans out.

A model feeds whatever recv() returned to ``receive`` and gets back the plans for every
complete request in it, in order (so pipelining needs nothing from the model). Heads
are framed here (CRLF CRLF, at most 8 KiB) and parsed by httptools (llhttp), so one
recv() never has to hold exactly one message. Any request that would need a body to
be skipped, or that does not parse, is answered and the connection is closed.

Parse cache: a valid request head is a pure function of its bytes, so the parsed form
of recently seen heads is kept in a small process-wide table, and a byte-identical head
(a load generator's, a health check's, a polling client's) skips the parser and its
checks. It changes no answer, only the cost; `serverzoo serve --no-parse-cache` turns it
off (and the reply cache below with it), and bench/model_speed.py measures both, so
its effect is shown, not hidden.

Reply cache: a plain keep-alive GET or HEAD of a whole small file gets, for the rest
of the Date second (the docroot's tick), the very bytes it got before: the entry was
confirmed on disk at that tick, and nothing else in the reply changes within it. So
the wire bytes of such a reply are kept with the head, the app (its docroot) and the
server line that made them, and ``ready_reply`` hands them out when a read is exactly
that head. The next second misses, goes the long way, and so re-checks the file with
one stat() (docroot.py): a changed file is never served stale for longer than a tick,
as without the cache. receive() answers from it too, so every model gets the same
reply for the same cost of the core; a model may also ask ready_reply() first and skip
making a plan.
"""

from __future__ import annotations

import re

import httptools

from .app import FileApp, Request
from .limits import MAX_HEAD_BYTES
from .responses import DateSource, HeadWriter, ResponsePlan

_VERSION_IN_LINE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+ \S+ HTTP/(\d+)\.(\d+)\r?$")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_ALLOW = b"Allow: GET, HEAD\r\n"

# head bytes -> (method, target, version, headers, keep_alive) of a valid GET/HEAD request
_PARSED: dict[bytes, tuple[bytes, bytes, str, dict[bytes, bytes], bool]] = {}
_PARSED_MAX_ENTRIES = 1024
_PARSED_MAX_HEAD = 1024
# head bytes -> (tick, app, server line, wire bytes) of a reply reusable during that tick
_READY: dict[bytes, tuple[bytes, FileApp, bytes, bytes]] = {}


class HttpConnection:
    """Parse requests from a byte stream and plan their responses.

    ``has_partial_request`` tells the model which timeout applies: the header timeout
    while a request head is incomplete, the keep-alive timeout while idle.
    ``closed`` becomes true once a plan with ``close`` was returned; feed no more.

    Slots, and no per-request state set up front (the parser callbacks set it): an
    event loop holds one of these per open connection, idle ones included.
    """

    __slots__ = (
        "_app",
        "_buf",
        "_complete",
        "_dup_host",
        "_headers",
        "_keep_alive",
        "_max_head",
        "_method",
        "_parse_cache",
        "_parser",
        "_url",
        "_version",
        "_writer",
        "closed",
        "draining",
    )

    def __init__(
        self,
        app: FileApp,
        server_name: str,
        date: DateSource,
        *,
        max_head: int = MAX_HEAD_BYTES,
        parse_cache: bool = True,
        writer: HeadWriter | None = None,
    ):
        """writer: a HeadWriter to share between connections (it holds no per-connection state)."""
        self._app = app
        self._parse_cache = parse_cache
        self._writer = writer or HeadWriter(server_name, date)
        self._max_head = max_head
        # created at the first head the parse cache does not know: a client that repeats
        # known heads (or sends one and leaves) never pays for a parser of its own
        self._parser: httptools.HttpRequestParser | None = None
        self._buf = b""
        self.closed = False
        self.draining = False  # set by a model on shutdown: answer what is in flight, then close
        # per-request parser state (_url, _headers, _complete, _dup_host) is set in _parse before
        # each feed; _keep_alive, _version and _method by on_headers_complete

    @property
    def has_partial_request(self) -> bool:
        return bool(self._buf)

    # -- feeding -----------------------------------------------------------------------
    def ready_reply(self, data: bytes) -> bytes | None:
        """The whole reply to data, if data is exactly one request head whose reply is
        still reusable (see the module docstring); None: call receive(data) instead.
        A model may send these bytes in place of receive's plans: the connection is as
        receive would leave it (idle, open)."""
        hit = _READY.get(data)
        if hit is None or self._buf or self.draining or self.closed or not self._parse_cache:
            return None
        tick, app, server_line, wire = hit
        writer = self._writer
        if app is not self._app or server_line is not writer.server_line or tick != writer.date():
            return None
        return wire

    def receive(self, data: bytes) -> list[ResponsePlan]:
        """Take bytes from the peer (b"" means EOF) and return the plans now due."""
        if self.closed:
            return []
        if not data:
            self.closed = True
            self._buf = b""
            return []
        if not self._buf and (wire := self.ready_reply(data)) is not None:
            # every model gets the reply cache through here; select and asyncio also ask for the
            # bytes directly, before a plan is made
            return [ResponsePlan(200, wire)]
        buf = self._buf + data if self._buf else data
        plans: list[ResponsePlan] = []
        start = 0
        while True:
            end = buf.find(b"\r\n\r\n", start)
            if end < 0:
                rest = buf[start:] if start else buf
                if len(rest) > self._max_head:
                    plans.append(self._fail(431, f"request head is larger than {self._max_head} bytes"))
                elif b"\n\n" in rest:  # bare LF line endings: let the parser say what is wrong
                    plans.append(self._parse(rest) or self._fail(400, "malformed request head"))
                else:
                    self._buf = rest
                    return plans
                break
            end += 4
            if end - start > self._max_head:
                plans.append(self._fail(431, f"request head is larger than {self._max_head} bytes"))
                break
            head = buf if start == 0 and end == len(buf) else buf[start:end]
            plan = self._parse(head) or self._fail(400, "incomplete request head")
            plans.append(plan)
            if plan.close:
                break
            start = end
            if start == len(buf):
                self._buf = b""
                return plans
        self._buf = b""
        self.closed = True
        return plans

    def error_for_timeout(self) -> ResponsePlan | None:
        """The 408 to send when the header timeout fires mid-head; None if idle (just close)."""
        if not self._buf or self.closed:
            return None
        return self._fail(408, "request head not received in time")

    # -- parsing one head -------------------------------------------------------------
    def _parse(self, head: bytes) -> ResponsePlan | None:
        if self._parse_cache:
            known = _PARSED.get(head)
            if known is not None:
                return self._respond(head, *known)
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._complete = False
        self._dup_host = False
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades here; the head is complete and is answered as a plain request
        except httptools.HttpParserInvalidMethodError:
            return self._fail(405 if _TOKEN.match(head.split(b" ", 1)[0]) else 400, "method not allowed", _ALLOW)
        except httptools.HttpParserError as exc:
            return self._syntax_error(head, exc)
        if not self._complete:
            return None
        return self._request(head)

    def _syntax_error(self, head: bytes, exc: Exception) -> ResponsePlan:
        m = _VERSION_IN_LINE.match(head.split(b"\n", 1)[0])
        if m and (m.group(1), m.group(2)) not in ((b"1", b"0"), (b"1", b"1")):
            return self._fail(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        reason = str(exc) or "malformed request"
        return self._fail(400, reason[:100])

    def _request(self, head: bytes) -> ResponsePlan:
        headers = self._headers
        version = self._version
        if version not in {"1.1", "1.0"}:
            return self._fail(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        length = headers.get(b"content-length")
        has_body = b"transfer-encoding" in headers or (length is not None and length.strip(b" 0") != b"")
        method = self._method
        if method not in {b"GET", b"HEAD"}:
            return self._fail(405, "method not allowed", _ALLOW)
        if has_body:
            if b"transfer-encoding" in headers:
                return self._fail(400, "request bodies are not accepted")
            return self._fail(413, "request bodies are not accepted")
        if version == "1.1" and (b"host" not in headers or self._dup_host):
            return self._fail(400, "HTTP/1.1 needs exactly one Host header")
        target = self._url
        if not target.startswith(b"/"):
            return self._fail(400, "only origin-form targets (/path) are supported")
        if b"#" in target:
            target = target.partition(b"#")[0]
        if self._parse_cache and len(head) <= _PARSED_MAX_HEAD:
            if len(_PARSED) >= _PARSED_MAX_ENTRIES:
                _PARSED.clear()  # crude but bounded; the working set of repeated heads refills it
            _PARSED[head] = (method, target, version, headers, self._keep_alive)
        return self._respond(head, method, target, version, headers, self._keep_alive)

    def _respond(
        self, head: bytes, method: bytes, target: bytes, version: str, headers: dict[bytes, bytes], keep_alive: bool
    ) -> ResponsePlan:
        close = not keep_alive or self.draining
        req = Request(method, target, version, headers)
        plan = self._app.respond(req, self._writer, close)
        if close:
            self.closed = True
        elif plan.valid_during is not None and self._parse_cache and len(head) <= _PARSED_MAX_HEAD:
            if len(_READY) >= _PARSED_MAX_ENTRIES:
                _READY.clear()  # bounded as _PARSED is
            wire = plan.head + plan.body if plan.body else plan.head
            _READY[head] = (plan.valid_during, self._app, self._writer.server_line, wire)
        return plan

    def _fail(self, status: int, message: str, extra: bytes = b"") -> ResponsePlan:
        self.closed = True
        return self._writer.error(status, message, close=True, extra=extra)

    # -- httptools callbacks ----------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key in self._headers:
            if key == b"host":
                self._dup_host = True
            self._headers[key] += b", " + value
        else:
            self._headers[key] = value

    def on_headers_complete(self) -> None:
        # read these now: llhttp resets its flags once the message is complete
        p = self._parser
        assert p is not None  # it is the parser that calls this
        self._keep_alive = p.should_keep_alive()
        self._version = p.get_http_version()
        self._method = p.get_method()
        self._complete = True
