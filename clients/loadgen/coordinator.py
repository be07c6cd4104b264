"""run_load: start the worker processes, keep them in step, watch the server, merge the results.

The coordinating process does no load itself. It starts K workers (`python -m
serverzoo.clients.loadgen.worker`), hands each its share, waits until all are ready,
gives them one start time on the shared monotonic clock, samples the server's process
tree meanwhile, shows the live line, and merges what the workers send back: histograms
are added (exact at their precision), counters summed, timelines aligned slice by slice
(every --timeline-interval from the measured window's start).
With --serve it first starts the server (serving.py), over a --link if given.

Cluster mode (cluster.py) reuses the pieces that do not depend on where the processes run:
WorkerProcess, wait_ready and check_alive to drive one generator on a Dask worker,
make_shares to split the load, judge_client and build_document to judge and merge.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from time import monotonic_ns
from typing import TYPE_CHECKING

import psutil

from serverzoo.machine import describe_machine

from . import latency
from .adversaries import merge_stats
from .client_bound import JUDGE_MIN_S, judge_client
from .connection import NO_LOCAL_PORT
from .live import LiveFigures, displays_for
from .messages import parse_messages, write_message
from .options import LoadOptions, OptionError
from .ports import explain_no_local_port
from .server_sampler import ServerSampler
from .slo import parse_goals, slo_section
from .slo_watch import Watch
from .state import WorkerShare, split
from .targets import LoadPlan, build_plan, served_url

if TYPE_CHECKING:
    from ..links import LinkedHosts
    from .serving import ServedRun

SCHEMA = "serverzoo.load/1"
READY_TIMEOUT_S = 30.0
START_MARGIN_NS = 50_000_000  # from "go" to the common start: enough for every worker to be waiting
SILENCE_LIMIT_NS = 20_000_000_000
PLACEHOLDER_BASE = "http://127.0.0.1:80/"  # --serve's targets are checked against it before the server starts


class LoadError(RuntimeError):
    """The run could not be carried out (a worker failed); the message is one line, details has more."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class WorkerProcess:
    """One generator process (`python -m serverzoo.clients.loadgen.worker`) and the pipes to it: it is
    handed its share at once, then answers "ready", ticks every second and sends its result; `send`
    passes it ("start", ns) or ("stop",), `feed` reads its messages and `handle` takes each in."""

    def __init__(self, share: WorkerShare, opts: LoadOptions, plan: LoadPlan) -> None:
        self.share = share
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serverzoo.clients.loadgen.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            start_new_session=True,
        )  # Ctrl-C reaches the coordinator only
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.result: dict | None = None
        self.last_tick: dict | None = None  # the latest tick, for --abort-on-fail's watch
        self.last_message_ns = monotonic_ns()
        self.send((opts, plan, share))

    def send(self, message: object) -> None:
        try:
            write_message(self.proc.stdin.fileno(), message)
        except (BrokenPipeError, OSError):
            pass  # it has died; its exit is noticed when its output ends

    def feed(self) -> list:
        """Read what is available; return the complete messages."""
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            return [("eof",)]
        out, self.buffer = parse_messages(self.buffer + chunk)
        return out

    def handle(self, msg: tuple) -> None:
        """Take in one message from the process; LoadError when it failed or exited before its result."""
        kind = msg[0]
        self.last_message_ns = monotonic_ns()
        if kind == "failed":
            raise LoadError(f"load worker {self.share.index} failed: {msg[1].splitlines()[0]}", msg[2])
        if kind == "eof" and self.result is None:
            self.proc.wait(5)
            tail = self.stderr_tail().strip().splitlines()
            raise LoadError(
                f"load worker {self.share.index} exited with code {self.proc.returncode}"
                + (f": {tail[-1]}" if tail else "")
            )
        if kind == "tick":
            self.last_tick = msg[1]
        elif kind == "result":
            self.result = msg[1]

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-2000:]

    def finish(self, timeout: float = 10.0) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()
        self.stderr.close()


