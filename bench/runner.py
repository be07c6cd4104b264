"""Runs cells: a fresh server pinned to its CPUs, the generator pinned to the others, a clean stop.

One cell = one server process (started, READY awaited, RSS read, its process tree moved
into a cgroup of its own where the machine allows: bench/cgroups.py), one `serverzoo load`
process (warm-up, then the measured run, sampling the server's CPU time from the cgroup and
RSS by its PID), then SIGTERM, a wait for the server's own graceful exit, and the cgroup
removed. Which CPUs each side gets is the scenario's placement (BenchPlan.cpus_for); where the
runner may, both run at a raised priority, the generator above the server (SERVER_NICE). A cell that fails
(server does not start, generator crashes or overruns) is recorded as failed with a
one-line reason and the run goes on. KeyboardInterrupt is the only thing that stops
the loop; the caller saves what was measured.

Over an emulated link (`--link NAME`), the same cell runs across two network namespaces
built once for the whole run: the server (a serverzoo model or nginx) on the link's server
host, the generator on its client host, each started through `ip netns exec`, which execs:
PIDs and CPU pinning stay the process's own, so sampling the server by PID still works.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psutil

from serverzoo.servers.launch import ServerProcess, ServerStartError

from .cgroups import CellCgroup, CgroupPlacer
from .loadargs import load_argv, load_options
from .nginx import NginxError, NginxServer
from .plan import REFERENCE, BenchPlan, Cell, connections_needed

if TYPE_CHECKING:
    from serverzoo.clients.links import LinkedHosts

    from .cluster import ClusterPlacement


class Interrupts:
    """Ctrl-C and SIGTERM, held back while a server starts or stops.

    A KeyboardInterrupt raised inside Popen or a readiness wait can leave a started
    server nobody knows the PID of; inside a stop, one nobody waits for. Within
    critical() the signal is remembered and raised when the section ends, so every
    server started is also stopped. The measured run itself stays interruptible.

    A KeyboardInterrupt raised from a signal handler can also be lost: when the signal
    lands while Python runs a hook whose exceptions it only prints (an at-fork hook of the
    logging module, a finalizer), the run goes on as if nothing had happened. So every
    signal is also recorded, and check(), called before each cell, raises it again.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False
        self.requested = False

    def reset(self) -> None:
        self.depth, self.pending, self.requested = 0, False, False

    def handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.depth:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if a signal asked to stop, even if the one raised then was lost."""
        if self.requested:
            raise KeyboardInterrupt

    @contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending:
                self.pending = False
                raise KeyboardInterrupt


interrupts = Interrupts()  # run_matrix installs interrupts.handler for SIGINT and SIGTERM

# Priorities, where the runner may raise them (root): the cell's server and generator run
# above the machine's other work, so a background job on a shared machine disturbs the
# figures less; and the generator above the server, so where the two share CPUs (placement
# "server-all") the generator, whose share is small, never waits behind the server for a
# CPU (the server would be measured against a generator it starved, and judged client-bound).
SERVER_NICE = -5
GENERATOR_NICE = -10
GENERATOR_SLACK_S = 20.0  # beyond warm-up + duration + one request timeout, a generator is stuck
STDERR_TAIL = 1500


def tree_rss(pid: int) -> int | None:
    """Resident memory of a process and its descendants, in bytes."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _tail(text: str) -> str:
    return text[-STDERR_TAIL:]


