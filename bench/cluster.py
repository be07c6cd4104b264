"""`serverzoo bench --cluster SCHED`: each cell's server on a Dask worker, its load from others.

ClusterPlacement is the runner's placement hook. The server of a cell (a serverzoo model, or
nginx) is started by a Dask task on a worker with the resource `server=1`, listening on that
worker's address; the task waits for READY (nginx: for its port), publishes the URL and PID,
and keeps the server until the runner says stop, then stops it gracefully and returns its
exit code and stderr. The task also holds a deadline: if the runner disappears, the server is
stopped when the cell should long have ended, so it is never left running. The generator is
`serverzoo load --cluster SCHED` (generators on the workers with `client=1`), whose JSON
records each generator's host; the cell records the server's host and worker.

The server's CPU time and RSS are sampled where it runs: the task samples its process tree
(ServerSampler, from a thread: the task's own thread waits for the stop) from READY to the
stop, with times moved to the scheduler's clock, and returns the samples. The load's JSON
gives its measured window on that clock too, so the runner cuts the same window out of them
as a local run's sampler does (the CPU figure: the process tree's, not a cgroup's).

The corpus must be at the same path on the server's machine (and, for body checks, on the
generators' machines): the runner passes paths, not files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psutil

from serverzoo.clients.loadgen.cluster import ClusterError, ClusterOptions, cluster_client, measure_offset
from serverzoo.clients.loadgen.server_sampler import ServerSampler, window_report
from serverzoo.servers.launch import ServerStartError

if TYPE_CHECKING:
    from distributed import Client

SERVER_RESOURCE = "server"
START_TIMEOUT_S = 60.0  # scheduling the task and the server's own start
STOP_TIMEOUT_S = 30.0  # the server's graceful stop, reported back
STDERR_TAIL = 4000
SAMPLE_INTERVAL_S = 0.5  # the server's CPU and RSS, as `serverzoo load --server-pid` samples them


class ClusterPlacement:
    """Where a cell's server and generator run when the bench has --cluster."""

    def __init__(self, client: Client, scheduler: str) -> None:
        self.client = client
        self.scheduler = scheduler
        workers = client.scheduler_info()["workers"]
        self.server_workers = sorted(
            a for a, w in workers.items() if w.get("resources", {}).get(SERVER_RESOURCE, 0) >= 1
        )
        if not self.server_workers:
            raise ClusterError(
                f"--cluster {scheduler}: no Dask worker has the resource {SERVER_RESOURCE}=1 "
                f'(start one with: dask worker ... --resources "{SERVER_RESOURCE}=1")'
            )
        generators = [a for a, w in workers.items() if w.get("resources", {}).get("client", 0) >= 1]
        if not generators:
            raise ClusterError(
                f"--cluster {scheduler}: no Dask worker has the resource client=1 "
                f'(start them with: dask worker ... --resources "client=1")'
            )

    def server(
        self, model: str, root: str, args: Sequence[str], cpus: Sequence[int] | None, lifetime_s: float
    ) -> RemoteServer:
        return RemoteServer(self.client, model, root, list(args), list(cpus) if cpus else None, lifetime_s)

    def load_options(self, opts: dict[str, Any]) -> dict[str, Any]:
        """The cell's load without what belongs to this machine: processes and CPUs here, a local PID."""
        return {k: v for k, v in opts.items() if k not in ("workers", "cpus", "server_pid")}

    def load_argv(self, argv: list[str]) -> list[str]:
        return [*argv, "--cluster", self.scheduler]


@contextmanager
def open_placement(scheduler: str, connect_timeout_s: float = 10.0) -> Iterator[ClusterPlacement]:
    """The ClusterPlacement of scheduler for a whole run (ClusterError: unreachable, or no worker
    with server=1 or client=1); its Client is closed on exit."""
    with cluster_client(ClusterOptions(scheduler, connect_timeout_s=connect_timeout_s)) as client:
        yield ClusterPlacement(client, scheduler)