def make_shares(opts: LoadOptions) -> list[WorkerShare]:
    """Each generator process's part of the load: -c, -R, -n and the adversaries split between them."""
    k = opts.resolved_workers()
    conns = split(opts.connections, k)
    requests = split(opts.requests, k) if opts.requests is not None else [None] * k
    idle, readers, senders = split(opts.idle, k), split(opts.slow_readers, k), split(opts.slow_senders, k)
    shares = []
    first = 0
    for i in range(k):
        rate = opts.rate * conns[i] / opts.connections if opts.rate is not None else None
        cpu = opts.cpus[i % len(opts.cpus)] if opts.cpus else None
        shares.append(
            WorkerShare(
                i, k, conns[i], first, opts.connections, rate, requests[i], idle[i], readers[i], senders[i], cpu
            )
        )
        first += conns[i]
    return shares


def check_options(opts: LoadOptions) -> None:
    """OptionError (one line) for settings that cannot mean anything, before anything is started."""
    opts.validate()
    build_plan(opts, PLACEHOLDER_BASE if opts.serve is not None else None)


def run_load(opts: LoadOptions, hosts: LinkedHosts | None = None) -> dict:
    """Run a load test and return its result document (schema serverzoo.load/1). Blocks until done.

    With opts.serve it starts that server for the run and stops it afterwards; with opts.link
    (or hosts, an up LinkedHosts to use instead of building one) the server runs on the link's
    server host and every worker process on its client host.
    Raises OptionError for meaningless settings, LoadError when a worker process fails or the
    server does not start, LinkUnavailable or ProfileError when opts.link cannot be built.
    Ctrl-C (KeyboardInterrupt) ends the measured window early; the result covers what ran.
    """
    with load_session(opts, hosts) as session:
        doc = session.measure(opts)
    if session.served is not None:  # recorded once it has stopped: its exit is part of the record
        doc["url"] = served_url(opts.url, session.served.url)
        session.served.add_to(doc)
    return doc


class LoadSession:
    """Runs against one server: the --serve server (started once for all of them), or the URL's."""

    def __init__(self, plan: LoadPlan, server_pid: int | None, served: ServedRun | None) -> None:
        self.plan = plan
        self.server_pid = server_pid
        self.served = served

    def measure(self, opts: LoadOptions) -> dict:
        """One run of opts (same targets and server as the session's; rate, duration, phases and
        goals may differ) and its result document."""
        opts.validate()
        if self.served is None:
            return _measure(opts, self.plan, self.server_pid)
        with self.served.client_side():  # the worker processes are forked here: on the link's client host
            return _measure(opts, self.plan, self.served.pid)


@contextmanager
def load_session(opts: LoadOptions, hosts: LinkedHosts | None = None) -> Iterator[LoadSession]:
    """A LoadSession for opts' targets and server, as run_load describes; with opts.serve the
    server is stopped when the block ends."""
    if opts.serve is None:
        opts.validate()
        if hosts is not None:
            raise OptionError("a link needs a server started on its server host: set serve (--serve MODEL)")
        yield LoadSession(build_plan(opts), opts.server_pid, None)
        return
    check_options(opts)  # the workload's own mistakes are reported before a server or a link is started
    from .serving import ServerNotStarted, served

    try:
        with served(opts, hosts) as run:
            yield LoadSession(build_plan(opts, run.url), run.pid, run)
    except ServerNotStarted as exc:
        raise LoadError(str(exc), exc.details) from None


