"""Our load generator against wrk, on the same server, alternating runs: the generator's own ceiling.

    python -m serverzoo.bench.loadgen_vs_wrk                 # 5 x 5 s each, nginx then one serverzoo model
    python -m serverzoo.bench.loadgen_vs_wrk -r 1 -d 1       # a smoke test
    python -m serverzoo.bench.loadgen_vs_wrk --model select --json out.json

Section 1: nginx (1 worker, `sendfile off; open_file_cache ...`) pinned to CPU 0; wrk
(-t1) and `serverzoo load` (one worker process) each pinned to CPU 1, 64 keep-alive
connections, a 1 KiB file; runs alternate wrk, ours, wrk, ours... and the medians and
their ratio are printed (the goal: ours >= 0.9x wrk). Section 2 does the same against
one serverzoo model. Each side's CPU time per request is printed too: on a busy machine
it is steadier than requests/s. Figures are only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from serverzoo.clients.loadgen import LoadOptions, run_load
from serverzoo.clients.loadgen.corpus import write_corpus

from .nginx import NginxServer

FILE = "1KiB.bin"
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_P99 = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def run_wrk(url: str, *, connections: int, duration: float, cpu: int | None) -> dict:
    """One wrk -t1 run: requests/s, p99, and the CPU time wrk used (from its resource usage)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = _RPS.search(proc.stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed: {proc.stderr.strip() or proc.stdout.strip()}")
    p99 = _P99.search(proc.stdout)
    done = re.search(r"(\d+) requests in", proc.stdout)
    requests = int(done.group(1)) if done else None
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"rps": float(m.group(1)), "p99_us": float(p99.group(1)) * _UNIT_US[p99.group(2)] if p99 else None,
            "requests": requests, "cpu_s": round(cpu_s, 3),
            "cpu_us_per_request": cpu_s * 1e6 / requests if requests else None}


def run_ours(url: str, *, connections: int, duration: float, cpu: int | None, corpus: str | None) -> dict:
    """One `serverzoo load` run with one worker process."""
    doc = run_load(LoadOptions(url=url, connections=connections, duration=duration, workers=1,
                               cpus=[cpu] if cpu is not None else None, corpus=corpus))
    cpu_s = doc["client"]["cpu_percent"] / 100 * doc["elapsed_s"]
    return {"rps": doc["rps"], "p99_us": doc["latency_us"]["p99"], "requests": doc["requests"],
            "errors": doc["errors"]["total"], "cpu_s": round(cpu_s, 3),
            "cpu_us_per_request": cpu_s * 1e6 / doc["requests"] if doc["requests"] else None,
            "client_bound": doc["client"]["client_bound"]}


def compare_with_wrk(url: str, *, repeat: int = 5, duration: float = 5.0, connections: int = 64,
                     client_cpu: int | None = 1, corpus: str | None = None, pause_s: float = 0.5,
                     progress=None) -> dict:
    """Alternate wrk and our generator `repeat` times each against url; medians and the ratio."""
    runs: dict[str, list[dict]] = {"wrk": [], "ours": []}
    for i in range(repeat):
        for name in ("wrk", "ours"):
            if name == "wrk":
                r = run_wrk(url, connections=connections, duration=duration, cpu=client_cpu)
            else:
                r = run_ours(url, connections=connections, duration=duration, cpu=client_cpu, corpus=corpus)
            runs[name].append(r)
            if progress:
                progress(f"  run {i + 1}/{repeat} {name:<5} {r['rps']:>10.0f} req/s")
            time.sleep(pause_s)  # let TIME_WAIT sockets and the server settle between runs
    med = {name: statistics.median(r["rps"] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r["cpu_us_per_request"] for r in rs if r["cpu_us_per_request"])
           for name, rs in runs.items()}
    return {
        "url": url, "repeat": repeat, "duration_s": duration, "connections": connections, "client_cpu": client_cpu,
        "runs": runs, "median_rps": med, "ratio": med["ours"] / med["wrk"] if med["wrk"] else None,
        "median_cpu_us_per_request": cpu,
    }


def format_comparison(title: str, c: dict) -> str:
    w, o = c["median_rps"]["wrk"], c["median_rps"]["ours"]
    cw, co = c["median_cpu_us_per_request"]["wrk"], c["median_cpu_us_per_request"]["ours"]
    lines = [title,
             f"  {'':<8}{'wrk':>12}{'serverzoo':>12}",
             *[f"  run {i + 1:<4}{a['rps']:>12.0f}{b['rps']:>12.0f}"
               for i, (a, b) in enumerate(zip(c["runs"]["wrk"], c["runs"]["ours"]))],
             f"  {'median':<8}{w:>12.0f}{o:>12.0f}   ratio {c['ratio']:.2f}x (goal >= 0.90x)",
             f"  client CPU per request: wrk {cw:.1f} us, serverzoo {co:.1f} us",
             f"  serverzoo runs marked client-bound: {sum(r['client_bound'] for r in c['runs']['ours'])} of "
             f"{len(c['runs']['ours'])}; with errors: {sum(r['errors'] > 0 for r in c['runs']['ours'])}"]
    return "\n".join(lines)


def make_root() -> str:
    """A world-readable directory with the 1 KiB file (nginx workers run as nobody)."""
    root = tempfile.mkdtemp(prefix="serverzoo-wrkcmp-")
    os.chmod(root, 0o755)
    write_corpus(root, [FILE.removesuffix(".bin")], seed=0)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--repeat", type=int, default=5, help="runs of each tool [5]")
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="seconds per run [5]")
    ap.add_argument("-c", "--connections", type=int, default=64)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--model", default="asyncio", help="serverzoo model of section 2 ('' to skip) [asyncio]")
    ap.add_argument("--model-args", default="", help="extra `serve` arguments, e.g. '--loop uvloop'")
    ap.add_argument("--no-nginx", action="store_true", help="skip section 1")
    ap.add_argument("--json", help="write every run and the medians here")
    args = ap.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("note: fewer than 2 usable CPUs; server and client will share one", file=sys.stderr)
    root = make_root()
    out: dict = {}
    say = lambda text: print(text, flush=True)  # noqa: E731
    try:
        if not args.no_nginx:
            with NginxServer(root, tuned=True, cpus=[args.server_cpu]) as ngx:
                c = compare_with_wrk(ngx.url + FILE, repeat=args.repeat, duration=args.duration,
                                     connections=args.connections, client_cpu=args.client_cpu, corpus=root,
                                     progress=say)
            out["nginx"] = c
            say(format_comparison(f"nginx (1 worker, tuned, CPU {args.server_cpu}), {FILE}, {args.connections} "
                                  f"keep-alive connections, {args.repeat} x {args.duration:g} s, "
                                  f"clients on CPU {args.client_cpu}", c))
        if args.model:
            from serverzoo.servers.launch import ServerProcess, ServerStartError

            try:
                with ServerProcess(args.model, root, *args.model_args.split(), cpus=[args.server_cpu]) as srv:
                    c = compare_with_wrk(srv.url + FILE, repeat=args.repeat, duration=args.duration,
                                         connections=args.connections, client_cpu=args.client_cpu, corpus=root,
                                         progress=say)
                out["model"] = {"model": args.model, "args": args.model_args, **c}
                say(format_comparison(f"serverzoo {args.model} {args.model_args}".rstrip() +
                                      f" (CPU {args.server_cpu}), same setup", c))
            except ServerStartError as exc:
                say(f"section 2 skipped: {exc}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        from serverzoo.machine import describe_machine

        with open(args.json, "w") as f:
            json.dump({"machine": describe_machine(), **out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