class CellRunner:
    def __init__(
        self,
        plan: BenchPlan,
        corpus_root: str,
        hosts: LinkedHosts | None = None,
        placement: ClusterPlacement | None = None,
        cgroups: CgroupPlacer | None = None,
    ) -> None:
        self.plan = plan
        self.corpus_root = corpus_root
        self.hosts = hosts  # the run's link, up; None: loopback
        self.placement = placement  # --cluster: the server and the generators on Dask workers
        self.cgroups = cgroups or CgroupPlacer()
        # called with each second's live figures of the running cell (clients/loadgen/live.py's Second, as a dict)
        self.on_live: Callable[[dict[str, Any]], None] | None = None

    def _server(self, cell: Cell) -> ServerProcess | NginxServer:
        spec = self.plan.servers[cell.server]
        hosts = self.hosts
        cpus, _ = self.plan.cpus_for(cell.scenario)
        if self.placement is not None:
            sc = self.plan.scenarios[cell.scenario]
            args = () if spec.model == REFERENCE else (*self.plan.run.server_args, *sc.server_args, *spec.args)
            return self.placement.server(
                spec.model,
                self.corpus_root,
                args,
                cpus,
                (sc.generator_seconds + 2 * GENERATOR_SLACK_S) * sc.generator_runs,
            )
        if spec.model == REFERENCE:
            connections = connections_needed(self.plan.scenarios[cell.scenario])  # NginxServer adds the headroom
            if hosts is None:
                return NginxServer(self.corpus_root, tuned=True, cpus=cpus, connections=connections)
            return NginxServer(
                self.corpus_root,
                tuned=True,
                cpus=cpus,
                connections=connections,
                host=hosts.server_addr,
                wrap=lambda argv: hosts.command("server", argv),
                namespace=hosts.server_namespace,
            )
        sc = self.plan.scenarios[cell.scenario]
        args = (*self.plan.run.server_args, *sc.server_args, *spec.args)
        if hosts is not None:
            return hosts.server_process(spec.model, self.corpus_root, *args, cpus=cpus)
        return ServerProcess(spec.model, self.corpus_root, *args, cpus=cpus)

    def _cgroup(self, server: ServerProcess | NginxServer, info: dict[str, Any]) -> CellCgroup | None:
        """The server's tree moved into a fresh cgroup, or None (CPU then sampled from the live tree)."""
        if self.hosts is not None:
            # `ip netns exec` mounts the namespace's own /sys: the generator on the link's client host
            # cannot see the cgroup tree
            info["cpu_accounting"] = "live process tree plus reaped children (over a link)"
            return None
        cgroup = self.cgroups.new()
        if cgroup is not None and not cgroup.adopt(server.pid):
            info["cgroup_problem"] = cgroup.remove()
            cgroup = None
        info["cpu_accounting"] = (
            "cgroup v2 (every process of the server's tree, exited ones included)"
            if cgroup is not None
            else f"live process tree plus reaped children ({self.cgroups.why_not})"
        )
        return cgroup

    @staticmethod
    def _remove_cgroup(cgroup: CellCgroup, info: dict[str, Any]) -> None:
        with interrupts.critical():
            info["memory_peak_bytes"] = cgroup.memory_peak()
            problem = cgroup.remove()
        if problem:
            info["cgroup_problem"] = problem

    def run(self, cell: Cell) -> dict[str, Any]:
        """Measure one cell; returns its record (status "ok" or "failed")."""
        sc = self.plan.scenarios[cell.scenario]
        record: dict[str, Any] = {
            "id": cell.id,
            "server": cell.server,
            "model": self.plan.servers[cell.server].model,
            "scenario": cell.scenario,
            "level": cell.level,
            "level_key": cell.level_key,
            "repetition": cell.repetition,
            "started": _now(),
            "status": "failed",
            "error": None,
        }
        t0 = time.monotonic()
        record["placement"] = self.plan.placement(cell.scenario)
        info: dict[str, Any] = {"cpus": record["placement"]["server_cpus"]}
        record["server_process"] = info
        timing: dict[str, float] = {}
        record["timing_s"] = timing
        server = None
        try:
            with interrupts.critical():  # a Ctrl-C now is raised once the server is fully up or gone
                server = self._server(cell)
                try:
                    server.start()
                except BaseException:
                    server.stop()  # half-started: it must not outlive the run
                    server = None
                    raise
            timing["server_start"] = round(time.monotonic() - t0, 3)
        except (ServerStartError, NginxError, OSError) as exc:
            record["error"] = f"server did not start: {str(exc).splitlines()[0][:300]}"
            info["clean_stop"] = None
            record["seconds"] = round(time.monotonic() - t0, 3)
            return record
        except KeyboardInterrupt:
            if server is not None:  # it started; the interrupt waited for that
                self._stop(server, info, timing)
            raise
        cgroup = None
        try:
            info["pid"] = server.pid
            info["url"] = server.url
            info["argv"] = server.argv if isinstance(server, ServerProcess) else server.shown_argv()
            if self.placement is None:  # a server on this machine: its memory, priority and cgroup
                info["rss_at_ready_bytes"] = tree_rss(server.pid)
                info["nice"] = renice_tree(server.pid, SERVER_NICE)
                with interrupts.critical():  # a cgroup made is a cgroup the `finally` below removes
                    cgroup = self._cgroup(server, info)
            opts = load_options(
                self.plan, cell, server.url, self.corpus_root, server.pid, cgroup.path if cgroup else None
            )
            if self.placement is not None:  # sampled on its own machine, from READY to the stop
                info["host"], info["worker"] = server.host, server.worker
                info["rss_at_ready_bytes"] = server.rss_at_ready
                opts = self.placement.load_options(opts)
            t1 = time.monotonic()
            placement = record["placement"]
            if sc.idle:  # the same active load first, without the idle set: what the idle set costs
                without = {k: v for k, v in opts.items() if k != "idle"}
                record["load_without_idle"], error, _ = self._generate(
                    without, sc.generator_seconds, placement["client_cpus"], GENERATOR_NICE
                )
                if error is not None:
                    record["without_idle_error"] = error
            record["load"], record["error"], record["generator"] = self._generate(
                opts, sc.generator_seconds, placement["client_cpus"], GENERATOR_NICE
            )
            capacity = record["load"].get("capacity_rps", 0) if record["load"] is not None else 0
            if capacity is None:  # a capacity search in which no rate held: no figure, and why
                record["error"] = f"no rate held at {sc.goal}: {record['load']['stopped']}"
            timing["generator"] = round(time.monotonic() - t1, 3)
        finally:
            try:
                self._stop(server, info, timing)
            finally:  # a Ctrl-C held back during the stop is raised at its end: the cgroup goes first
                if cgroup is not None:
                    self._remove_cgroup(cgroup, info)
        if record["load"] is not None:
            if self.placement is not None:  # the samples came back with the stopped server
                record["load"]["server"] = server.usage(record["load"])
            record["status"] = "ok"
        record["seconds"] = round(time.monotonic() - t0, 3)
        return record

    def _generate(
        self, opts: dict[str, Any], expected_s: float, cpus: list[int], nice: int = 0
    ) -> tuple[dict | None, str | None, dict]:
        """Run `serverzoo load` pinned to the client CPUs (at `nice`); (document, error, generator record)."""
        fd, json_path = tempfile.mkstemp(prefix="serverzoo-load-", suffix=".json")
        os.close(fd)
        argv = load_argv(opts, json_path)
        if self.placement is not None:
            argv = self.placement.load_argv(argv)
        gen: dict[str, Any] = {"argv": argv[1:], "cpus": cpus}
        if nice:
            gen["nice"] = nice if _can_renice(nice) else None  # None: not allowed here, ran at the default
        if self.hosts is not None:
            argv = self.hosts.command("client", argv)
            gen["netns"] = self.hosts.client_ns  # the link's client host
        # the generator's live figures come back on a pipe of their own, one JSON line a second
        live_read, live_write = os.pipe()
        argv = [*argv, "--progress-fd", str(live_write)]
        try:
            with tempfile.TemporaryFile() as err:
                # its own session: a terminal's Ctrl-C reaches the runner only, which ends the generator itself
                # and discards the cell (the generator would report a cut-short window as a result)
                try:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        preexec_fn=lambda: _pin_and_nice(cpus, gen.get("nice") or 0),
                        start_new_session=True,
                        pass_fds=(live_write,),
                    )
                except (OSError, subprocess.SubprocessError) as exc:
                    return None, f"load generator did not start: {exc}", gen
                finally:
                    os.close(live_write)
                try:
                    code = self._wait_reading_live(proc, live_read, expected_s + GENERATOR_SLACK_S)
                except subprocess.TimeoutExpired:
                    _kill_group(proc)
                    return None, f"load generator overran its {expected_s + GENERATOR_SLACK_S:.0f} s deadline", gen
                except BaseException:
                    _kill_group(proc)
                    raise
                err.seek(0)
                stderr = err.read().decode(errors="replace")
            gen["exit_code"] = code
            if stderr.strip():
                gen["stderr_tail"] = _tail(stderr)
            try:
                with open(json_path, encoding="utf-8") as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {code}"
                return None, f"load generator wrote no result: {last[:300]}", gen
            return doc, None, gen
        finally:
            os.close(live_read)
            try:
                os.unlink(json_path)
            except OSError:
                pass

    def _wait_reading_live(self, proc: subprocess.Popen, fd: int, timeout: float) -> int:
        """proc.wait(timeout), passing the live figures read from fd meanwhile to on_live."""
        deadline = time.monotonic() + timeout
        buffer, reading = b"", True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            if not reading:
                return proc.wait(left)
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                if proc.poll() is not None:
                    return proc.returncode
                continue
            chunk = os.read(fd, 65536)
            if not chunk:  # the generator has exited (its workers do not inherit the pipe)
                reading = False
                continue
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                self._pass_live(line)

    def _pass_live(self, line: bytes) -> None:
        try:
            figures = json.loads(line)
        except ValueError:
            return  # not ours to judge: the cell's result is the JSON document, not these lines
        if self.on_live is not None and isinstance(figures, dict):
            self.on_live(figures)

    @staticmethod
    def _stop(server: ServerProcess | NginxServer, info: dict[str, Any], timing: dict[str, float]) -> None:
        """Graceful stop; record whether the server exited cleanly and how long it took."""
        t0 = time.monotonic()
        with interrupts.critical():
            try:
                CellRunner._stop_and_check(server, info)
            finally:
                timing["server_stop"] = round(time.monotonic() - t0, 3)

    @staticmethod
    def _stop_and_check(server: ServerProcess | NginxServer, info: dict[str, Any]) -> None:
        if isinstance(server, NginxServer):
            server.stop()
            code = server.proc.returncode if server.proc else None
            info["exit_code"] = code
            info["clean_stop"] = code == 0
            if code != 0:
                info["problem"] = f"nginx exited with {code}"
            return
        code = server.stop()
        stderr = server.stderr_text()
        info["exit_code"] = code
        problems = []
        if code != 0:
            problems.append(f"exit code {code} after SIGTERM")
        if "Traceback" in stderr:
            problems.append("a traceback on stderr")
        info["clean_stop"] = not problems
        if problems:
            info["problem"] = ", ".join(problems)
            info["stderr_tail"] = _tail(stderr)


