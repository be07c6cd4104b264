"""`serverzoo load --cluster`: the generator on the workers of a Dask distributed cluster.

The calling process is the coordinator, as in run_load, but its worker processes live on
other machines. It connects to a Dask scheduler (or starts a LocalCluster of N worker
processes for `local:N`), picks the Dask workers that take part (those with the resource
`client`, when any worker has it; spread over hosts), splits -c and -R between them exactly
as run_load splits them between local processes (make_shares), and submits one task per
Dask worker, pinned to it. A task starts one generator child process (the same
`python -m serverzoo.clients.loadgen.worker` run_load starts) and only relays to it: the
load loop never runs on the Dask worker's threads, whose heartbeats must keep flowing.

A coordinated start: each task measures its machine's clock offset to the scheduler (the
sample with the shortest round trip among a few `time_ns` calls on the scheduler: the
error is at most half that round trip) and reports ready; the coordinator then publishes
one start time on the scheduler's clock, a lead ahead, and each task converts it to its
machine's monotonic clock. Results come back with their times moved to the scheduler's
clock and from there to the coordinator's monotonic clock, so coordinator.build_document
merges them exactly as it merges local workers: histograms added, counters and error
classes summed, rates over the merged measured window. The document gains a `cluster`
section (per Dask worker: host, requests, rate, CPU, client-bound, clock offset, start lateness).

Faults: a Dask worker that leaves the scheduler (or stops sending heartbeats) or whose task
fails ends the run: the other tasks are told to stop (a Dask Event their tasks wait on), their
results are merged and marked partial, and ClusterPartial carries that document with a one-line
message naming the worker. A scheduler that cannot be reached raises ClusterError before
anything is submitted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from time import monotonic_ns
from typing import TYPE_CHECKING

from . import latency
from .client_bound import judge_client
from .coordinator import LoadError, WorkerProcess, build_document, check_alive, make_shares, wait_ready
from .options import LoadOptions, OptionError
from .server_sampler import ServerSampler
from .targets import LoadPlan, build_plan

if TYPE_CHECKING:
    from distributed import Client

# Dask's housekeeping that would run beside the generators through the measured window, turned
# down for local:N (docs/cluster.md gives the same settings for the workers of a real cluster).
# Each line is work a Dask server does on a timer whatever the load; what is left is Dask's floor:
# the workers' heartbeats (every 0.5 s, the scheduler sets that) and their event loops.
QUIET_DASK = {
    # a stack sample of every thread, every 10 ms, in each worker
    "distributed.worker.profile.enabled": False,
    # the event loop's health check, every 20 ms in the scheduler, each nanny and each worker
    # (it only warns of a loop blocked for 3 s: once a second finds that as well)
    "distributed.admin.tick.interval": "1s",
    # CPU, memory, network and disk readings (psutil) every 0.5 s in each of them, for the dashboard
    "distributed.admin.system-monitor.interval": "10s",
    "distributed.admin.system-monitor.disk": False,
    # the worker's and the nanny's memory monitors read the worker's RSS every 100 ms, to spill,
    # pause or restart it; our tasks keep no data in the worker
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
    "distributed.worker.memory.pause": False,
    "distributed.worker.memory.terminate": False,
    # every task is pinned to its worker: nothing to steal, and no replicas to reduce
    "distributed.scheduler.work-stealing": False,
    "distributed.scheduler.active-memory-manager.start": False,
}

LOCAL_PREFIX = "local:"
CLIENT_RESOURCE = "client"  # workers with this resource, when any has it, are the generators
LEAD_S = 1.0  # from publishing the start time to the start: every task polls for it far more often
POLL_S = 0.2  # before the start: how often tasks look for the start time, the coordinator for readiness
STOP_WAIT_S = 5.0  # in the run: a task's wait for the stop signal is renewed this often
CHILD_CHECK_S = 1.0  # in the run: how often a task looks whether its generator process is silent
LIVENESS_CHECK_S = 1.0  # in the run: how often the coordinator asks the scheduler which workers are alive
OFFSET_SAMPLES = 5
READY_TIMEOUT_S = 60.0  # submitting, starting the child processes, measuring the offsets
STOP_GRACE_S = 10.0  # after a fault: how long the other workers have to send what they measured
SILENT_WORKER_S = 10.0  # a worker whose last heartbeat is older than this is taken as lost
START_SKEW_BOUND_MS = 10.0  # spread of the generators' starts (plus the offsets' error) worth a warning
EXIT_CLUSTER = 4  # CLI exit status: the cluster could not be used, or lost a worker (result partial)


class ClusterError(RuntimeError):
    """The cluster cannot be used for this run (unreachable, too few workers); one line, nothing was sent."""


class ClusterPartial(LoadError):
    """A cluster worker failed or was lost mid-run. document: what the others measured (partial), or None."""

    def __init__(self, message: str, document: dict | None) -> None:
        super().__init__(message)
        self.document = document


@dataclass
class ClusterOptions:
    """Where the generators run: scheduler is tcp://HOST:PORT (any address Dask accepts) or local:N;
    workers (None: all eligible) is how many Dask workers take part, one generator process each."""

    scheduler: str
    workers: int | None = None
    connect_timeout_s: float = 10.0
    lead_s: float = LEAD_S

    def local_workers(self) -> int | None:
        """N of local:N, None for a scheduler address."""
        if not self.scheduler.startswith(LOCAL_PREFIX):
            return None
        text = self.scheduler[len(LOCAL_PREFIX) :]
        if not text.isdigit() or int(text) < 1:
            raise OptionError(f"--cluster {self.scheduler}: write local:N with N >= 1 worker processes")
        return int(text)

    def validate(self) -> None:
        self.local_workers()
        if self.workers is not None and self.workers < 1:
            raise OptionError(f"--cluster-workers must be at least 1 (got {self.workers})")
        n = self.local_workers()
        if n is not None and self.workers is not None and self.workers > n:
            raise OptionError(f"--cluster-workers {self.workers} is more than the {n} workers of {self.scheduler}")


@dataclass
class ClusterWorker:
    """A Dask worker taking part: its address, host and name as the scheduler knows them."""

    address: str
    host: str
    name: str


def check_cluster_options(opts: LoadOptions, cluster: ClusterOptions) -> None:
    """OptionError (one line) for what cluster mode cannot do, before anything is contacted."""
    cluster.validate()
    if opts.serve is not None or opts.link is not None:
        raise OptionError(
            "--cluster loads a server that is already running: give its URL "
            "(--serve and --link start one on this machine)"
        )
    if opts.workers is not None:
        raise OptionError(
            "-w/--workers sets processes on this machine; with --cluster each Dask worker runs "
            "one generator process: use --cluster-workers"
        )
    # one generator per Dask worker; the usual checks (with --cpus left to the worker machines)
    replace(opts, workers=cluster.workers or 1, cpus=None).validate()
    build_plan(opts)


def run_cluster_load(opts: LoadOptions, cluster: ClusterOptions) -> dict:
    """Run a load test on a Dask cluster; the result document of run_load plus a `cluster` section.

    Raises OptionError for meaningless settings, ClusterError when the scheduler cannot be
    reached or has too few workers (before any load is sent), LoadError when a generator
    fails before the start, ClusterPartial (with the partial document) when a worker fails
    or is lost after it. Ctrl-C ends the measured window early on every worker.
    """
    check_cluster_options(opts, cluster)
    with cluster_client(cluster) as client:
        chosen = choose_workers(client, cluster.workers)
        # the live figures need local ticks: none are drawn, so the workers need not send histograms
        opts = replace(opts, workers=len(chosen), live=False, progress_fd=None)
        replace(opts, cpus=None).validate()
        return _ClusterRun(client, opts, build_plan(opts), chosen, cluster).run()


@contextmanager
def cluster_client(cluster: ClusterOptions) -> Iterator[Client]:
    """A distributed Client: of a LocalCluster on loopback for local:N, else of the scheduler given."""
    import dask
    from distributed import Client, LocalCluster

    n = cluster.local_workers()
    if n is not None:
        # processes, one thread each: the Dask workers of a real cluster. Dask's logs stay quiet (the
        # faults are ours to report in one line); no dashboard, the scheduler's own HTTP endpoints
        # (idle unless asked) on a free port rather than 8787; its housekeeping turned down
        # (QUIET_DASK): CPU taken from the generators that share this machine
        with (
            dask.config.set(QUIET_DASK),
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                silence_logs=logging.CRITICAL,
                resources={CLIENT_RESOURCE: 1},
            ) as local,
            Client(local, set_as_default=False) as client,
        ):
            yield client
        return
    try:
        client = Client(cluster.scheduler, timeout=cluster.connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(f"cannot reach the Dask scheduler at {cluster.scheduler}: {reason}") from None
    with client:
        yield client


def choose_workers(client: Client, wanted: int | None) -> list[ClusterWorker]:
    """The Dask workers that generate: those with the client resource (all, when none has it),
    taken round-robin over hosts so that N workers spread over as many machines as possible."""
    workers = client.scheduler_info()["workers"]
    tagged = {a: w for a, w in workers.items() if w.get("resources", {}).get(CLIENT_RESOURCE, 0) >= 1}
    eligible = tagged or workers
    by_host: dict[str, list[str]] = {}
    for address in sorted(eligible):
        by_host.setdefault(eligible[address]["host"], []).append(address)
    order: list[str] = []
    while any(by_host.values()):
        for addresses in by_host.values():
            if addresses:
                order.append(addresses.pop(0))
    what = f"workers with resource {CLIENT_RESOURCE}=1" if tagged else "workers"
    if not order:
        raise ClusterError(f"the Dask scheduler {client.scheduler.address} has no workers")
    if wanted is not None and wanted > len(order):
        raise ClusterError(f"--cluster-workers {wanted}: the cluster has only {len(order)} {what}")
    return [ClusterWorker(a, eligible[a]["host"], str(eligible[a].get("name", a))) for a in order[:wanted]]


# -- on the Dask worker ---------------------------------------------------------------------
def measure_offset(scheduler_time_ns: Callable[[], int], samples: int = OFFSET_SAMPLES) -> tuple[int, int]:
    """(offset, round trip) in ns: scheduler clock minus this machine's wall clock, from the sample
    with the shortest round trip (its error is at most half of that round trip)."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        t0 = time.time_ns()
        remote = scheduler_time_ns()
        t1 = time.time_ns()
        if best is None or t1 - t0 < best[1]:
            best = (remote - (t0 + t1) // 2, t1 - t0)
    assert best is not None
    return best


def _to_local_monotonic(scheduler_ns: int, offset_ns: int) -> int:
    """A time on the scheduler's wall clock, on this machine's monotonic clock."""
    return scheduler_ns - offset_ns - (time.time_ns() - monotonic_ns())


def _shift_times(result: dict, delta_ns: int) -> None:
    """Move a worker result's monotonic times by delta_ns (0 stays 0: a phase that did not happen)."""
    for phase in result["phases"].values():
        for key in ("start_ns", "end_ns"):
            if phase[key]:
                phase[key] += delta_ns
    for piece in result["timeline"] + result["stages"]:
        piece["start_ns"] += delta_ns
        piece["end_ns"] += delta_ns


def generator_task(names: str, opts: LoadOptions, plan: LoadPlan, share) -> dict | None:
    """One Dask task: start a generator child process, relay the start and a stop to it, return
    its result with times on the scheduler's wall clock (None: stopped before the start)."""
    from distributed import Event, Variable, get_client

    client = get_client()
    stop = Event(f"{names}-stop", client)
    start_at = Variable(f"{names}-start", client)  # set before the go event
    proc = WorkerProcess(share, opts, plan)
    try:
        wait_ready([proc])
        offset_ns, rtt_ns = measure_offset(lambda: client.run_on_scheduler(time.time_ns))
        Event(f"{names}-ready-{share.index}", client).set()
        go = Event(f"{names}-go", client)
        while not go.wait(POLL_S):
            if stop.is_set():
                return None
        start_ns = start_at.get()
        local_start_ns = _to_local_monotonic(start_ns, offset_ns)
        proc.send(("start", local_start_ns))
        stopped = _follow(proc, stop)
        result = proc.result
        first = next(
            (
                result["phases"][p]["start_ns"]
                for p in ("ramp_up", "warmup", "measure")
                if result["phases"][p]["start_ns"]
            ),
            None,
        )
        _shift_times(result, time.time_ns() - monotonic_ns() + offset_ns)
        return {
            "result": result,
            "offset_ns": offset_ns,
            "rtt_ns": rtt_ns,
            "stopped": stopped,
            "late_ns": first - local_start_ns if first is not None else None,
        }
    finally:
        proc.finish()


def _follow(proc: WorkerProcess, stop) -> bool:
    """Relay the child's messages until its result, passing the stop signal on; True if it was stopped.

    The stop signal is awaited rather than polled: a helper thread holds one wait on the Dask
    Event at the scheduler (renewed every STOP_WAIT_S) and, once it is set, wakes this loop
    through a pipe. A question to the scheduler each second cost the Dask worker and the
    scheduler more CPU, on the generators' machine, than everything else they do in a run.
    """
    stopped = False
    wake_r, wake_w = os.pipe()
    done = threading.Event()
    pipe_lock = threading.Lock()  # the waiter writes only while the pipe is open (its numbers are not reused)

    def await_stop() -> None:
        try:
            while not done.is_set():
                if stop.wait(STOP_WAIT_S):
                    with pipe_lock:
                        if not done.is_set():
                            os.write(wake_w, b"s")
                    return
        except Exception:  # the scheduler is gone (Dask raises several kinds for that): the coordinator
            return  # sees to the rest, and the child ends when the task ends and closes its stdin

    waiter = threading.Thread(target=await_stop, name="serverzoo-stop-wait", daemon=True)
    waiter.start()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.fd, selectors.EVENT_READ, "child")
            sel.register(wake_r, selectors.EVENT_READ, "stop")
            while proc.result is None:
                for key, _ in sel.select(CHILD_CHECK_S):
                    if key.data == "stop":
                        sel.unregister(wake_r)
                        if not stopped:
                            proc.send(("stop",))
                            stopped = True
                        continue
                    for msg in proc.feed():
                        proc.handle(msg)
                        if msg[0] == "result":
                            break
                check_alive([proc])
    finally:
        with pipe_lock:
            done.set()  # the waiter leaves at its next renewal, or when the coordinator sets stop at the end
            os.close(wake_r)
            os.close(wake_w)
    return stopped