def _measure(opts: LoadOptions, plan: LoadPlan, server_pid: int | None) -> dict:
    shares = make_shares(opts)
    sampler = None
    if server_pid is not None:
        try:
            sampler = ServerSampler(server_pid, opts.server_cgroup)
        except psutil.Error as exc:
            raise OptionError(f"cannot watch --server-pid {server_pid}: {exc}") from None
    workers = [WorkerProcess(s, opts, plan) for s in shares]
    live = None
    watch = Watch(parse_goals(opts.slos), opts.measured_duration) if opts.abort_on_fail else None
    try:
        wait_ready(workers)
        start_ns = monotonic_ns() + START_MARGIN_NS
        measure_ns = start_ns + int((opts.ramp_up_s + opts.warmup_s) * 1e9)
        where = f"http://{plan.server.host}:{plan.server.port}"
        displays = displays_for(opts, f"serverzoo load {where} ({len(plan.targets)} target(s))")
        if displays:
            live = LiveFigures(opts, [w.proc.pid for w in workers], start_ns, measure_ns, displays)
        if sampler:
            sampler.sample()
        for w in workers:
            w.send(("start", start_ns))
        interrupted = _collect(workers, opts, sampler, live, measure_ns, watch)
    finally:
        for w in workers:
            w.finish()
        if live:
            live.close()
    doc = build_document(opts, plan, [w.result for w in workers], sampler, interrupted)
    if opts.slos:
        add_slo_section(doc, parse_goals(opts.slos), watch.lost if watch else None)
    return doc


def add_slo_section(doc: dict, goals: list, lost: dict | None) -> None:
    """The result's "slo" entry (slo.slo_section), and a warning when a lost goal ended the run."""
    doc["slo"] = slo_section(goals, doc, lost)
    if lost is not None:
        doc["warnings"].append(
            f"stopped early ({lost['at_s']:g} s into the measured window): "
            f"{lost['goal']} could no longer be met: {lost['reason']}"
        )


def wait_ready(workers: list[WorkerProcess]) -> None:
    """Block until every process has answered "ready" (LoadError: one failed, or READY_TIMEOUT_S passed)."""
    deadline = monotonic_ns() + int(READY_TIMEOUT_S * 1e9)
    with selectors.DefaultSelector() as sel:
        for w in workers:
            sel.register(w.fd, selectors.EVENT_READ, w)
        while not all(w.ready for w in workers):
            left = (deadline - monotonic_ns()) / 1e9
            if left <= 0:
                raise LoadError(f"worker processes not ready within {READY_TIMEOUT_S:g} s")
            for key, _ in sel.select(left):
                w = key.data
                for msg in w.feed():
                    w.handle(msg)
                    if msg[0] == "ready":
                        w.ready = True


def _collect(
    workers: list[WorkerProcess],
    opts: LoadOptions,
    sampler: ServerSampler | None,
    live: LiveFigures | None,
    measure_ns: int,
    watch: Watch | None = None,
) -> bool:
    """Read ticks and results until every worker has reported; True if Ctrl-C cut the run short.
    With a watch (--abort-on-fail), the workers are stopped once it proves a goal lost."""
    interval_ns = int(opts.sample_interval_s * 1e9)
    next_sample = measure_ns
    stopping = False
    with selectors.DefaultSelector() as sel:
        for w in workers:
            sel.register(w.fd, selectors.EVENT_READ, w)
        while any(w.result is None for w in workers):
            timeout = max((next_sample - monotonic_ns()) / 1e9, 0) if sampler else 1.0
            try:
                events = sel.select(timeout)
                for key, _ in events:
                    w = key.data
                    for msg in w.feed():
                        if msg[0] == "eof" and w.result is not None:
                            sel.unregister(w.fd)
                            break
                        w.handle(msg)
                        if live and msg[0] == "tick":
                            live.add(w.share.index, msg[1])
                        if msg[0] == "result":
                            sel.unregister(w.fd)
                            if live:
                                live.finished(w.share.index)
                            break
                if sampler and monotonic_ns() >= next_sample:
                    sampler.sample()
                    next_sample += interval_ns
                    if next_sample < monotonic_ns():
                        next_sample = monotonic_ns() + interval_ns
                if (
                    watch
                    and events
                    and watch.update([w.last_tick for w in workers], (monotonic_ns() - measure_ns) / 1e9)
                ):
                    for w in workers:
                        w.send(("stop",))
                check_alive(workers)
            except KeyboardInterrupt:
                if stopping:
                    raise
                stopping = True
                for w in workers:
                    w.send(("stop",))
    if sampler:
        sampler.sample()
    return stopping


