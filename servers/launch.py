"""Start a server model as a real subprocess and stop it cleanly (tests, bench, scripts).

The child prints `READY http://HOST:PORT/`; we block on that line (with a deadline)
instead of polling the port. Stopping sends SIGTERM to the PID we started, waits for
the graceful exit, and only then escalates to SIGKILL, so no process is left behind.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO


class ServerStartError(RuntimeError):
    pass


class ServerProcess:
    """A running `serverzoo serve MODEL` child. Use as a context manager."""

    def __init__(
        self,
        model: str,
        root: str,
        *args: str,
        host: str = "127.0.0.1",
        cpus: Sequence[int] | None = None,
        start_timeout: float = 20.0,
        env: dict[str, str] | None = None,
        stderr: int | None = None,
    ) -> None:
        """stderr: a descriptor to hand the server as its stderr (a test's pipe); by default a
        temporary file that stderr_text() reads."""
        self.model = model
        self.argv = [
            sys.executable,
            "-m",
            "serverzoo",
            "serve",
            model,
            "--root",
            str(root),
            "--host",
            host,
            "--port",
            "0",
            *args,
        ]
        self.cpus = list(cpus) if cpus else None
        self.start_timeout = start_timeout
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._stderr: IO[bytes] | None = None
        self._stderr_fd = stderr
        self._stderr_at_stop = ""  # what stderr_text() returns once stop() has closed the file

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    @property
    def host(self) -> str:
        return self.url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")

    def start(self) -> ServerProcess:
        cpus = self.cpus
        preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        # stderr goes to an unlinked temporary file: a pipe nobody drains could fill and block the server
        if self._stderr_fd is None:
            self._stderr = tempfile.TemporaryFile()
        stderr = self._stderr if self._stderr_fd is None else self._stderr_fd
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, preexec_fn=preexec, env=self.env
        )
        deadline = time.monotonic() + self.start_timeout
        line = b""
        assert self.proc.stdout is not None  # stdout=PIPE
        fd = self.proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1)
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"READY "):
            err = self.stderr_text()
            self.stop(timeout=2)
            raise ServerStartError(f"{' '.join(self.argv[2:])} did not become ready: {line!r} {err}")
        self.url = line.split()[1].decode()
        return self

    def stderr_text(self) -> str:
        """What the server wrote to stderr so far (the last 4000 characters)."""
        if self._stderr is None:
            return self._stderr_at_stop
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to timeout, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._stderr is not None:  # the server is gone: keep what it wrote, free the file
            self._stderr_at_stop = self.stderr_text()
            self._stderr.close()
            self._stderr = None
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
