"""nginx as a yardstick server: one worker, pinned, a config written to a temporary prefix.

    with NginxServer(root, tuned=True, cpus=[0]) as ngx:
        print(ngx.url, ngx.pid)

tuned=True is the fast static-file setup (`sendfile off; open_file_cache ...`), tuned=False
nginx's stock `sendfile on; tcp_nopush on`. nginx workers run as `nobody`, so the root and
every directory above it must be readable and searchable by others; that is checked up
front (a 0700 temporary directory would otherwise give 403s that look like a slow server).
The master is stopped by its PID (SIGTERM, nginx's fast shutdown; SIGKILL for it and its
workers if it does not exit).

On another network host (the server side of an emulated link), give the address to listen
on, `wrap` (argv -> the argv that runs it there, e.g. `ip netns exec NS ...`, which execs so
the PID stays nginx's) and `namespace` (a context in which new sockets belong to that host:
the free-port probe and the readiness check run there).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import psutil

STOCK = "sendfile on; tcp_nopush on;"
TUNED = "sendfile off; open_file_cache max=1000 inactive=60s; open_file_cache_valid 60s;"
CONNECTIONS = 8192  # worker_connections at least
FILES_BESIDE_CONNECTIONS = 2048  # the open file cache's descriptors, logs, the listener

CONFIG = """\
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {open_files};
events {{ worker_connections {connections}; }}
http {{
    default_type application/octet-stream;
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    {file_settings}
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen {host}:{port} reuseport backlog=4096;
        root {root};
    }}
}}
"""


class NginxError(RuntimeError):
    pass


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def check_world_readable(root: str) -> None:
    """Raise NginxError naming the first directory `nobody` cannot enter (or the root it cannot list)."""
    path = os.path.realpath(root)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode) or (st.st_mode & 0o005) != 0o005:
        raise NginxError(f"nginx workers run as nobody: {path} must be world-readable (chmod o+rx)")
    parent = os.path.dirname(path)
    while True:
        if not os.stat(parent).st_mode & 0o001:
            raise NginxError(f"nginx workers run as nobody: {parent} must be world-searchable (chmod o+x)")
        if parent == os.path.dirname(parent):
            return
        parent = os.path.dirname(parent)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class NginxServer:
    """A private nginx serving `root` on a free loopback port. Use as a context manager."""

    def __init__(
        self,
        root: str,
        *,
        tuned: bool = True,
        cpus: Sequence[int] | None = (0,),
        workers: int = 1,
        host: str = "127.0.0.1",
        start_timeout: float = 10.0,
        wrap: Callable[[list[str]], list[str]] | None = None,
        namespace: Callable[[], AbstractContextManager] | None = None,
        connections: int = CONNECTIONS,
    ) -> None:
        """connections: how many it must hold at once (thousands of idle clients, say). nginx starts
        closing idle keep-alive connections to reuse them once fewer than a sixteenth of its
        worker_connections are free, so that is set to twice this, and never below CONNECTIONS."""
        binary = nginx_binary()
        if binary is None:
            raise NginxError("nginx is not installed (Debian: apt-get install nginx-light)")
        check_world_readable(root)
        self.binary = binary
        self.root = os.path.realpath(root)
        self.tuned = tuned
        self.cpus = list(cpus) if cpus else None
        self.workers = workers
        self.host = host
        self.start_timeout = start_timeout
        self.wrap = wrap or (lambda argv: argv)
        self.namespace = namespace or nullcontext
        self.connections = max(2 * connections, CONNECTIONS)  # worker_connections
        self.port = 0
        self.prefix = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def pid(self) -> int:
        """The master's PID; pass it as the server PID to sample the whole process tree."""
        assert self.proc is not None
        return self.proc.pid

    def shown_argv(self) -> list[str]:
        """The command line as results record it (the temporary prefix left out)."""
        return self.wrap([self.binary, "-c", "nginx.conf"])

    def config_text(self) -> str:
        return CONFIG.format(
            workers=self.workers,
            prefix=self.prefix,
            host=self.host,
            port=self.port,
            root=self.root,
            file_settings=TUNED if self.tuned else STOCK,
            connections=self.connections,
            open_files=self.connections + FILES_BESIDE_CONNECTIONS,
        )

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.prefix, "error.log"), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def start(self) -> NginxServer:
        self.prefix = tempfile.mkdtemp(prefix="serverzoo-nginx-")
        for _attempt in range(5):  # a free port can be taken between probing and nginx binding it
            with self.namespace():
                self.port = _free_port(self.host)
            conf = os.path.join(self.prefix, "nginx.conf")
            with open(conf, "w") as f:
                f.write(self.config_text())
            self.proc = subprocess.Popen(
                self.wrap(
                    [
                        self.binary,
                        "-p",
                        self.prefix,
                        "-e",
                        os.path.join(self.prefix, "error.log"),
                        "-c",
                        conf,
                        "-g",
                        "daemon off;",
                    ]
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=(lambda cpus=self.cpus: os.sched_setaffinity(0, cpus)) if self.cpus else None,
            )
            if self._wait_ready():
                return self
            self._kill()
            if "Address already in use" not in self.error_log():
                break
        log = self.error_log()
        self.stop()
        raise NginxError(f"nginx did not start: {log.strip()[-600:] or 'no error log'}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with self.namespace(), socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        return False

    def _kill(self) -> None:
        """SIGKILL the master and the workers it forked (they would outlive a killed master)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            workers = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            workers = []
        self.proc.kill()
        self.proc.wait(5)
        for w in workers:
            try:
                w.kill()
            except psutil.Error:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nginx's fast shutdown: the master stops its workers
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        if self.prefix:
            shutil.rmtree(self.prefix, ignore_errors=True)
            self.prefix = ""

    def __enter__(self) -> NginxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
