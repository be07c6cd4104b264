"""Two `--cluster local:2` generators against one local generator, on the same core, alternating runs.

    python -m serverzoo.bench.cluster_vs_local                                 # nginx, keep-alive, 5 x 5 s
    python -m serverzoo.bench.cluster_vs_local --server select --conn-mode new  # a serverzoo model
    python -m serverzoo.bench.cluster_vs_local --server asyncio-uvloop --floor 0.97
    python -m serverzoo.bench.cluster_vs_local --sched                         # why the split costs
    python -m serverzoo.bench.cluster_vs_local -r 1 -d 1                       # a smoke test

The server (nginx with one worker, `sendfile off; open_file_cache ...`, or a serverzoo model
or variant through `serverzoo serve`, one process) is pinned to --server-cpu; each side's
whole `serverzoo load` process tree (coordinator, and for the cluster its LocalCluster's
scheduler, nannies, Dask workers and generator processes) to --client-cpu, as is this
script. A 1 KiB file, 64 connections (keep-alive, or a new one per request), a one-second
warm-up, every body verified. Three sides:

  local-1    -w 1: one generator process (the yardstick)
  local-2    -w 2: two generator processes sharing the core (what two processes cost by themselves)
  cluster-2  --cluster local:2: two generator processes on two Dask workers (plus Dask's own work)

Every repetition runs each side once, in an order rotated from one repetition to the next,
so drift on a shared machine and the order itself hit all sides alike. Each side's rate is
divided by local-1's of the same repetition: a paired ratio per repetition, reported as the
median with the lowest and highest (the spread). cluster-2 / local-2 is what Dask costs;
local-2 / local-1 what splitting the load over two processes costs. For cluster-2 the CPU its
process tree spent outside the generator processes within the measured window is sampled
too (Dask's cost measured directly). The server's CPU over each window says whether the
server was the limit (near 100%) or the generators were.

--sched adds, per side, how its generators share the core over the middle of each measured
window (generator_sched.py): time slices and involuntary context switches a second, and
with perf the epoll waits per request (two per readiness batch on the raw-socket paths: fewer
per request, bigger batches).

The machine may be shared: for every run the CPU that processes other than the server, the
load's tree and this script took is measured (the machine's busy time minus theirs); a
repetition in which it passed DISTURBED_PERCENT of a core in some run is shown but left out
of the summary.

--floor F makes it a check: the exit status is 1 when the median cluster-2 / local-1 ratio of
any server and connection mode is below F (otherwise, and without --floor, 0).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import psutil

from ..servers import resolve, server_names
from ..servers.launch import ServerProcess
from .generator_sched import GENERATOR, GeneratorWatch
from .loadgen_vs_wrk import make_root, write_result
from .nginx import NginxServer

SIDES = {
    "local-1": ["-w", "1"],
    "local-2": ["-w", "2"],
    "cluster-2": ["--cluster", "local:2"],
}
GENERATORS = {"local-1": 1, "local-2": 2, "cluster-2": 2}  # generator processes of each side
YARDSTICK = "local-1"
CHECKED = "cluster-2"  # the side --floor applies to
CONN_MODES = ("keepalive", "new")
FILE = "1KiB.bin"
WARMUP_S = 1.0
TREE_SAMPLE_S = 0.25
TREE_RESCAN_SAMPLES = 4  # this script shares the generators' core: it looks for new processes once a second
PAUSE_S = 0.5  # between runs: the server's closed connections drain
# other processes took more than this share of a core during some run of a repetition: it is left out
DISTURBED_PERCENT = 10.0


class TreeSampler:
    """CPU time of every process of a `serverzoo load --cluster local:N` tree by role, sampled with wall-clock
    times (the cluster's measured window is given on the scheduler's wall clock: this machine's). Roles: the
    generator processes; the coordinator (the root: with local:N it also holds the scheduler and the nannies);
    the Dask worker processes (and multiprocessing's resource tracker)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.roles: dict[int, str] = {pid: "coordinator"}  # a process's command line is read once
        self.samples: list[tuple[int, dict[int, tuple[str, float]]]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        procs: list[psutil.Process] = []
        while not self.done.wait(TREE_SAMPLE_S):
            now = time.time_ns()
            rescan = len(self.samples) % TREE_RESCAN_SAMPLES == 0
            if rescan:
                try:  # finding the descendants reads every process of the machine: not at every sample
                    procs = [self.root, *self.root.children(recursive=True)]
                except psutil.Error:
                    return
            cpu = {}
            for p in procs:
                try:
                    # looked at again on each rescan until it is a generator: a child caught between its
                    # fork and its exec still shows its parent's command line
                    if p.pid not in self.roles or (rescan and self.roles[p.pid] == "dask_workers"):
                        self.roles[p.pid] = "generator" if GENERATOR in " ".join(p.cmdline()) else "dask_workers"
                    t = p.cpu_times()
                    cpu[p.pid] = (self.roles[p.pid], t.user + t.system)
                except psutil.Error:
                    continue
            self.samples.append((now, cpu))

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def other_percent(self, start_ns: int, end_ns: int) -> dict[str, float] | None:
        """The CPU of the processes other than the generators between the samples around the window, in %
        of one core (processes present at both samples): in all, the coordinator's, the Dask workers'."""
        before = [s for s in self.samples if s[0] <= start_ns]
        after = [s for s in self.samples if s[0] >= end_ns]
        if not before or not after:
            return None
        (t0, a), (t1, b) = before[-1], after[0]
        span = (t1 - t0) / 1e9
        used = {"coordinator": 0.0, "dask_workers": 0.0}
        for pid, (role, cpu) in b.items():
            if pid in a and role in used:
                used[role] += cpu - a[pid][1]
        shares = {role: round(u / span * 100, 1) for role, u in used.items()}
        return {"all": round(sum(used.values()) / span * 100, 1), **shares}


def _busy_s() -> float:
    """CPU seconds the machine spent busy so far, all cores. Interrupts count: the kernel books the network
    work it does in a process's system call as softirq time, and that process's CPU time includes it."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a running process and its descendants."""
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _ours_s(server_pid: int) -> float:
    """CPU seconds of this script, its finished children (the load runs) and the server's tree."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + done.ru_utime + done.ru_stime + _tree_cpu_s(server_pid)


def run_side(
    url: str,
    side: str,
    *,
    conn_mode: str,
    connections: int,
    duration: float,
    cpu: int,
    corpus: str,
    server_pid: int,
    sched: bool = False,
) -> dict:
    """One `serverzoo load` run of a side, its whole process tree pinned to cpu; with sched, the generators'
    time slices, context switches and epoll waits over the middle of the measured window too."""
    with tempfile.TemporaryDirectory(prefix="serverzoo-cluster-vs-local-") as tmp:
        out = os.path.join(tmp, "out.json")
        argv = [
            sys.executable,
            "-m",
            "serverzoo",
            "load",
            url,
            "-c",
            str(connections),
            "-d",
            str(duration),
            "--warmup",
            str(WARMUP_S),
            "--conn-mode",
            conn_mode,
            "--corpus",
            corpus,
            "--server-pid",
            str(server_pid),
            *SIDES[side],
            "--json",
            out,
        ]
        with tempfile.TemporaryFile() as err:
            t0, busy0, ours0 = time.monotonic(), _busy_s(), _ours_s(server_pid)
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=lambda: os.sched_setaffinity(0, {cpu})
            )
            tree = TreeSampler(proc.pid) if side == CHECKED else None
            watch = (
                GeneratorWatch(proc.pid, GENERATORS[side], connections, WARMUP_S, max(duration - 1.5, 0.5))
                if sched
                else None
            )
            try:
                code = proc.wait(duration + 120)
            finally:
                if tree:
                    tree.stop()
            # the CPU other processes of the machine took meanwhile (whole run: start-up included):
            # a run disturbed by other work shows here
            foreign = (_busy_s() - busy0 - (_ours_s(server_pid) - ours0)) / (time.monotonic() - t0) * 100
            if code != 0:
                err.seek(0)
                raise RuntimeError(f"{side}: serverzoo load exited with {code}: {err.read().decode().strip()}")
        with open(out) as f:
            doc = json.load(f)
    window = doc["cluster"]["window"] if "cluster" in doc else None
    server = doc.get("server") or {}
    return {
        "rps": doc["rps"],
        "requests": doc["requests"],
        "errors": doc["errors"]["total"],
        "generator_cpu_percent": doc["client"]["cpu_percent"],
        "cpu_us_per_request": doc["client"]["cpu_us_per_request"],
        "server_cpu_percent": server.get("cpu_percent"),
        "foreign_cpu_percent": round(foreign, 1),
        "workers": [w["rps"] for w in doc["cluster"]["workers"]] if window else None,
        "other_cpu_percent": tree.other_percent(window["scheduler_start_ns"], window["scheduler_end_ns"])
        if tree and window
        else None,
        "sched": watch.figures(doc["rps"]) if watch else None,
    }


def spread(values: list[float]) -> dict:
    """The median, lowest and highest of a few figures."""
    return {"median": statistics.median(values), "low": min(values), "high": max(values)}


def _sched_medians(figures: list[dict]) -> dict | None:
    """The median of each generator_sched figure over the runs that have it."""
    if not figures:
        return None
    out = {}
    for key in figures[0]:
        values = [f[key] for f in figures if f[key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


def disturbed(runs: dict[str, list[dict]]) -> list[int]:
    """The repetitions in which some side's run shared the machine with other work (DISTURBED_PERCENT)."""
    repeat = len(runs[YARDSTICK])
    return [i for i in range(repeat) if any(rs[i]["foreign_cpu_percent"] > DISTURBED_PERCENT for rs in runs.values())]


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per side: its rates' spread, and its paired ratios to the yardstick (run i over the yardstick's run i),
    over the undisturbed repetitions (over all of them when every one was disturbed: then it says so)."""
    left_out = disturbed(runs)
    repeat = len(runs[YARDSTICK])
    kept = [i for i in range(repeat) if i not in left_out] or list(range(repeat))
    runs = {side: [rs[i] for i in kept] for side, rs in runs.items()}
    out: dict = {"left_out": left_out, "all_disturbed": len(left_out) == repeat}
    for side, rs in runs.items():
        ratios = [r["rps"] / y["rps"] for r, y in zip(rs, runs[YARDSTICK], strict=True) if y["rps"] > 0]
        server = [r["server_cpu_percent"] for r in rs if r["server_cpu_percent"] is not None]
        out[side] = {
            "rps": spread([r["rps"] for r in rs]),
            "ratio": spread(ratios) if ratios else None,
            "generator_cpu_percent": statistics.median(r["generator_cpu_percent"] for r in rs),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in rs),
            "server_cpu_percent": statistics.median(server) if server else None,
            "sched": _sched_medians([r["sched"] for r in rs if r.get("sched")]),
        }
    if "local-2" in runs and CHECKED in runs:
        pairs = [c["rps"] / t["rps"] for c, t in zip(runs[CHECKED], runs["local-2"], strict=True) if t["rps"] > 0]
        out["dask"] = spread(pairs) if pairs else None
    others = [r["other_cpu_percent"] for r in runs.get(CHECKED, []) if r["other_cpu_percent"] is not None]
    out["cluster_other_cpu_percent"] = (
        {role: spread([o[role] for o in others]) for role in others[0]} if others else None
    )
    out["foreign_cpu_percent"] = spread([r["foreign_cpu_percent"] for rs in runs.values() for r in rs])
    return out


def compare(
    url: str,
    *,
    sides: list[str],
    conn_mode: str,
    repeat: int,
    duration: float,
    connections: int,
    cpu: int,
    corpus: str,
    server_pid: int,
    sched: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Each repetition runs every side once, the order rotated by one each time; every run and the summary."""
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for i in range(repeat):
        for side in sides[i % len(sides) :] + sides[: i % len(sides)]:
            r = run_side(
                url,
                side,
                conn_mode=conn_mode,
                connections=connections,
                duration=duration,
                cpu=cpu,
                corpus=corpus,
                server_pid=server_pid,
                sched=sched,
            )
            runs[side].append(r)
            if progress:
                progress(
                    f"  run {i + 1}/{repeat} {side:<10} {r['rps']:>10.0f} req/s, generators "
                    f"{r['generator_cpu_percent']:.0f}% CPU, server "
                    + (f"{r['server_cpu_percent']:.0f}%" if r["server_cpu_percent"] is not None else "-")
                    + (f", the rest {r['other_cpu_percent']['all']:.1f}%" if r["other_cpu_percent"] is not None else "")
                    + f"; other processes {r['foreign_cpu_percent']:.0f}%"
                )
            time.sleep(PAUSE_S)
    return {
        "url": url,
        "conn_mode": conn_mode,
        "repeat": repeat,
        "duration_s": duration,
        "warmup_s": WARMUP_S,
        "connections": connections,
        "client_cpu": cpu,
        "runs": runs,
        "summary": summarize(runs),
    }


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _range(s: dict | None, fmt: str, unit: str = "") -> str:
    if s is None:
        return "-"
    return f"{s['median']:{fmt}}{unit} [{s['low']:{fmt}}-{s['high']:{fmt}}]"


def format_comparison(title: str, c: dict) -> str:
    """The runs, then per side the median rate, its paired ratio to local-1 (lowest-highest), CPU figures."""
    sides = list(c["runs"])
    s = c["summary"]
    lines = [
        f"{title}: {c['connections']} {c['conn_mode']} connections, {FILE}, {c['repeat']} x {c['duration_s']:g} s "
        f"(+{c['warmup_s']:g} s warm-up), client side on CPU {c['client_cpu']} (req/s)",
        "  " + f"{'':<8}" + "".join(f"{side:>12}" for side in sides),
    ]
    for i in range(c["repeat"]):
        lines.append(
            f"  run {i + 1:<4}"
            + "".join(f"{c['runs'][side][i]['rps']:>12.0f}" for side in sides)
            + ("  (disturbed: left out)" if i in s["left_out"] and not s["all_disturbed"] else "")
        )
    lines.append(f"  {'median':<8}" + "".join(f"{s[side]['rps']['median']:>12.0f}" for side in sides))
    lines.append(
        f"  {'':<10}{'ratio to ' + YARDSTICK + ' [low-high]':<32}{'generators CPU':>15}{'us/request':>11}{'server CPU':>11}"
    )
    for side in sides:
        server = s[side]["server_cpu_percent"]
        lines.append(
            f"  {side:<10}{_range(s[side]['ratio'], '.3f', 'x'):<32}{s[side]['generator_cpu_percent']:>14.0f}%"
            f"{s[side]['cpu_us_per_request']:>11.1f}" + (f"{server:>10.0f}%" if server is not None else f"{'-':>11}")
        )
    if any(s[side]["sched"] for side in sides):
        lines.append(
            f"  {'':<10}{'epoll waits/request':>20}{'slices/s':>10}{'requests/slice':>16}{'involuntary switches/s':>24}"
        )
        for side in sides:
            f = s[side]["sched"] or {}
            lines.append(
                f"  {side:<10}{_num(f.get('epoll_waits_per_request'), '.3f'):>20}{_num(f.get('slices_per_s'), '.0f'):>10}"
                f"{_num(f.get('requests_per_slice'), '.0f'):>16}{_num(f.get('involuntary_switches_per_s'), '.0f'):>24}"
            )
    if s.get("dask"):
        lines.append(f"  cluster-2 / local-2 (what Dask costs): {_range(s['dask'], '.3f', 'x')}")
    other = s["cluster_other_cpu_percent"]
    if other:
        lines.append(
            "  cluster-2: CPU outside the generators within the measured window, % of a core: "
            f"{_range(other['all'], '.1f')}; the coordinator (with the scheduler and nannies) "
            f"{_range(other['coordinator'], '.1f')}, the Dask workers {_range(other['dask_workers'], '.1f')}"
        )
    lines.append(
        "  other processes of the machine during the runs kept (of 100% per core): "
        + _range(s["foreign_cpu_percent"], ".0f", "%")
        + (
            f"; every repetition had one run above {DISTURBED_PERCENT:g}%: figures unreliable"
            if s["all_disturbed"]
            else ""
        )
    )
    return "\n".join(lines)


def below_floor(results: list[dict], floor: float) -> list[str]:
    """One line per comparison whose median cluster-2 / local-1 ratio is below floor."""
    failed = []
    for c in results:
        ratio = c["summary"].get(CHECKED, {}).get("ratio")
        if ratio is not None and ratio["median"] < floor:
            failed.append(
                f"{c['server']} {c['conn_mode']}: {CHECKED} / {YARDSTICK} median {ratio['median']:.3f}x "
                f"[{ratio['low']:.3f}-{ratio['high']:.3f}] is below the floor {floor:g}x"
            )
    return failed


@contextmanager
def started(server: str, root: str, cpu: int) -> Iterator[tuple[str, int]]:
    """(base URL, PID) of nginx or a serverzoo model or variant pinned to cpu, stopped afterwards."""
    handle: AbstractContextManager
    if server == "nginx":
        handle = NginxServer(root, tuned=True, cpus=[cpu])
    else:
        v = resolve(server)
        one_process = ("--workers", "1") if v.model.default_workers is None else ()
        handle = ServerProcess(v.model.name, root, *v.args, *one_process, cpus=[cpu])
    with handle as srv:
        yield srv.url, srv.pid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--repeat", type=int, default=5, help="runs of each side [5]")
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="measured seconds per run [5]")
    ap.add_argument("-c", "--connections", type=int, default=64, help="[64]")
    ap.add_argument(
        "--server",
        action="append",
        help=f"nginx or a serverzoo model or variant; repeatable [nginx] ({', '.join(server_names())})",
    )
    ap.add_argument("--conn-mode", action="append", choices=CONN_MODES, help="repeatable [keepalive]")
    ap.add_argument("--side", action="append", choices=list(SIDES), help=f"repeatable [all; {YARDSTICK} always]")
    ap.add_argument("--floor", type=float, help=f"exit 1 when a median {CHECKED} / {YARDSTICK} ratio is below this")
    ap.add_argument(
        "--sched",
        action="store_true",
        help="also read the generators' time slices, context switches and (with perf) epoll waits per request",
    )
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--json", help="write every run and the summaries here")
    args = ap.parse_args(argv)
    servers = args.server or ["nginx"]
    unknown = [s for s in servers if s != "nginx" and s not in server_names()]
    if unknown:
        ap.error(f"unknown server {', '.join(unknown)}: nginx or one of {', '.join(server_names())}")
    if args.repeat < 1 or args.duration <= 0:
        ap.error("--repeat must be at least 1 and --duration positive")
    sides = [YARDSTICK] + [s for s in SIDES if s != YARDSTICK and (not args.side or s in args.side)]
    if args.floor is not None and CHECKED not in sides:
        ap.error(f"--floor checks {CHECKED}: leave it among the sides")
    os.sched_setaffinity(0, {args.client_cpu})  # this script's own sampling stays off the server's core
    root = make_root({FILE})
    say = lambda text: print(text, flush=True)  # noqa: E731
    out: dict = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "comparisons": []}
    try:
        for server in servers:
            with started(server, root, args.server_cpu) as (url, pid):
                for mode in args.conn_mode or ["keepalive"]:
                    c = compare(
                        url + FILE,
                        sides=sides,
                        conn_mode=mode,
                        repeat=args.repeat,
                        duration=args.duration,
                        connections=args.connections,
                        cpu=args.client_cpu,
                        corpus=root,
                        server_pid=pid,
                        sched=args.sched,
                        progress=say,
                    )
                    c["server"] = server
                    out["comparisons"].append(c)
                    say(format_comparison(f"{server} on CPU {args.server_cpu}", c))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    if args.json:
        write_result(args.json, out)
    if args.floor is not None:
        failed = below_floor(out["comparisons"], args.floor)
        for line in failed:
            say(f"FAIL {line}")
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