# -- on the coordinator ----------------------------------------------------------------------
class _Fault(Exception):
    """A worker failed or was lost; the message names it."""


class _ClusterRun:
    def __init__(
        self, client: Client, opts: LoadOptions, plan: LoadPlan, chosen: list[ClusterWorker], cluster: ClusterOptions
    ) -> None:
        from distributed import Event, Variable

        self.client, self.opts, self.plan, self.chosen, self.cluster = client, opts, plan, chosen, cluster
        self.names = f"serverzoo-load-{uuid.uuid4().hex[:12]}"
        self.stop = Event(f"{self.names}-stop", client)
        self.start_at = Variable(f"{self.names}-start", client)
        self.go = Event(f"{self.names}-go", client)
        self.ready = [Event(f"{self.names}-ready-{i}", client) for i in range(len(chosen))]
        self.shares = make_shares(opts)
        self.futures: list = []
        self.status = ["running"] * len(chosen)
        self.outputs: list[dict | None] = [None] * len(chosen)
        self.sampler = ServerSampler(opts.server_pid) if opts.server_pid is not None else None
        self.client_clock = {"offset_ns": 0, "rtt_ns": 0}

    def run(self) -> dict:
        offset_ns, rtt_ns = measure_offset(lambda: self.client.run_on_scheduler(time.time_ns))
        self.client_clock = {"offset_ns": offset_ns, "rtt_ns": rtt_ns}
        try:
            self.futures = [
                self.client.submit(
                    generator_task,
                    self.names,
                    self.opts,
                    self.plan,
                    share,
                    workers=[w.address],
                    allow_other_workers=False,
                    pure=False,
                    key=f"{self.names}-{i}",
                )
                for i, (w, share) in enumerate(zip(self.chosen, self.shares))
            ]
            try:
                self._wait_ready()
            except _Fault as fault:
                raise LoadError(f"{fault} (before the start: no load was measured)") from None
            start_ns = time.time_ns() + offset_ns + int(self.cluster.lead_s * 1e9)
            self.start_at.set(start_ns)
            self.go.set()
            fault, interrupted = self._collect()
        finally:
            self._release()
        doc = self._document(fault, interrupted)
        if fault is not None:
            raise ClusterPartial(str(fault), doc)
        return doc

    def _release(self) -> None:
        """Every task still waiting or running is told to stop; what is left is cancelled."""
        try:
            self.stop.set()  # stays set: a task that is cut off from the scheduler now may still look
            pending = [f for f in self.futures if not f.done()]
            if pending:
                self.client.cancel(pending)
            for event in (self.go, *self.ready):
                event.clear()  # an Event that is clear and awaited by nobody is dropped by the scheduler
            self.start_at.delete()
        except (OSError, RuntimeError, asyncio.CancelledError):
            pass  # the scheduler is gone: so are the tasks it would have stopped

    def _ask(self, call: Callable[[], object]):
        """A call to the scheduler; _Fault when the connection to it is lost (Dask raises OSError,
        RuntimeError or CancelledError for that, depending on the moment)."""
        try:
            return call()
        except (OSError, RuntimeError, asyncio.CancelledError) as exc:
            raise _Fault(
                f"lost the Dask scheduler {self.cluster.scheduler} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'closed'})"
            ) from None

    def _check(self) -> None:
        """Raise _Fault for a task that failed or a worker that left the scheduler or fell silent."""
        self._check_tasks()
        self._check_workers()

    def _check_tasks(self) -> None:
        """Raise _Fault for a task that failed (the futures' states: known here, no question to the scheduler)."""
        if self.client.status != "running":  # it gave up reconnecting, and cancelled every future
            raise _Fault(f"lost the Dask scheduler {self.cluster.scheduler}")
        for i, f in enumerate(self.futures):
            if f.status in ("error", "cancelled", "lost") and self.outputs[i] is None and self.status[i] == "running":
                self.status[i] = "failed"
                if f.status == "error":
                    exc = f.exception()
                    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                else:
                    text = f"its task was {f.status} by the scheduler"
                raise _Fault(f"cluster worker {self.chosen[i].address} (host {self.chosen[i].host}) failed: {text}")

    def _check_workers(self) -> None:
        """Raise _Fault for a worker that left the scheduler or fell silent (asks the scheduler)."""
        info = self._ask(self.client.scheduler_info)
        now_s = time.time() + self.client_clock["offset_ns"] / 1e9
        for i, w in enumerate(self.chosen):
            if self.status[i] != "running" or self.futures[i].done():
                continue
            seen = info["workers"].get(w.address)
            if seen is None:
                self.status[i] = "lost"
                raise _Fault(f"cluster worker {w.address} (host {w.host}) was lost mid-run")
            if now_s - seen.get("last_seen", now_s) > SILENT_WORKER_S:
                self.status[i] = "lost"
                raise _Fault(f"cluster worker {w.address} (host {w.host}) sent no heartbeat for {SILENT_WORKER_S:g} s")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = set(range(len(self.chosen)))
        while waiting:
            if time.monotonic() > deadline:
                names = ", ".join(self.chosen[i].address for i in sorted(waiting))
                raise _Fault(f"cluster workers not ready within {READY_TIMEOUT_S:g} s: {names}")
            self._check()
            waiting = {i for i in waiting if not self._ask(self.ready[i].is_set)}
            if waiting:
                time.sleep(POLL_S)

    def _collect(self) -> tuple[_Fault | None, bool]:
        """Wait for every result; on a fault, stop the others and keep what they send."""
        fault: _Fault | None = None
        interrupted = False
        next_sample = 0.0
        next_liveness = time.monotonic() + LIVENESS_CHECK_S
        while not all(f.done() for f in self.futures):
            try:
                time.sleep(POLL_S)
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                try:
                    self._ask(self.stop.set)
                except _Fault as exc:
                    fault = exc
                    break
            self._take_results()
            if self.sampler and time.monotonic() >= next_sample:
                self.sampler.sample()
                next_sample = time.monotonic() + self.opts.sample_interval_s
            try:
                self._check_tasks()
                if time.monotonic() >= next_liveness:
                    next_liveness = time.monotonic() + LIVENESS_CHECK_S
                    self._check_workers()
            except _Fault as exc:
                fault = exc
                break
        if fault is not None:
            try:
                self._ask(self.stop.set)
            except _Fault:
                return fault, interrupted  # the scheduler is gone: nothing more comes back
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline and any(
                s == "running" and not f.done() for s, f in zip(self.status, self.futures)
            ):
                time.sleep(POLL_S)
                self._take_results()
        self._take_results()
        if self.sampler:
            self.sampler.sample()
        return fault, interrupted

    def _take_results(self) -> None:
        for i, f in enumerate(self.futures):
            if self.outputs[i] is None and self.status[i] == "running" and f.status == "finished":
                out = f.result()
                if out is None:
                    self.status[i] = "stopped"
                    continue
                self.outputs[i] = out
                self.status[i] = "stopped" if out["stopped"] else "ok"

    def _document(self, fault: _Fault | None, interrupted: bool) -> dict | None:
        kept = [(i, o) for i, o in enumerate(self.outputs) if o is not None]
        if not kept:
            return None
        # scheduler wall clock -> this process's monotonic clock, where the server sampler lives
        delta = -self.client_clock["offset_ns"] - (time.time_ns() - monotonic_ns())
        for _, o in kept:
            _shift_times(o["result"], delta)
        results = [o["result"] for _, o in kept]
        doc = build_document(self.opts, self.plan, results, self.sampler, interrupted)
        doc["cluster"] = self._section(kept, fault, -delta)
        doc["partial"] = fault is not None
        if fault is not None:
            doc["warnings"].insert(0, f"partial result: {fault}; {len(kept)} of {len(self.chosen)} workers measured")
        start = doc["cluster"]["start"]
        if start["skew_ms"] is not None and start["skew_ms"] + start["offset_error_ms"] > START_SKEW_BOUND_MS:
            doc["warnings"].append(
                f"the generators started {start['skew_ms']:.1f} ms apart (clock offsets known "
                f"to {start['offset_error_ms']:.1f} ms), more than {START_SKEW_BOUND_MS:g} ms"
            )
        return doc

    def _section(self, kept: list[tuple[int, dict]], fault: _Fault | None, to_scheduler_ns: int) -> dict:
        rows = []
        lates = []
        starts, ends = [], []
        for i, w in enumerate(self.chosen):
            share = self.shares[i]
            status = "unreported" if self.status[i] == "running" else self.status[i]  # silent past the grace
            row = {
                "address": w.address,
                "host": w.host,
                "name": w.name,
                "worker": i,
                "status": status,
                "connections": share.connections,
                "requests": None,
                "errors": None,
                "elapsed_s": None,
                "rps": None,
                "cpu_percent": None,
                "client_bound": None,
                "clock_offset_ms": None,
                "rtt_ms": None,
                "start_late_ms": None,
                "latency_p99_us": None,
                "histogram": None,
            }
            out = self.outputs[i]
            if out is not None:
                r = out["result"]
                m = r["phases"]["measure"]
                elapsed = (m["end_ns"] - m["start_ns"]) / 1e9 if m["start_ns"] and m["end_ns"] else 0.0
                judged = judge_client([r], elapsed)
                late = out["late_ns"] / 1e6 if out["late_ns"] is not None else None
                if late is not None:
                    lates.append(late)
                if m["start_ns"] and m["end_ns"]:
                    starts.append(m["start_ns"])
                    ends.append(m["end_ns"])
                row.update(
                    requests=m["requests"],
                    errors=sum(m["errors"].values()),
                    elapsed_s=round(elapsed, 6),
                    rps=round(m["requests"] / elapsed, 3) if elapsed > 0 else 0.0,
                    cpu_percent=judged["cpu_percent"],
                    client_bound=judged["client_bound"],
                    clock_offset_ms=round(out["offset_ns"] / 1e6, 3),
                    rtt_ms=round(out["rtt_ns"] / 1e6, 3),
                    start_late_ms=round(late, 3) if late is not None else None,
                    latency_p99_us=latency.summary(
                        latency.decode(m["histogram"]), latency.RawStats.from_dict(m["raw"])
                    )["p99"],
                    histogram=m["histogram"],
                )
            rows.append(row)
        rtts = [o["rtt_ns"] for _, o in kept] + [self.client_clock["rtt_ns"]]
        return {
            "scheduler": self.cluster.scheduler,
            "partial": fault is not None,
            "fault": str(fault) if fault is not None else None,
            "client_clock_offset_ms": round(self.client_clock["offset_ns"] / 1e6, 3),
            "client_rtt_ms": round(self.client_clock["rtt_ns"] / 1e6, 3),
            "start": {
                "lead_s": self.cluster.lead_s,
                "skew_ms": round(max(lates) - min(lates), 3) if lates else None,
                # each offset is off by at most half its round trip; two of them add up
                "offset_error_ms": round(max(rtts) / 1e6, 3),
            },
            "window": {
                "union_s": round((max(ends) - min(starts)) / 1e9, 6) if starts else 0.0,
                "common_s": round(max(min(ends) - max(starts), 0) / 1e9, 6) if starts else 0.0,
                # the union on the scheduler's clock, for what other machines sampled meanwhile
                "scheduler_start_ns": min(starts) + to_scheduler_ns if starts else None,
                "scheduler_end_ns": max(ends) + to_scheduler_ns if starts else None,
            },
            "workers": rows,
        }


