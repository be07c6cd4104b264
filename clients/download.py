"""`serverzoo get` and `serverzoo ls`: a careful downloader and a directory lister.

`get` streams the body to DEST.part in bounded chunks, next to the destination, and
renames it to DEST only when the byte count equals Content-Length (or the total of
Content-Range). The validator of the response (a strong ETag, else Last-Modified) and
its length are kept in DEST.part.meta, so `--resume` can ask for the rest with Range
and If-Range; a 200 answer, a changed validator or length, or a range that does not
start where the partial ends, restarts from byte zero. A partial with no .meta file
is resumed with a plain Range, as `curl -C -` does. An existing DEST is never
overwritten without --force.

Every failure ends with ONE line on stderr and exit code 1 (130 if interrupted).
"""

from __future__ import annotations

import fcntl
import http.client
import io
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import BinaryIO
from urllib.parse import quote, unquote, urljoin, urlsplit

import click

CHUNK = 256 * 1024  # bytes held in memory at a time
MAX_REDIRECTS = 5
MAX_LISTING = 32 * 1024 * 1024  # a listing is parsed in memory: refuse absurd ones
USER_AGENT = "serverzoo-get/0.1"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ClientError(Exception):
    """The one line to print before exiting with `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(_CONTROL.sub(" ", message))
        self.code = code


# -- requests -------------------------------------------------------------------------
def _split(url: str) -> tuple[str, int, str]:
    """(host, port, request target) of an http:// URL, or ClientError."""
    try:
        parts = urlsplit(url)
        port = 80 if parts.port is None else parts.port
    except ValueError as exc:
        raise ClientError(f"bad URL {url!r}: {exc}") from None
    if parts.scheme != "http":
        raise ClientError(f"bad URL {url!r}: only http:// URLs are supported")
    if not parts.hostname:
        raise ClientError(f"bad URL {url!r}: no host")
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")  # spaces, UTF-8: percent-encoded
    if parts.query:
        target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=~?")
    return parts.hostname, port, target


def describe(exc: BaseException, url: str, timeout: float) -> str:
    """One line for a network, HTTP framing or file error."""
    where = urlsplit(url).netloc
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {urlsplit(url).hostname}: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where}"
    if isinstance(exc, TimeoutError):
        return f"timed out: nothing from {where} for {timeout:g} s"
    if isinstance(exc, http.client.IncompleteRead):
        return f"{where} closed the connection before the body was complete"
    if isinstance(exc, http.client.RemoteDisconnected):
        return f"{where} closed the connection without a response"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP response from {where}: {type(exc).__name__} {exc}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, OSError):
        return f"{where}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def request(
    url: str, headers: dict[str, str], timeout: float
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
    """GET url following redirects. Returns the connection, its response (body unread) and the final URL.

    timeout bounds connecting and every read: it is the longest silence we accept.
    """
    for _ in range(MAX_REDIRECTS + 1):
        host, port, target = _split(url)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", target, headers={"User-Agent": USER_AGENT, **headers})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException, UnicodeError) as exc:
            conn.close()
            raise ClientError(describe(exc, url, timeout)) from None
        location = resp.getheader("Location")
        if resp.status not in (301, 302, 303, 307, 308) or not location:
            return conn, resp, url
        conn.close()
        url = urljoin(url, location)
    raise ClientError(f"more than {MAX_REDIRECTS} redirects, last to {url}")


def status_error(resp: http.client.HTTPResponse, url: str) -> ClientError:
    """'URL: 404 Not Found: no such file', quoting the first line of a short text/plain body."""
    said = f"{resp.status} {resp.reason}".strip()
    if (resp.getheader("Content-Type") or "").startswith("text/plain"):
        try:
            line = resp.read(300).decode("utf-8", "replace").strip().split("\n")[0].strip()
        except (OSError, http.client.HTTPException):
            line = ""
        if line:
            said = line if line.startswith(str(resp.status)) else f"{said}: {line}"
    return ClientError(f"{url}: {said}")


