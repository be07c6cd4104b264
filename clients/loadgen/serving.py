"""`--serve MODEL` and `--link NAME`: the server a run starts for itself, and where it runs.

served(opts, hosts) starts `serverzoo serve` (on the link's server host when there is a
link, on loopback otherwise), yields a ServedRun, and stops the server gracefully when the
run is over, whatever happens; a link it built itself is removed too. The run's worker
processes are started inside ServedRun.client_side(): processes forked there live on the
link's client host, so nothing else in the generator needs to know about namespaces.

A terminal's Ctrl-C is the coordinator's alone, as it is for the worker processes (which get
sessions of their own): it ends the measured window, and only then is the server stopped.
A server that saw the Ctrl-C too would shut down inside the window and fail its last requests.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING

from ...servers import resolve
from .options import LoadOptions

if TYPE_CHECKING:
    from ...servers.launch import ServerProcess
    from ..links import LinkedHosts

STDERR_TAIL = 1500


class ServerNotStarted(RuntimeError):
    """The --serve server did not come up; the message is one line, details has its stderr."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class ServedRun:
    """The started server (and the link it runs over, if any) of one run."""

    def __init__(self, opts: LoadOptions, server: ServerProcess, hosts: LinkedHosts | None) -> None:
        self.server = server
        self.hosts = hosts
        self.warnings: list[str] = []
        self.record: dict = {
            "name": opts.serve,
            "model": resolve(opts.serve).model.name,
            "root": opts.root or opts.corpus,
            "argv": list(server.argv),
            "cpus": opts.server_cpus,
            "pid": None,
            "url": None,
            "exit_code": None,
            "clean_stop": None,
            "problem": None,
        }

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.pid

    def client_side(self) -> AbstractContextManager[object]:
        """Sockets made and processes started in this block are on the client host (loopback: here)."""
        return self.hosts.client_namespace() if self.hosts is not None else nullcontext()

    def started(self) -> None:
        self.record.update(pid=self.server.pid, url=self.server.url)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s); an unclean exit becomes a one-line warning."""
        died = self.server.proc.poll() if self.server.proc is not None else None
        code = self.server.stop()
        stderr = self.server.stderr_text()
        problems = []
        if died is not None:
            problems.append(f"it exited during the run (exit code {died})")
        elif code != 0:
            problems.append(f"exit code {code} after SIGTERM")
        if "Traceback" in stderr:
            problems.append(f"a traceback on its stderr ({_last_line(stderr)})")
        self.record.update(exit_code=code, clean_stop=not problems, problem=", ".join(problems) or None)
        if problems:
            self.record["stderr_tail"] = stderr[-STDERR_TAIL:]
            self.warnings.append(
                f"the server started for this run ({self.record['name']}, pid {self.server.pid}) "
                f"did not stop cleanly: {self.record['problem']}"
            )

    def add_to(self, doc: dict) -> None:
        """Record the server, the link and any warning in the run's result document."""
        doc["server_process"] = self.record
        doc["link"] = self.hosts.describe() if self.hosts is not None else None
        doc["warnings"].extend(self.warnings)


@contextmanager
def served(opts: LoadOptions, hosts: LinkedHosts | None = None) -> Iterator[ServedRun]:
    """Start opts.serve (over hosts, or a link built for opts.link) and stop it afterwards.

    Raises ServerNotStarted when the server does not come up, LinkUnavailable or ProfileError
    when a link it has to build cannot be built.
    """
    from ...servers.launch import ServerProcess, ServerStartError

    variant = resolve(opts.serve)
    model = variant.model.name
    root = opts.root if opts.root is not None else opts.corpus
    args = [*variant.args, *opts.server_args]
    with ExitStack() as stack:
        stack.enter_context(_sigterm_as_exit())
        if hosts is None and opts.link is not None:
            from ..links import LinkedHosts

            hosts = stack.enter_context(LinkedHosts(opts.link, opts.links_file))
        if hosts is not None:
            server = hosts.server_process(model, root, *args, cpus=opts.server_cpus)
        else:
            server = ServerProcess(model, root, *args, cpus=opts.server_cpus)
        run = ServedRun(opts, server, hosts)
        try:
            with _sigint_blocked():  # the server inherits the blocked SIGINT; SIGTERM stops it
                server.start()
        except ServerStartError as exc:
            stderr = server.stderr_text()
            raise ServerNotStarted(
                f"--serve {opts.serve} did not start: {_last_line(stderr) or exc}", stderr or str(exc)
            ) from None
        except (OSError, subprocess.SubprocessError) as exc:
            server.stop(timeout=2)
            raise ServerNotStarted(f"--serve {opts.serve} did not start: {exc}") from None
        except BaseException:
            server.stop(timeout=2)  # Ctrl-C while it was starting: it must not outlive the run
            raise
        run.started()
        try:
            yield run
        finally:
            run.stop()


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM's default action would end this process without stopping the server: meanwhile it
    raises SystemExit instead, so the server is stopped on the way out (main thread, default action only)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_exit(_sig, _frame) -> None:
    raise SystemExit(128 + signal.SIGTERM)


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread (a Ctrl-C meanwhile is delivered when the block ends)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
