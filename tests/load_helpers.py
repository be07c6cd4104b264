"""Helpers for the load generator's tests: a corpus, misbehaving servers, the CLI."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

SERVERS = os.path.join(os.path.dirname(__file__), "loadgen_servers.py")


class MisbehavingServer:
    """tests/loadgen_servers.py BEHAVIOUR FILE N as a subprocess; stop() returns the requests it saw."""

    def __init__(self, behaviour: str, path: str, n: int = 10) -> None:
        self.argv = [sys.executable, SERVERS, behaviour, path, str(n)]
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.count: int | None = None

    def __enter__(self) -> MisbehavingServer:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{self.argv} did not start: {line!r}")
        self.url = line.split()[1]
        return self

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                out, _ = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, _ = self.proc.communicate(timeout=5)
            for line in out.splitlines():
                if line.startswith("COUNT "):
                    self.count = int(line.split()[1])
        self.proc = None
        return self.count

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`serverzoo ARGS...` in a subprocess, text output."""
    return subprocess.run(
        [sys.executable, "-m", "serverzoo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then closed, so it is free but not listening)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def local_cluster(workers: int, **extra):
    """A Dask LocalCluster on loopback: worker processes of one thread, no dashboard, the scheduler's
    HTTP endpoints on a free port (not 8787, which parallel tests would contend for), quiet logs."""
    import logging

    import distributed

    return distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.ERROR,
        **extra,
    )


def run_in_pty(argv: list[str], timeout: float = 60, columns: int = 100) -> tuple[int, str]:
    """Run argv with stdin, stdout and stderr on a new pseudo-terminal of `columns` x 30; (exit code, output).

    The output is everything the terminal received, escape codes included. A process still
    running at the timeout is killed (its session, which it leads) and the test fails.
    """
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS")}
    env["TERM"] = "xterm-256color"
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    finally:
        os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every holder of the terminal's other side has closed it
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            raise AssertionError(f"{argv} still running after {timeout} s; output so far: {bytes(out[-2000:])!r}")
        return proc.wait(10), out.decode(errors="replace")
    finally:
        os.close(master)


@contextlib.contextmanager
def one_kib_server(root: str) -> Iterator[str]:
    """A corpus of one 1 KiB file in root, served by a real asyncio server process: yields the file's URL."""
    from serverzoo.clients.loadgen.corpus import write_corpus
    from serverzoo.servers.launch import ServerProcess

    write_corpus(root, ["1KiB"])
    with ServerProcess("asyncio", root) as srv:
        yield srv.url.rstrip("/") + "/1KiB.bin"