# -- get --------------------------------------------------------------------------------
@dataclass
class Body:
    """A response body to copy: it fills bytes [start, total) of the file. resp None: nothing left."""

    conn: http.client.HTTPConnection | None
    resp: http.client.HTTPResponse | None
    url: str
    start: int
    total: int | None  # None: the server did not say (no Content-Length)
    validator: str | None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def validator_of(resp: http.client.HTTPResponse) -> str | None:
    """What If-Range can carry: a strong ETag, else Last-Modified."""
    etag = resp.getheader("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.getheader("Last-Modified")


def _content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """'bytes a-b/n' -> (a, b, n); 'bytes */n' -> (None, None, n); '*' totals are None."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None, None
    a, b, n = (int(g) if g and g != "*" else None for g in m.groups())
    return a, b, n


def open_body(url: str, timeout: float, offset: int = 0, known: dict | None = None) -> Body:
    """GET url; with offset > 0 ask for the rest of a partial described by known (validator, total).

    Whatever the server answers, the Body says where its bytes go: a 200, a changed
    validator or length, or a range that starts elsewhere all mean start again at 0.
    """
    known = known or {}
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if known.get("validator"):
            headers["If-Range"] = known["validator"]
    conn, resp, url = request(url, headers, timeout)
    body = Body(conn, resp, url, 0, resp.length, validator_of(resp))
    if resp.status == 200:
        return body
    if offset and resp.status in (206, 416):
        first, last, total = _content_range(resp.getheader("Content-Range"))
        same = (known.get("validator") in (None, body.validator) or body.validator is None) and known.get("total") in (
            None,
            total,
        )
        if resp.status == 206 and same and first == offset and last is not None:
            body.start, body.total = offset, total if total is not None else last + 1
            return body
        if resp.status == 416 and total == offset and same:  # the partial is already complete
            conn.close()
            return Body(None, None, url, offset, offset, known.get("validator"))
        conn.close()
        return open_body(url, timeout)  # the partial cannot be continued: start again from byte 0
    try:
        raise status_error(resp, url)
    finally:
        conn.close()


def copy_body(body: Body, out: BinaryIO, advance: Callable[[int], object]) -> None:
    """Stream the body to out in bounded chunks; ClientError unless exactly the announced bytes came."""
    got = 0
    if body.resp is not None:
        while chunk := body.resp.read1(CHUNK):
            out.write(chunk)
            out.flush()  # every byte received is in the file (or pipe) even if we are stopped now
            got += len(chunk)
            advance(len(chunk))
    end = body.start + got
    if body.total is not None and end != body.total:
        raise ClientError(f"{urlsplit(body.url).netloc} closed the connection after {end} of {body.total} bytes")


@contextmanager
def progress_bar(show: bool, label: str, total: int | None, done: int) -> Iterator[Callable[[int], object]]:
    """Yield advance(n): a rich progress bar with rate and ETA on stderr, or nothing."""
    if not show:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def name_from_url(url: str) -> str:
    """The last path segment, decoded; refused if it could name anything but a plain file here."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if name in ("", ".", "..") or "/" in name or "\\" in name or _CONTROL.search(name):
        raise ClientError(f"cannot take a safe file name from {url!r}; say where to save it with -o PATH")
    return name


def save(url: str, dest: str, *, resume: bool, timeout: float, show: bool) -> None:
    """Download url to dest through dest.part (see the module docstring)."""
    part, meta = dest + ".part", dest + ".part.meta"
    with open(os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClientError(f"{part} is being written by another download") from None
        offset, known = (os.fstat(f.fileno()).st_size, _read_meta(meta)) if resume else (0, {})
        body, streaming = None, False
        try:
            body = open_body(url, timeout, offset, known)
            with open(meta, "w") as m:
                json.dump({"url": url, "validator": body.validator, "total": body.total}, m)
            f.seek(body.start)
            f.truncate()
            streaming = True
            with progress_bar(show, os.path.basename(dest), body.total, body.start) as advance:
                copy_body(body, f, advance)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name says the file is complete
            os.replace(part, dest)
            os.unlink(meta)
        except (ClientError, OSError, http.client.HTTPException, KeyboardInterrupt) as exc:
            message = (
                str(exc)
                if isinstance(exc, ClientError)
                else "interrupted"
                if isinstance(exc, KeyboardInterrupt)
                else describe(exc, url, timeout)
            )
            try:
                f.flush()
            except OSError:  # a full disk fails again here; what reached the file is what we keep
                pass
            kept = os.fstat(f.fileno()).st_size
            if kept == 0:
                for path in (part, meta):
                    if os.path.exists(path):
                        os.unlink(path)
            elif streaming:
                message += f"; {kept} bytes kept in {part} (--resume continues)"
            raise ClientError(message, 130 if isinstance(exc, KeyboardInterrupt) else 1) from None
        finally:
            if body is not None:
                body.close()


def _read_meta(path: str) -> dict:
    try:
        with open(path) as f:
            meta = json.load(f)
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def to_stdout(url: str, *, timeout: float, show: bool) -> None:
    body = open_body(url, timeout)
    try:
        with progress_bar(show, url, body.total, 0) as advance:
            copy_body(body, sys.stdout.buffer, advance)
        sys.stdout.buffer.flush()
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        raise ClientError(describe(exc, url, timeout)) from None
    finally:
        body.close()


@contextmanager
def one_line_errors(command: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        click.echo(f"serverzoo {command}: {exc}", err=True)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        click.echo(f"serverzoo {command}: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:  # `serverzoo get URL -o - | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:  # a local file: -o in a missing directory, no permission...
        click.echo(
            f"serverzoo {command}: {exc.filename}: {exc.strerror}" if exc.filename else f"serverzoo {command}: {exc}",
            err=True,
        )
        sys.exit(1)


TIMEOUT = click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Seconds to wait for the connection and for each piece of data.",
)


@click.command("get")
@click.argument("url")
@click.option(
    "-o",
    "--output",
    metavar="PATH",
    help="Where to save: a file, an existing directory, or - for stdout. [the URL's last path segment]",
)
@click.option("--resume", is_flag=True, help="Continue PATH.part left by an interrupted download.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it already exists.")
@TIMEOUT
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (there is none when stderr is not a terminal).")
def get_command(url: str, output: str | None, resume: bool, force: bool, timeout: float, quiet: bool) -> None:
    """Download URL, verify its length, rename it into place; --resume continues a partial one."""
    with one_line_errors("get"):
        show = not quiet and sys.stderr.isatty()
        _split(url)  # a bad URL is reported before anything touches the disk
        if output == "-":
            if resume:
                raise ClientError("--resume needs a file to continue, not stdout")
            return to_stdout(url, timeout=timeout, show=show)
        dest = output or name_from_url(url)
        if output and os.path.isdir(output):
            dest = os.path.join(output, name_from_url(url))
        if os.path.lexists(dest) and not force:
            raise ClientError(f"{dest} already exists (--force overwrites it)")
        save(url, dest, resume=resume, timeout=timeout, show=show)


# -- ls ---------------------------------------------------------------------------------
@dataclass
class Entry:
    name: str
    is_dir: bool
    size: int | None  # None: the listing does not say


class _Links(HTMLParser):
    """Collects (href, text after the link up to the next one): nginx writes date and size there."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[list[str]] = []
        self._in_link = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            self.links.append([href, ""])
        if tag == "a":
            self._in_link = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_link = False

    def handle_data(self, data: str) -> None:
        if self.links and not self._in_link:
            self.links[-1][1] += data


def entries_from_html(html: str, base: str) -> list[Entry]:
    """Links to direct children of base (no parent, sort or external links), in page order."""
    base_parts = urlsplit(base)
    base_path = base_parts.path.rsplit("/", 1)[0] + "/"
    parser = _Links()
    parser.feed(html)
    found: dict[str, Entry] = {}
    for href, after in parser.links:
        link = urlsplit(urljoin(base, href))
        rest = link.path[len(base_path) :]
        if (
            link.netloc != base_parts.netloc
            or link.query
            or not link.path.startswith(base_path)
            or not rest
            or "/" in rest.rstrip("/")
        ):
            continue
        tokens = after.split("\n")[0].split()
        size = int(tokens[-1]) if len(tokens) >= 2 and tokens[-1].isdigit() else None
        entry = found.setdefault(rest, Entry(unquote(rest.rstrip("/")), rest.endswith("/"), size))
        entry.size = entry.size if size is None else size
    return list(found.values())


def entries_from_json(doc: object) -> list[Entry]:
    """serverzoo's {"entries": [...]} or nginx's `autoindex_format json` list."""
    items = doc.get("entries") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        raise ClientError("the JSON answer is not a directory listing")
    return [
        Entry(
            i["name"],
            i.get("type") in ("dir", "directory"),
            i["size"] if isinstance(i.get("size"), int) and i.get("type") == "file" else None,
        )
        for i in items
    ]


def list_directory(url: str, timeout: float) -> list[Entry]:
    conn, resp, final = request(url, {"Accept": "application/json, text/html;q=0.9, */*;q=0.1"}, timeout)
    try:
        if resp.status != 200:
            raise status_error(resp, final)
        body = io.BytesIO()

        def bounded(n: int) -> None:
            if body.tell() > MAX_LISTING:
                raise ClientError(f"{final}: the listing is larger than {MAX_LISTING} bytes")

        copy_body(Body(conn, resp, final, 0, resp.length, None), body, bounded)
        ctype = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
        charset = resp.headers.get_content_charset() or "utf-8"
        if ctype == "application/json":
            try:
                return entries_from_json(json.loads(body.getvalue()))
            except ValueError:
                raise ClientError(f"{final}: the JSON listing does not parse") from None
        if ctype in ("text/html", "application/xhtml+xml"):
            return entries_from_html(body.getvalue().decode(charset, "replace"), final)
        raise ClientError(f"{final} is not a directory listing (Content-Type: {ctype or 'none'})")
    except (OSError, http.client.HTTPException) as exc:
        raise ClientError(describe(exc, final, timeout)) from None
    finally:
        conn.close()


@click.command("ls")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, type, size}.")
@TIMEOUT
def ls_command(url: str, as_json: bool, timeout: float) -> None:
    """Print the directory listing at URL: names, and sizes where the server gives them.

    serverzoo servers answer in JSON; other servers' HTML indexes (nginx autoindex,
    python -m http.server) are parsed for their links.
    """
    with one_line_errors("ls"):
        entries = list_directory(url, timeout)
        if as_json:
            click.echo(
                json.dumps(
                    [{"name": e.name, "type": "dir" if e.is_dir else "file", "size": e.size} for e in entries],
                    ensure_ascii=False,
                    indent=1,
                )
            )
            return
        names = [_CONTROL.sub("?", e.name) + ("/" if e.is_dir else "") for e in entries]
        if not any(e.size is not None for e in entries):
            for name in names:
                click.echo(name)
            return
        sizes = ["-" if e.size is None else str(e.size) for e in entries]
        name_w, size_w = max(map(len, names)), max(map(len, sizes))
        for name, size in zip(names, sizes):
            click.echo(f"{name:<{name_w}}  {size:>{size_w}}")