def check_alive(workers: list[WorkerProcess]) -> None:
    """Workers tick every second; one silent for long has hung or died without a word."""
    now = monotonic_ns()
    for w in workers:
        if w.result is None and now - w.last_message_ns > SILENCE_LIMIT_NS:
            raise LoadError(
                f"load worker {w.share.index} sent nothing for {SILENCE_LIMIT_NS / 1e9:g} s; stopped waiting for it"
            )


# -- merging ------------------------------------------------------------------------------
def _merge_phase(results: list[dict], name: str, extra: list[float]) -> dict:
    parts = [r["phases"][name] for r in results]
    starts = [p["start_ns"] for p in parts if p["start_ns"]]
    ends = [p["end_ns"] for p in parts if p["end_ns"]]
    elapsed = (max(ends) - min(starts)) / 1e9 if starts and ends else 0.0
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    raw = latency.RawStats()
    for p in parts:
        raw.add(latency.RawStats.from_dict(p["raw"]))
    hist = latency.merge(p["histogram"] for p in parts)
    out = {
        "requests": sum(p["requests"] for p in parts),
        "errors": {"total": sum(errors.values()), **dict(sorted(errors.items()))},
        "elapsed_s": round(elapsed, 6),
        "bytes": sum(p["bytes"] for p in parts),
        "body_bytes": sum(p["body_bytes"] for p in parts),
        "start_ns": min(starts) if starts else 0,
        "latency_us": latency.summary(hist, raw, extra),
        "histogram": latency.encode(hist),
    }
    if parts and parts[0]["histogram_uncorrected"] is not None:
        raw_u = latency.RawStats()
        for p in parts:
            raw_u.add(latency.RawStats.from_dict(p["raw_uncorrected"]))
        hist_u = latency.merge(p["histogram_uncorrected"] for p in parts)
        out["latency_uncorrected_us"] = latency.summary(hist_u, raw_u, extra)
        out["histogram_uncorrected"] = latency.encode(hist_u)
    return out


