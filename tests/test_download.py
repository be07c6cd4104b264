"""`serverzoo get` and `serverzoo ls` against every model, python's http.server, nginx, and misbehaving servers.

The client always runs as the real command in a subprocess. Real servers are started
once per module, lazily, by kind; the misbehaving ones are small raw-socket servers on
loopback in a thread of the test process, so each test decides byte by byte what the
client sees (a body cut short, a server that stalls).
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import quote, urlsplit

import psutil
import pytest

from serverzoo.servers import MODELS
from serverzoo.servers.launch import ServerProcess

FILES = {"empty.bin": 0, "one.bin": 1, "odd.bin": 12_345, "big.bin": 3 * 1024 * 1024 + 13, "with space.txt": 11}
NESTED = "sub/nested.txt"


def content(name: str) -> bytes:
    size = FILES.get(name, 100)
    return random.Random(name).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _zoo_params() -> list:
    out = []
    for name, info in MODELS.items():
        missing = importlib.util.find_spec(f"serverzoo.servers.{info.module}") is None
        marks = [pytest.mark.skip(reason=f"servers/{info.module}.py is not written yet")] if missing else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


ZOO = _zoo_params()
ALL = [*ZOO, "http.server", "nginx"]
RANGED = [*ZOO, "nginx"]  # servers that answer Range with 206 and honour If-Range (http.server does not)


# -- servers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    # a world-readable directory in the system temp dir: nginx's workers run as nobody
    base = tempfile.mkdtemp(prefix="serverzoo-get-")
    os.chmod(base, 0o755)
    os.mkdir(os.path.join(base, "sub"), 0o755)
    for name in [*FILES, NESTED]:
        with open(os.path.join(base, name), "wb") as f:
            f.write(content(name))
        os.chmod(os.path.join(base, name), 0o644)
    yield base
    shutil.rmtree(base)


def _first_line(proc: subprocess.Popen, timeout: float) -> bytes:
    deadline, line = time.monotonic() + timeout, b""
    while not line.endswith(b"\n") and time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], deadline - time.monotonic())[0]:
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
    return line


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process we started, then SIGKILL it and its children if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(5)
    if proc.stdout:
        proc.stdout.close()


@contextmanager
def python_http_server(root: str) -> Iterator[str]:
    # -u: it prints "Serving HTTP on 127.0.0.1 port N" once listening; unbuffered, we read the port from it
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory", root, "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        found = re.search(rb" port (\d+) ", _first_line(proc, 15))
        assert found, "python -m http.server did not say its port"
        yield f"http://127.0.0.1:{int(found.group(1))}/"
    finally:
        _stop(proc)


NGINX_CONF = """\
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; autoindex on; }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def nginx_server(root: str) -> Iterator[str]:
    nginx = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    with tempfile.TemporaryDirectory(prefix="serverzoo-get-nginx-") as d:
        for _attempt in range(3):  # nginx cannot listen on port 0: a free port may be taken before it binds
            port = _free_port()
            with open(f"{d}/nginx.conf", "w") as f:
                f.write(NGINX_CONF.format(d=d, port=port, root=root))
            proc = subprocess.Popen(
                [nginx, "-p", d, "-e", f"{d}/error.log", "-c", f"{d}/nginx.conf", "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)  # a third-party server: it has no READY line to wait for
            if proc.poll() is None:
                break
        else:
            pytest.fail(f"nginx did not start: {open(f'{d}/error.log').read()[-1000:]}")
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            _stop(proc)


@pytest.fixture(scope="module")
def servers(root: str) -> Iterator[Callable[[str], str]]:
    """url_of(kind): a model name, "http.server" or "nginx", started on first use, stopped at module end."""
    urls: dict[str, str] = {}
    with ExitStack() as stack:

        def url_of(kind: str) -> str:
            if kind not in urls:
                if kind == "http.server":
                    urls[kind] = stack.enter_context(python_http_server(root))
                elif kind == "nginx":
                    urls[kind] = stack.enter_context(nginx_server(root))
                else:
                    urls[kind] = stack.enter_context(ServerProcess(kind, root)).url
            return urls[kind]

        yield url_of


class RawServer:
    """A loopback server that reads each request head, records it, and lets behave(fake, conn, head) answer."""

    def __init__(self, behave: Callable[[RawServer, socket.socket, bytes], None]) -> None:
        self.behave = behave
        self.heads: list[bytes] = []
        self.done = threading.Event()  # set at teardown: stalling behaviours wait on it
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.heads.append(head)
                try:
                    self.behave(self, conn, head)
                except OSError:
                    pass  # the client gave up first: that is what some tests want

    def __enter__(self) -> RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


# -- helpers ----------------------------------------------------------------------------
def run(*args: str, cwd: str | os.PathLike, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        [sys.executable, "-m", "serverzoo", *args],
        cwd=cwd,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()
    return proc


def ok(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""  # not a terminal: no progress bar, no chatter


def one_line_error(proc: subprocess.CompletedProcess[bytes], command: str = "get") -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert err.startswith(f"serverzoo {command}: ") and err.count("\n") == 1, err
    return err


def validators(url: str) -> tuple[str | None, str | None]:
    """(ETag, Last-Modified) of url, asked with HEAD."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("HEAD", parts.path)
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.getheader("ETag"), resp.getheader("Last-Modified")
    finally:
        conn.close()


def read(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_partial(
    dest: str | os.PathLike, data: bytes, validator: str | None = None, total: int | None = None, meta: bool = True
) -> None:
    with open(f"{dest}.part", "wb") as f:
        f.write(data)
    if meta:
        with open(f"{dest}.part.meta", "w") as f:
            json.dump({"validator": validator, "total": total}, f)


# -- get: exact bytes --------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL)
def test_get_downloads_exact_bytes(kind, servers, tmp_path):
    base = servers(kind)
    for name in FILES:
        ok(run("get", base + quote(name), cwd=tmp_path))  # the default name: the URL's last segment
        assert sha(read(tmp_path / name)) == sha(content(name)), name
    ok(run("get", base + NESTED, "-o", "nested-copy", cwd=tmp_path))
    assert read(tmp_path / "nested-copy") == content(NESTED)
    assert sorted(os.listdir(tmp_path)) == sorted([*FILES, "nested-copy"])  # no .part or .meta left behind


@pytest.mark.parametrize("kind", ALL)
def test_get_to_stdout(kind, servers, tmp_path):
    proc = run("get", servers(kind) + "big.bin", "-o", "-", cwd=tmp_path)
    ok(proc)
    assert sha(proc.stdout) == sha(content("big.bin"))
    assert os.listdir(tmp_path) == []


def test_get_never_overwrites_without_force(servers, tmp_path):
    base = servers("threading")
    (tmp_path / "odd.bin").write_bytes(b"mine")
    err = one_line_error(run("get", base + "odd.bin", cwd=tmp_path))
    assert "already exists" in err and "--force" in err
    assert read(tmp_path / "odd.bin") == b"mine"
    ok(run("get", base + "odd.bin", "--force", cwd=tmp_path))
    assert read(tmp_path / "odd.bin") == content("odd.bin")
    (tmp_path / "into").mkdir()
    ok(run("get", base + "odd.bin", "-o", "into", cwd=tmp_path))  # a directory keeps the URL's name
    assert read(tmp_path / "into" / "odd.bin") == content("odd.bin")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/",
        "http://127.0.0.1:9/a%2Fb",
        "http://127.0.0.1:9/..",
        "http://127.0.0.1:9/%2e%2e",
        "http://127.0.0.1:9/a%5Cb",
        "http://127.0.0.1:9/x%0A",
    ],
)
def test_get_refuses_unsafe_default_names(url, tmp_path):
    err = one_line_error(run("get", url, cwd=tmp_path))
    assert "-o PATH" in err
    assert os.listdir(tmp_path) == []


# -- get: resume -------------------------------------------------------------------------
@pytest.mark.parametrize("with_meta", [True, False], ids=["validator", "no-meta"])
@pytest.mark.parametrize("kind", RANGED)
def test_resume_continues_the_partial_file(kind, with_meta, servers, tmp_path):
    """The partial's bytes are kept as they are: a prefix that differs from the server's
    proves the client asked only for the rest (Range, If-Range) instead of starting again."""
    url = servers(kind) + "big.bin"
    etag, _ = validators(url)
    data, cut = content("big.bin"), 1_000_001
    marker = b"\xaa" * cut
    write_partial(tmp_path / "big.bin", marker, etag, len(data), meta=with_meta)
    ok(run("get", url, "--resume", cwd=tmp_path))
    assert sha(read(tmp_path / "big.bin")) == sha(marker + data[cut:])
    assert os.listdir(tmp_path) == ["big.bin"]


@pytest.mark.parametrize("kind", RANGED)
def test_resume_of_a_complete_partial_just_renames_it(kind, servers, tmp_path):
    url = servers(kind) + "odd.bin"
    write_partial(tmp_path / "odd.bin", content("odd.bin"), validators(url)[0], FILES["odd.bin"])
    ok(run("get", url, "--resume", cwd=tmp_path))  # the server answers 416 */size: nothing is missing
    assert read(tmp_path / "odd.bin") == content("odd.bin")
    assert os.listdir(tmp_path) == ["odd.bin"]


@pytest.mark.parametrize("stale", ['"stale-etag"', "Mon, 01 Jan 2001 00:00:00 GMT"], ids=["etag", "date"])
@pytest.mark.parametrize("kind", RANGED)
def test_resume_restarts_when_the_validator_changed(kind, stale, servers, tmp_path):
    url = servers(kind) + "big.bin"
    write_partial(tmp_path / "big.bin", b"\xaa" * 500_000, stale, FILES["big.bin"])
    ok(run("get", url, "--resume", cwd=tmp_path))
    assert sha(read(tmp_path / "big.bin")) == sha(content("big.bin"))
    assert os.listdir(tmp_path) == ["big.bin"]


def test_resume_restarts_when_the_server_ignores_range(servers, tmp_path):
    url = servers("http.server") + "big.bin"  # http.server answers every GET with 200 and the whole file
    write_partial(tmp_path / "big.bin", b"\xaa" * 500_000, validators(url)[1], FILES["big.bin"])
    ok(run("get", url, "--resume", cwd=tmp_path))
    assert sha(read(tmp_path / "big.bin")) == sha(content("big.bin"))


def test_without_resume_a_partial_is_discarded(servers, tmp_path):
    url = servers("threading") + "odd.bin"
    write_partial(tmp_path / "odd.bin", b"\xaa" * 100, validators(url)[0], FILES["odd.bin"])
    ok(run("get", url, cwd=tmp_path))
    assert read(tmp_path / "odd.bin") == content("odd.bin")
    assert os.listdir(tmp_path) == ["odd.bin"]


# -- get: failures -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL)
def test_404_is_one_line_and_leaves_nothing(kind, servers, tmp_path):
    err = one_line_error(run("get", servers(kind) + "no-such-file.bin", cwd=tmp_path))
    assert "404" in err
    if kind not in ("http.server", "nginx"):
        assert "no such file" in err  # the server's own short error text is quoted
    assert os.listdir(tmp_path) == []


def test_refused_connection(tmp_path):
    with socket.socket() as s:  # bound, never listening: the kernel refuses connections to it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        err = one_line_error(run("get", f"http://127.0.0.1:{port}/x.bin", cwd=tmp_path))
    assert "connection refused" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "http:///x", "127.0.0.1/x", "http://127.0.0.1:99999/x", "http://[::1/x"]
)
def test_bad_url(url, tmp_path):
    assert "bad URL" in one_line_error(run("get", url, cwd=tmp_path))
    assert "bad URL" in one_line_error(run("ls", url, cwd=tmp_path), "ls")


def test_dns_failure_in_a_private_network_namespace(tmp_path):
    """In a new network namespace (loopback down, no route) a lookup fails at once, without real DNS traffic."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"]).returncode != 0:
        pytest.skip("cannot create a network namespace here (needs unshare and CAP_SYS_ADMIN)")
    proc = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "serverzoo", "get", "http://no-such-host.invalid/x"],
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
    )
    assert b"Traceback" not in proc.stderr
    assert "cannot resolve host no-such-host.invalid" in one_line_error(proc)


