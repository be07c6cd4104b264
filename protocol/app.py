"""From a parsed request to a response plan: files, listings, ranges, the work endpoint."""

from __future__ import annotations

import email.utils
import json
from dataclasses import dataclass
from urllib.parse import quote

from .docroot import DirEntry, Docroot, FileEntry, TargetError
from .ranges import Unsatisfiable, parse_range
from .responses import FileSlice, HeadWriter, ResponsePlan
from .workload import BadWork, parse_work_query

WORK_PATH = b"/_/work"


@dataclass(slots=True)
class Request:
    method: bytes  # b"GET" or b"HEAD" by the time the app sees it
    target: bytes
    version: str  # "1.0" or "1.1"
    headers: dict[bytes, bytes]  # lower-case names


class FileApp:
    """The one application every model serves."""

    def __init__(self, docroot: Docroot) -> None:
        self.docroot = docroot

    def respond(self, req: Request, writer: HeadWriter, close: bool) -> ResponsePlan:
        head_only = req.method == b"HEAD"
        ka = not close and req.version == "1.0"  # a 1.0 client must be told we keep the connection
        path, _, query = req.target.partition(b"?")
        if path == WORK_PATH:
            return self._work(query, writer, close, ka, head_only)
        date = writer.date()  # once per request: the cache tick and the hot head share it
        try:
            entry = self.docroot.lookup(path, date)
        except TargetError as exc:
            return writer.error(exc.status, exc.message, close=close, head_only=head_only, keep_alive_header=ka)
        if isinstance(entry, FileEntry):
            return self._file(req, entry, writer, close, ka, head_only, date)
        return self._listing(req, entry, query, writer, close, ka, head_only)

    # -- files ---------------------------------------------------------------------
    def _file(
        self, req: Request, e: FileEntry, writer: HeadWriter, close: bool, ka: bool, head_only: bool, date: bytes
    ) -> ResponsePlan:
        headers = req.headers
        range_header = headers.get(b"range")
        if range_header is None and b"if-none-match" not in headers and b"if-modified-since" not in headers:
            # the hot path: a plain GET of a whole file. Its head only changes with the Date
            # (once a second), so the entry keeps the last one it rendered.
            if close or ka:
                head = writer.head(200, e.fields, close=close, keep_alive_header=ka)
            else:
                hot = e.hot_head
                if hot is not None and hot[0] == date and hot[1] is writer.server_line:
                    head = hot[2]
                else:
                    head = writer.head(200, e.fields, close=False)
                    e.hot_head = (date, writer.server_line, head)
            # reusable for this tick: the entry was confirmed on disk at this tick (lookup)
            again = None if close or ka else date
            if head_only or e.size == 0:
                return ResponsePlan(200, head, close=close, valid_during=again)
            if e.content is not None:
                return ResponsePlan(200, head, e.content, close=close, valid_during=again)
            return ResponsePlan(200, head, file=FileSlice(e.real, 0, e.size), close=close)
        if _not_modified(headers, e):
            head = writer.head(304, e.validators, close=close, keep_alive_header=ka)
            return ResponsePlan(304, head, close=close)
        span = None
        if range_header is not None and _if_range_holds(headers.get(b"if-range"), e):
            try:
                span = parse_range(range_header, e.size)
            except Unsatisfiable:
                return writer.error(
                    416,
                    f"range not satisfiable for {e.size} bytes",
                    close=close,
                    extra=b"Content-Range: bytes */%d\r\n" % e.size,
                    head_only=head_only,
                    keep_alive_header=ka,
                )
        if span is None:
            status, offset, length, extra = 200, 0, e.size, b""
        else:
            offset, length = span
            status = 206
            extra = b"Content-Range: bytes %d-%d/%d\r\n" % (offset, offset + length - 1, e.size)
        fields = b"Content-Type: %s\r\nContent-Length: %d\r\n%s%s" % (e.content_type, length, e.validators, extra)
        head = writer.head(status, fields, close=close, keep_alive_header=ka)
        if head_only or length == 0:
            return ResponsePlan(status, head, close=close)
        if e.content is not None:
            body = e.content if length == e.size else e.content[offset : offset + length]
            return ResponsePlan(status, head, body, close=close)
        return ResponsePlan(status, head, file=FileSlice(e.real, offset, length), close=close)

    # -- listings ------------------------------------------------------------------
    def _listing(
        self, req: Request, d: DirEntry, query: bytes, writer: HeadWriter, close: bool, ka: bool, head_only: bool
    ) -> ResponsePlan:
        try:
            items = self.docroot.listing(d)
        except TargetError as exc:
            return writer.error(exc.status, exc.message, close=close, head_only=head_only, keep_alive_header=ka)
        here = "/" + "".join(quote(s) + "/" for s in d.segments)
        if _wants_json(req, query):
            doc = {
                "path": here,
                "entries": [
                    {
                        "name": i.name,
                        "type": "dir" if i.is_dir else "file",
                        "size": None if i.is_dir else i.size,
                        "href": here + quote(i.name) + ("/" if i.is_dir else ""),
                    }
                    for i in items
                ],
            }
            body = json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n"
            ctype = b"application/json"
        else:
            lines = [f"{i.name}/\t-" if i.is_dir else f"{i.name}\t{i.size}" for i in items]
            body = "".join(line + "\n" for line in lines).encode("utf-8")
            ctype = b"text/plain; charset=utf-8"
        return writer.simple(200, body, ctype, close=close, keep_alive_header=ka, head_only=head_only)

    # -- the work endpoint -----------------------------------------------------------
    def _work(self, query: bytes, writer: HeadWriter, close: bool, ka: bool, head_only: bool) -> ResponsePlan:
        try:
            order = parse_work_query(query)
        except BadWork as exc:
            return writer.error(400, str(exc), close=close, head_only=head_only, keep_alive_header=ka)
        body = b"cpu=%d wait_ms=%d\n" % (order.cpu, round(order.wait_s * 1000))
        plan = writer.simple(
            200, body, close=close, keep_alive_header=ka, head_only=head_only, extra=b"Cache-Control: no-store\r\n"
        )
        plan.work = order
        return plan


def _wants_json(req: Request, query: bytes) -> bool:
    if b"format=json" in query.split(b"&"):
        return True
    return b"application/json" in req.headers.get(b"accept", b"")


def _not_modified(headers: dict[bytes, bytes], e: FileEntry) -> bool:
    inm = headers.get(b"if-none-match")
    if inm is not None:
        tags = [t.strip().removeprefix(b"W/") for t in inm.split(b",")]
        return b"*" in tags or e.etag in tags
    ims = headers.get(b"if-modified-since")
    if ims is not None:
        try:
            when = email.utils.parsedate_to_datetime(ims.decode("latin-1"))
        except (TypeError, ValueError, IndexError):
            return False
        return e.mtime <= int(when.timestamp())
    return False


def _if_range_holds(value: bytes | None, e: FileEntry) -> bool:
    """If-Range: apply the Range only if the validator still matches (strong ETag or date)."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith(b'"'):
        return value == e.etag
    return value == e.last_modified