def _unfinished(results: list[dict], slowest_us: int | None) -> dict:
    """The requests still owed when the measured window closed (sent or due, no response yet)."""
    ages = sorted(age for r in results for age in r["unfinished_us"])
    return {
        "count": len(ages),
        "oldest_us": ages[-1] if ages else None,
        "median_age_us": ages[len(ages) // 2] if ages else None,
        "longer_than_max": sum(age > (slowest_us or 0) for age in ages),
        "stalled": sum(age > latency.STALLED_BEYOND_SLOWEST * (slowest_us or 0) for age in ages),
    }


def _merge_timeline(results: list[dict], start_ns: int) -> list[dict]:
    longest = max((len(r["timeline"]) for r in results), default=0)
    out = []
    for i in range(longest):
        slices = [r["timeline"][i] for r in results if i < len(r["timeline"])]
        hist = latency.merge(s["histogram"] for s in slices)
        end = max(s["end_ns"] for s in slices)
        begin = min(s["start_ns"] for s in slices)
        n = sum(s["requests"] for s in slices)
        out.append(
            {
                "t": round((end - start_ns) / 1e9, 3),
                "dt": round((end - begin) / 1e9, 3),
                "requests": n,
                "errors": sum(s["errors"] for s in slices),
                "bytes": sum(s["bytes"] for s in slices),
                "p50_us": hist.get_value_at_percentile(50) if n else None,
                "p99_us": hist.get_value_at_percentile(99) if n else None,
                "max_us": hist.get_max_value() if n else None,
                # the slice's latencies, so batches of slices give a percentile with an interval
                "histogram": latency.encode(hist),
            }
        )
    return out


def _merge_stages(opts: LoadOptions, results: list[dict], extra: list[float]) -> list[dict] | None:
    """Rate stages, each apart: its target, the rate achieved (responses and errors a second), latency, errors."""
    schedule = opts.rate_schedule
    if schedule is None:
        return None
    out = []
    for i, (begin, end, target) in enumerate(schedule.stages()):
        parts = [r["stages"][i] for r in results if i < len(r["stages"])]
        if not parts:
            break  # the window was cut short (Ctrl-C) before this stage
        elapsed = (max(p["end_ns"] for p in parts) - min(p["start_ns"] for p in parts)) / 1e9
        errors: dict[str, int] = {}
        for p in parts:
            for k, v in p["errors"].items():
                errors[k] = errors.get(k, 0) + v
        requests = sum(p["requests"] for p in parts)
        stage = {
            "stage": i + 1,
            "target_rate": round(target, 3),
            "start_s": round(begin, 3),
            "end_s": round(end, 3),
            "elapsed_s": round(elapsed, 6),
            "requests": requests,
            "errors": {"total": sum(errors.values()), **dict(sorted(errors.items()))},
            "scheduled": sum(p["scheduled"] for p in parts),
            "achieved_rate": round((requests + sum(errors.values())) / elapsed, 3) if elapsed > 0 else 0.0,
        }
        for key, raw_key, hist_key in (
            ("latency_us", "raw", "histogram"),
            ("latency_uncorrected_us", "raw_uncorrected", "histogram_uncorrected"),
        ):
            raw = latency.RawStats()
            for p in parts:
                raw.add(latency.RawStats.from_dict(p[raw_key]))
            stage[key] = latency.summary(latency.merge(p[hist_key] for p in parts), raw, extra)
        out.append(stage)
    return out


def build_document(
    opts: LoadOptions, plan: LoadPlan, results: list[dict], sampler: ServerSampler | None, interrupted: bool = False
) -> dict:
    extra = list(opts.percentiles)
    m = _merge_phase(results, "measure", extra)
    elapsed = m["elapsed_s"]
    requests = m["requests"]
    errors = m["errors"]
    timeline = _merge_timeline(results, m["start_ns"])
    server = None
    if sampler is not None:
        server = sampler.report(m["start_ns"], m["start_ns"] + int(elapsed * 1e9))
    server_cpus = len(opts.server_cpus) if opts.server_cpus else len(os.sched_getaffinity(0))
    client = judge_client(results, elapsed, server["cpu_percent"] if server else None, server_cpus)
    cpu_s = sum(r["cpu_s"] for r in results)  # the client's cost per request and per byte received
    client["cpu_us_per_request"] = round(cpu_s * 1e6 / requests, 3) if requests else None
    client["cpu_us_per_mb"] = round(cpu_s * 1e12 / m["bytes"], 3) if m["bytes"] else None
    warnings: list[str] = []
    if interrupted:
        warnings.append("interrupted: the measured window ended early")
    if elapsed < JUDGE_MIN_S:
        warnings.append(
            f"the measured window ({elapsed:.3f} s) is too short to judge whether the generator was the limit"
        )
    if errors["total"]:
        warnings.append(
            f"{errors['total']} requests failed: " + ", ".join(f"{k} {v}" for k, v in errors.items() if k != "total")
        )
    if errors.get(NO_LOCAL_PORT):
        warnings.append(explain_no_local_port(errors[NO_LOCAL_PORT], opts.loopback_sources))
    if opts.cpus and opts.server_cpus and set(opts.cpus) & set(opts.server_cpus):
        warnings.append(f"generator CPUs {opts.cpus} overlap server CPUs {opts.server_cpus}")
    achieved = None
    schedule = None
    if opts.open_loop:
        achieved = round((requests + errors["total"]) / elapsed, 3) if elapsed > 0 else 0.0
        scheduled = sum(r["open_loop"]["scheduled"] for r in results)
        queued = sum(r["open_loop"]["queued_sends"] for r in results)
        slip = latency.RawStats()
        for r in results:
            slip.add(latency.RawStats.from_dict(r["open_loop"]["slip"]))
        schedule = {
            "scheduled": scheduled,
            "queued_sends": queued,
            "slip_mean_us": round(slip.total / slip.count, 1) if slip.count else None,
            "slip_p99_us": max((r["open_loop"]["slip"]["p99_us"] or 0 for r in results), default=None),
            "slip_max_us": slip.high if slip.count else None,
        }
        target = opts.rate_schedule.mean if opts.rate_schedule is not None else opts.rate
        if opts.requests is None and achieved < 0.95 * target:
            warnings.append(
                f"target rate not reached: {achieved:.0f} of {target:g} req/s "
                f"({queued} requests waited for a busy connection)"
            )
    unfinished = _unfinished(results, m["latency_us"]["max"])
    if unfinished["longer_than_max"]:
        warnings.append(
            f"{unfinished['count']} requests were still waiting when the window closed, "
            f"{unfinished['longer_than_max']} of them for longer than the slowest measured "
            f"response (the oldest for {unfinished['oldest_us'] / 1000:.1f} ms); the latency "
            f"figures leave them out"
        )
    warm = _merge_phase(results, "warmup", extra) if opts.warmup_s else None
    ramp = _merge_phase(results, "ramp_up", extra) if opts.ramp_up_s else None
    adversaries = None
    if any(r["adversaries"] for r in results):
        adversaries = merge_stats([r["adversaries"] for r in results if r["adversaries"]])
    doc = {
        "schema": SCHEMA,
        "tool": "serverzoo load",
        "machine": describe_machine(),
        "options": opts.to_dict(),
        "mode": "open" if opts.open_loop else "closed",
        "conn_mode": opts.conn_mode,
        "url": opts.url,
        "targets": _targets_with_counts(plan, results),
        "requests": requests,
        "errors": errors,
        "unfinished": unfinished,
        "elapsed_s": elapsed,
        # wall clock at the measured window's start (the timeline's zero), for logs that want a date
        "started_unix_s": round(time.time() - (monotonic_ns() - m["start_ns"]) / 1e9, 3) if m["start_ns"] else None,
        "rps": round(requests / elapsed, 3) if elapsed > 0 else 0.0,
        "bytes": m["bytes"],
        "body_bytes": m["body_bytes"],
        "mb_per_s": round(m["bytes"] / elapsed / 1e6, 3) if elapsed > 0 else 0.0,
        "latency_us": m["latency_us"],
        "histogram": m["histogram"],
        "histogram_format": latency.FORMAT,
        "timeline": timeline,
        "client": client,
        "server": server,
        "target_rate": round(opts.rate_schedule.mean, 3) if opts.rate_schedule is not None else opts.rate,
        "achieved_rate": achieved,
        "stages": _merge_stages(opts, results, extra),
        "schedule": schedule,
        "warmup": _phase_brief(warm),
        "ramp_up": _phase_brief(ramp),
        "adversaries": adversaries,
        "server_process": None,  # run_load fills these in for a server it started (--serve) and its --link
        "link": None,
        "warnings": warnings,
        "interrupted": interrupted,
    }
    if "latency_uncorrected_us" in m:
        doc["latency_uncorrected_us"] = m["latency_uncorrected_us"]
        doc["histogram_uncorrected"] = m["histogram_uncorrected"]
    return doc


def _targets_with_counts(plan: LoadPlan, results: list[dict]) -> list[dict]:
    """The mix, with the requests sent to each target in the measured window (for a mix)."""
    targets = plan.describe()
    counts = [r["sent"] for r in results if r["sent"] is not None]
    for i, t in enumerate(targets):
        t["sent"] = sum(c[i] for c in counts) if counts else None
    return targets


def _phase_brief(p: dict | None) -> dict | None:
    if p is None:
        return None
    out = {k: p[k] for k in ("requests", "errors", "elapsed_s", "bytes", "latency_us")}
    out["rps"] = round(p["requests"] / p["elapsed_s"], 3) if p["elapsed_s"] > 0 else 0.0
    return out