SIZE = 100_000
HEAD = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "v1"\r\nContent-Type: application/octet-stream\r\n\r\n'
BODY = random.Random("fake").randbytes(SIZE)


def short_body(fake: RawServer, conn: socket.socket, head: bytes) -> None:
    conn.sendall(HEAD % SIZE + BODY[:40_000])  # then close: 60,000 bytes never come


def short_chunked_body(fake: RawServer, conn: socket.socket, head: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % SIZE + BODY[:40_000])


@pytest.mark.parametrize("behave", [short_body, short_chunked_body], ids=["content-length", "chunked"])
def test_short_body_fails_and_leaves_no_file(behave, tmp_path):
    with RawServer(behave) as fake:
        err = one_line_error(run("get", fake.url + "f.bin", cwd=tmp_path))
    assert "closed the connection" in err and "--resume" in err
    assert not (tmp_path / "f.bin").exists()
    assert read(tmp_path / "f.bin.part") == BODY[:40_000]  # what did arrive is kept for --resume


def test_short_body_then_resume_asks_for_the_rest(tmp_path):
    def first_short_then_the_rest(fake: RawServer, conn: socket.socket, head: bytes) -> None:
        if len(fake.heads) == 1:
            return short_body(fake, conn, head)
        conn.sendall(
            b'HTTP/1.1 206 Partial Content\r\nContent-Length: 60000\r\nETag: "v1"\r\n'
            b"Content-Range: bytes 40000-99999/100000\r\n\r\n" + BODY[40_000:]
        )

    with RawServer(first_short_then_the_rest) as fake:
        one_line_error(run("get", fake.url + "f.bin", cwd=tmp_path))
        ok(run("get", fake.url + "f.bin", "--resume", cwd=tmp_path))
    assert read(tmp_path / "f.bin") == BODY
    second = fake.heads[1].lower()
    assert b"\r\nrange: bytes=40000-\r\n" in second and b'\r\nif-range: "v1"\r\n' in second
    assert os.listdir(tmp_path) == ["f.bin"]


