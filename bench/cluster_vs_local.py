"""Two `--cluster local:2` generators against one local generator, on the same core, alternating runs.

    python -m serverzoo.bench.cluster_vs_local                 # 5 x 5 s of each side
    python -m serverzoo.bench.cluster_vs_local -r 1 -d 1       # a smoke test

nginx (1 worker, `sendfile off; open_file_cache ...`) is pinned to --server-cpu; each side's
whole `serverzoo load` process tree (coordinator, and for the cluster its LocalCluster's
scheduler, workers and generator processes) to --client-cpu. Three sides, 1 KiB file,
64 keep-alive connections, every body verified:

  local-1    -w 1: one generator process (the yardstick)
  local-2    -w 2: two generator processes sharing the core (what two processes cost by themselves)
  cluster-2  --cluster local:2: two generator processes on two Dask workers (plus Dask's own work)

Within each repetition every side runs once, in turn, so drift on a shared machine hits all
alike; the medians and their ratios to local-1 are printed. cluster-2 / local-2 is what Dask
costs; local-2 / local-1 what splitting the load over two processes costs. For cluster-2 the
CPU its process tree spent outside the generator processes within the measured window (the
coordinator with the LocalCluster's scheduler and nannies, the Dask workers and their relay
tasks) is sampled too, as a share of a core: Dask's cost measured directly, steadier than
the rates on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from .loadgen_vs_wrk import make_root, write_result
from .nginx import NginxServer

SIDES = {
    "local-1": ["-w", "1"],
    "local-2": ["-w", "2"],
    "cluster-2": ["--cluster", "local:2"],
}
YARDSTICK = "local-1"


GENERATOR = "serverzoo.clients.loadgen.worker"  # the generator processes' command line
TREE_SAMPLE_S = 0.1


class TreeSampler:
    """CPU time of every process of a tree, split into generator processes and the rest, sampled with
    wall-clock times (the cluster's measured window is given on the scheduler's wall clock: this machine's)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.samples: list[tuple[int, dict[int, tuple[bool, float]]]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(TREE_SAMPLE_S):
            now = time.time_ns()
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            cpu = {}
            for p in procs:
                try:
                    t = p.cpu_times()
                    cpu[p.pid] = (GENERATOR in " ".join(p.cmdline()), t.user + t.system)
                except psutil.Error:
                    continue
            self.samples.append((now, cpu))

    def stop(self) -> None:
        self.done.set()
        self.thread.join()

    def other_percent(self, start_ns: int, end_ns: int) -> float | None:
        """The CPU the processes other than the generators used between the samples around the window,
        in % of one core (processes present at both samples)."""
        before = [s for s in self.samples if s[0] <= start_ns]
        after = [s for s in self.samples if s[0] >= end_ns]
        if not before or not after:
            return None
        (t0, a), (t1, b) = before[-1], after[0]
        used = sum(b[pid][1] - a[pid][1] for pid in b if pid in a and not b[pid][0])
        return round(used / ((t1 - t0) / 1e9) * 100, 1)


def run_side(url: str, side: str, *, connections: int, duration: float, cpu: int, corpus: str) -> dict:
    """One `serverzoo load` run of a side, its whole process tree pinned to cpu."""
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
            "--corpus",
            corpus,
            *SIDES[side],
            "--json",
            out,
        ]
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=lambda: os.sched_setaffinity(0, {cpu})
            )
            tree = TreeSampler(proc.pid)
            try:
                code = proc.wait(duration + 120)
            finally:
                tree.stop()
            if code != 0:
                err.seek(0)
                raise RuntimeError(f"{side}: serverzoo load exited with {code}: {err.read().decode().strip()}")
        with open(out) as f:
            doc = json.load(f)
    window = doc["cluster"]["window"] if "cluster" in doc else None
    return {
        "rps": doc["rps"],
        "requests": doc["requests"],
        "errors": doc["errors"]["total"],
        "generator_cpu_percent": doc["client"]["cpu_percent"],
        "cpu_us_per_request": doc["client"]["cpu_us_per_request"],
        "workers": [w["rps"] for w in doc["cluster"]["workers"]] if window else None,
        "other_cpu_percent": tree.other_percent(window["scheduler_start_ns"], window["scheduler_end_ns"])
        if window
        else None,
    }


def compare(
    url: str,
    *,
    repeat: int,
    duration: float,
    connections: int,
    cpu: int,
    corpus: str,
    pause_s: float = 0.5,
    progress=None,
) -> dict:
    """For each repetition every side once, in turn; per side every run, the median, the ratio to local-1."""
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for i in range(repeat):
        for side in SIDES:
            r = run_side(url, side, connections=connections, duration=duration, cpu=cpu, corpus=corpus)
            runs[side].append(r)
            if progress:
                progress(
                    f"  run {i + 1}/{repeat} {side:<10} {r['rps']:>10.0f} req/s, generators "
                    f"{r['generator_cpu_percent']:.0f}% CPU"
                    + (f", the rest {r['other_cpu_percent']:.1f}%" if r["other_cpu_percent"] is not None else "")
                )
            time.sleep(pause_s)  # let the server settle between runs
    median = {side: statistics.median(r["rps"] for r in rs) for side, rs in runs.items()}
    others = [r["other_cpu_percent"] for r in runs["cluster-2"] if r["other_cpu_percent"] is not None]
    return {
        "url": url,
        "repeat": repeat,
        "duration_s": duration,
        "connections": connections,
        "client_cpu": cpu,
        "runs": runs,
        "median": median,
        "ratio": {side: median[side] / median[YARDSTICK] for side in SIDES},
        "cluster_other_cpu_percent_median": statistics.median(others) if others else None,
    }


def format_comparison(c: dict) -> str:
    lines = [
        f"{c['connections']} keep-alive connections, 1 KiB, {c['repeat']} x {c['duration_s']:g} s, "
        f"client side on CPU {c['client_cpu']} (req/s)",
        "  " + f"{'':<8}" + "".join(f"{side:>12}" for side in SIDES),
    ]
    for i in range(c["repeat"]):
        lines.append(f"  run {i + 1:<4}" + "".join(f"{c['runs'][side][i]['rps']:>12.0f}" for side in SIDES))
    lines.append(f"  {'median':<8}" + "".join(f"{c['median'][side]:>12.0f}" for side in SIDES))
    lines.append(f"  {'ratio':<8}" + "".join(f"{c['ratio'][side]:>11.3f}x" for side in SIDES))
    two = c["median"]["local-2"]
    lines.append(f"  cluster-2 / local-2 (what Dask costs): {c['median']['cluster-2'] / two:.3f}x" if two else "")
    other = c["cluster_other_cpu_percent_median"]
    if other is not None:
        lines.append(
            f"  cluster-2: CPU outside the generators within the measured window (coordinator, scheduler, "
            f"Dask workers), median {other:.1f}% of a core"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--repeat", type=int, default=5, help="runs of each side [5]")
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="measured seconds per run [5]")
    ap.add_argument("-c", "--connections", type=int, default=64, help="[64]")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--json", help="write every run and the medians here")
    args = ap.parse_args(argv)
    root = make_root({"1KiB.bin"})
    say = lambda text: print(text, flush=True)  # noqa: E731
    out: dict = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    try:
        with NginxServer(root, tuned=True, cpus=[args.server_cpu]) as ngx:
            c = compare(
                ngx.url + "1KiB.bin",
                repeat=args.repeat,
                duration=args.duration,
                connections=args.connections,
                cpu=args.client_cpu,
                corpus=root,
                progress=say,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out.update(c, finished_utc=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
    say(format_comparison(c))
    if args.json:
        write_result(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