def renice_tree(pid: int, nice: int) -> int | None:
    """Set every thread of a process tree to `nice`; the value set, or None where not allowed (not root).

    Linux keeps a nice value per thread, and new threads and processes inherit their creator's,
    so a server's threads started before this call are set one by one and later ones follow.
    """
    if not _can_renice(nice):
        return None
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.Error:
        return None
    for p in procs:
        try:
            threads = [t.id for t in p.threads()]
        except psutil.Error:
            continue
        for tid in threads:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except OSError:
                pass  # exited meanwhile
    return nice


def _can_renice(nice: int) -> bool:
    """Whether this process may start one at `nice` (a negative value needs root or CAP_SYS_NICE)."""
    return nice >= 0 or os.geteuid() == 0


def _pin_and_nice(cpus: list[int], nice: int) -> None:
    """In the generator's child, before exec: its CPUs, and its priority (inherited by its workers)."""
    os.sched_setaffinity(0, cpus)
    if nice:
        os.nice(nice)


def _kill_group(proc: subprocess.Popen) -> None:
    """End the generator and the worker processes it started (in sessions of their own), by PID."""
    if proc.poll() is None:
        try:
            workers = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            workers = []
        proc.kill()
        for w in workers:
            try:
                w.kill()
            except psutil.Error:
                pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