def cluster_text(doc: dict) -> str:
    """The per-worker table under the summary."""
    c = doc["cluster"]
    lines = [
        f"Cluster {c['scheduler']}: {len(c['workers'])} workers, start skew "
        + (f"{c['start']['skew_ms']:.1f} ms" if c["start"]["skew_ms"] is not None else "-")
        + f" (offsets within {c['start']['offset_error_ms']:.1f} ms), measured window "
        f"{c['window']['common_s']:.2f} s common of {c['window']['union_s']:.2f} s"
    ]
    lines.append(
        f"  {'worker':<24}{'host':<16}{'status':<9}{'conns':>6}{'requests':>10}{'req/s':>11}"
        f"{'CPU%':>6}{'bound':>6}{'offset':>10}{'rtt':>9}"
    )

    def num(v, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    def ms(v) -> str:
        return "-" if v is None else f"{v:.2f}ms"

    for w in c["workers"]:
        bound = "-" if w["client_bound"] is None else ("yes" if w["client_bound"] else "no")
        lines.append(
            f"  {w['address']:<24}{w['host']:<16}{w['status']:<9}{w['connections']:>6}"
            f"{num(w['requests'], 'd'):>10}{num(w['rps'], ',.0f'):>11}{num(w['cpu_percent'], '.0f'):>6}"
            f"{bound:>6}{ms(w['clock_offset_ms']):>10}{ms(w['rtt_ms']):>9}"
        )
    return "\n".join(lines)