class RemoteServer:
    """The ServerProcess interface (start, url, pid, shown_argv, stop, stderr_text) for a server run by a
    Dask task on a `server=1` worker."""

    def __init__(
        self, client: Client, model: str, root: str, args: list[str], cpus: list[int] | None, lifetime_s: float
    ) -> None:
        from distributed import Event, Variable

        self.client, self.model, self.root, self.args, self.cpus = client, model, root, args, cpus
        self.lifetime_s = lifetime_s
        self.names = f"serverzoo-bench-server-{uuid.uuid4().hex[:12]}"
        self.ready = Event(f"{self.names}-ready", client)
        self.info = Variable(f"{self.names}-info", client)  # set before the ready event
        self.stop_event = Event(f"{self.names}-stop", client)
        self.future = None
        self.url = ""
        self.pid = 0
        self.argv: list[str] = []
        self.host = ""
        self.worker = ""
        self._stderr = ""
        self.exit_code: int | None = None
        self.rss_at_ready: int | None = None
        self.samples: list[dict] = []  # the server's process tree, t_ns on the scheduler's clock

    def start(self) -> RemoteServer:
        self.future = self.client.submit(
            serve_task,
            self.names,
            self.model,
            self.root,
            self.args,
            self.cpus,
            self.lifetime_s,
            resources={SERVER_RESOURCE: 1},
            pure=False,
            key=self.names,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready.wait(0.5):
            if self.future.status == "error":
                raise ServerStartError(str(self.future.exception()).splitlines()[0])
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"no {SERVER_RESOURCE}=1 worker started the server within {START_TIMEOUT_S:g} s")
        info = self.info.get()
        self.url, self.pid, self.argv = info["url"], info["pid"], info["argv"]
        self.host, self.worker, self.rss_at_ready = info["host"], info["worker"], info["rss_at_ready_bytes"]
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Tell the task to stop the server; its exit code (None: no answer)."""
        if self.future is None:
            return None
        try:
            self.stop_event.set()
            out = self.future.result(timeout=timeout)
        except Exception as exc:  # the task failed or its worker was lost: nothing more to learn
            self._stderr = f"{type(exc).__name__}: {exc}"
            out = None
        finally:
            try:
                self.info.delete()
                self.ready.clear()
            except OSError:
                pass
        if out is not None:
            self.exit_code, self._stderr, self.samples = out["exit_code"], out["stderr"], out["samples"]
        self.future = None
        return self.exit_code

    def usage(self, load: dict) -> dict | None:
        """The `server` section of a local run's load JSON (CPU, peak RSS, samples) over load's measured
        window, from the samples the stopped task sent; None without samples or window."""
        window = (load.get("cluster") or {}).get("window") or {}
        start, end = window.get("scheduler_start_ns"), window.get("scheduler_end_ns")
        if not self.samples or start is None or end is None:
            return None
        return window_report(self.samples, start, end, self.pid, "process tree")

    def stderr_text(self) -> str:
        return self._stderr

    def shown_argv(self) -> list[str]:
        """The server's command line on its worker (nginx's without its temporary prefix)."""
        return self.argv


def serve_task(names: str, model: str, root: str, args: list[str], cpus: list[int] | None, lifetime_s: float) -> dict:
    """On the server worker: start the server on this worker's address, publish it, stop it on the
    stop event or at lifetime_s, whichever comes first."""
    from distributed import Event, Variable, get_client, get_worker

    from serverzoo.servers.launch import ServerProcess

    from .nginx import NginxServer
    from .plan import REFERENCE

    client = get_client()
    worker = get_worker()
    host = worker.address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if model == REFERENCE:
        server: Any = NginxServer(root, tuned=True, cpus=cpus, host=host)
    else:
        server = ServerProcess(model, root, *args, host=host, cpus=cpus)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    guard = start_guard(server.pid)
    sampling = threading.Event()
    sampler_thread: threading.Thread | None = None
    try:
        offset_ns, _ = measure_offset(lambda: client.run_on_scheduler(time.time_ns))
        sampler = ServerSampler(server.pid)
        first = sampler.sample()
        sampler_thread = threading.Thread(target=_sample_until, args=(sampler, sampling), daemon=True)
        sampler_thread.start()
        argv = server.shown_argv() if model == REFERENCE else server.argv
        Variable(f"{names}-info", client).set(
            {
                "url": server.url,
                "pid": server.pid,
                "argv": argv,
                "host": host,
                "worker": worker.address,
                "rss_at_ready_bytes": first["rss_bytes"] if first else None,
            }
        )
        Event(f"{names}-ready", client).set()
        Event(f"{names}-stop", client).wait(lifetime_s)
    finally:
        sampling.set()
        if sampler_thread is not None:
            sampler_thread.join()
        code = server.stop()
        guard.stdin.close()  # the server is gone: the guard exits
        guard.wait(10)
    to_scheduler_ns = time.time_ns() - time.monotonic_ns() + offset_ns
    samples = [{**s, "t_ns": s["t_ns"] + to_scheduler_ns} for s in sampler.samples]
    if model == REFERENCE:  # NginxServer.stop returns nothing; its master's exit code is the answer
        return {"exit_code": server.proc.returncode if server.proc else None, "stderr": "", "samples": samples}
    return {"exit_code": code, "stderr": server.stderr_text()[-STDERR_TAIL:], "samples": samples}


def _sample_until(sampler: ServerSampler, done: threading.Event) -> None:
    """Sample every SAMPLE_INTERVAL_S until done is set, and once more then (the window's last stretch)."""
    while not done.wait(SAMPLE_INTERVAL_S):
        sampler.sample()
    sampler.sample()


def start_guard(pid: int) -> subprocess.Popen:
    """A process that stops server `pid` if this process dies before it has (a Dask worker can be
    killed outright, and then no `finally` runs): it waits for its stdin to close. We close it
    after stopping the server ourselves; a death closes it too."""
    return subprocess.Popen(
        [sys.executable, "-m", "serverzoo.bench.cluster", str(pid)], stdin=subprocess.PIPE, start_new_session=True
    )  # a signal to the worker's process group spares it


def guard_main(pid: int) -> int:
    """The guard: block until stdin closes, then stop the server if it still runs (SIGTERM, then
    SIGKILL for it and its children). The process is identified with its start time, so a
    recycled PID is left alone."""
    try:
        server = psutil.Process(pid)
    except psutil.Error:
        return 0
    while os.read(0, 4096):
        pass
    try:
        children = server.children(recursive=True)
        server.terminate()
    except psutil.Error:
        return 0  # already gone: the usual case
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _alive(server):
        time.sleep(0.05)
    for p in [server, *children]:
        if _alive(p):
            try:
                p.kill()
            except psutil.Error:
                pass
    return 0


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (an exited child its parent has not reaped yet)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


if __name__ == "__main__":
    sys.exit(guard_main(int(sys.argv[1])))