def test_resume_restarts_when_a_server_ignores_if_range_but_the_file_changed(tmp_path):
    def ranges_without_if_range(fake: RawServer, conn: socket.socket, head: bytes) -> None:
        found = re.search(rb"\r\nrange: bytes=(\d+)-\r\n", head.lower())
        if found is None:
            return conn.sendall(HEAD % SIZE + BODY)
        start = int(found.group(1))
        conn.sendall(
            b'HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\nETag: "v1"\r\n'
            b"Content-Range: bytes %d-%d/%d\r\n\r\n" % (SIZE - start, start, SIZE - 1, SIZE) + BODY[start:]
        )

    write_partial(tmp_path / "f.bin", b"\xaa" * 1000, '"v0"', SIZE)  # from an older version of the file
    with RawServer(ranges_without_if_range) as fake:
        ok(run("get", fake.url + "f.bin", "--resume", cwd=tmp_path))
    assert read(tmp_path / "f.bin") == BODY
    assert [b"range:" in h.lower() for h in fake.heads] == [True, False]  # the 206 of a new ETag was dropped


def test_server_that_disappears_without_answering(tmp_path):
    with RawServer(lambda fake, conn, head: None) as fake:  # reads the request, closes without a word
        err = one_line_error(run("get", fake.url + "f.bin", cwd=tmp_path))
    assert "without a response" in err
    assert os.listdir(tmp_path) == []


def stall_before_answering(fake: RawServer, conn: socket.socket, head: bytes) -> None:
    fake.done.wait(20)  # until the test ends


def stall_mid_body(fake: RawServer, conn: socket.socket, head: bytes) -> None:
    conn.sendall(HEAD % SIZE + BODY[:1000])
    fake.done.wait(20)


@pytest.mark.parametrize("behave", [stall_before_answering, stall_mid_body], ids=["no-answer", "mid-body"])
def test_read_timeout(behave, tmp_path):
    with RawServer(behave) as fake:  # the subprocess timeout bounds the test if the client never gives up
        err = one_line_error(run("get", fake.url + "f.bin", "--timeout", "0.5", cwd=tmp_path, timeout=15))
    assert "timed out" in err
    assert not (tmp_path / "f.bin").exists()


def test_ctrl_c_keeps_the_partial_for_resume(tmp_path):
    with RawServer(stall_mid_body) as fake:
        # SIGINT back to its default: a shell starts background jobs with it ignored, which Python keeps
        proc = subprocess.Popen(
            [sys.executable, "-m", "serverzoo", "get", fake.url + "f.bin"],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 15
            part = tmp_path / "f.bin.part"
            while not (part.exists() and part.stat().st_size == 1000) and time.monotonic() < deadline:
                time.sleep(0.02)  # the client writes what it receives at once: wait for all the server sent
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and b"Traceback" not in err, err
    assert err.decode().startswith("serverzoo get: interrupted") and err.count(b"\n") == 1, err
    assert "--resume" in err.decode()
    assert read(tmp_path / "f.bin.part") == BODY[:1000] and not (tmp_path / "f.bin").exists()


# -- ls ------------------------------------------------------------------------------------
EXPECTED = sorted([*FILES, "sub/"])


@pytest.mark.parametrize("kind", ALL)
def test_ls_prints_names_and_sizes(kind, servers, tmp_path):
    proc = run("ls", servers(kind), cwd=tmp_path)
    ok(proc)
    lines = proc.stdout.decode().splitlines()
    if kind == "http.server":  # its index gives no sizes: names only
        assert sorted(lines) == EXPECTED
    else:
        rows = {line.rsplit(None, 1)[0]: line.rsplit(None, 1)[1] for line in lines}
        assert rows == {**{name: str(size) for name, size in FILES.items()}, "sub/": "-"}
    listing = run("ls", "--json", servers(kind), cwd=tmp_path)
    ok(listing)
    entries = {e["name"]: (e["type"], e["size"]) for e in json.loads(listing.stdout)}
    sizes = (lambda n: None) if kind == "http.server" else FILES.get
    assert entries == {**{name: ("file", sizes(name)) for name in FILES}, "sub": ("dir", None)}


@pytest.mark.parametrize("kind", ALL)
def test_ls_subdirectory_without_trailing_slash(kind, servers, tmp_path):
    proc = run("ls", servers(kind) + "sub", cwd=tmp_path)  # nginx and http.server redirect to sub/
    ok(proc)
    assert proc.stdout.decode().split()[0] == "nested.txt"


@pytest.mark.parametrize("kind", ["threading", "http.server", "nginx"])
def test_ls_errors_are_one_line(kind, servers, tmp_path):
    assert "404" in one_line_error(run("ls", servers(kind) + "nope/", cwd=tmp_path), "ls")
    err = one_line_error(run("ls", servers(kind) + "odd.bin", cwd=tmp_path), "ls")
    assert "not a directory listing" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        err = one_line_error(run("ls", f"http://127.0.0.1:{s.getsockname()[1]}/", cwd=tmp_path), "ls")
    assert "connection refused" in err
