"""Our load generator against wrk, on the same server, alternating runs: the generator's own ceiling.

    python -m serverzoo.bench.loadgen_vs_wrk                 # 5 x 5 s of each mode and tool
    python -m serverzoo.bench.loadgen_vs_wrk -r 1 -d 1       # a smoke test
    python -m serverzoo.bench.loadgen_vs_wrk --mode new --model '' --json out.json

Section 1: nginx (1 worker, `sendfile off; open_file_cache ...`) pinned to CPU 0; wrk
(-t1) and `serverzoo load` (one worker process) each pinned to CPU 1. Three modes:

  keepalive  1 KiB file, 64 keep-alive connections (req/s)
  new        1 KiB file, 64 connections, a new connection per request: wrk with
             `-H 'Connection: close'`, ours with `--conn-mode new` (req/s)
  large      64 MiB file, 4 keep-alive connections (MB/s of bytes received)

Within each repetition every mode runs wrk then ours, so drift on a shared machine hits
both tools alike; the medians and their ratio are printed, and each side's CPU time per
request and per MB received (on a busy machine steadier than the rates). The server's
process tree is sampled in every run of both tools: when it used at least 90% of its CPU
with both, the server was the limit, and the ratio says how close each tool came to what it
can give; the client CPU per request is then what compares the generators. Our generator
verifies every body against the corpus in every mode. Section 2 runs the keep-alive mode
against one serverzoo model. Figures are only meaningful on a quiet machine.
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
from dataclasses import dataclass

from serverzoo.clients.loadgen import LoadOptions, run_load
from serverzoo.clients.loadgen.client_bound import CPU_BOUND_PERCENT
from serverzoo.clients.loadgen.corpus import write_corpus
from serverzoo.clients.loadgen.server_sampler import ServerSampler

from .nginx import NginxServer


@dataclass(frozen=True)
class Mode:
    name: str
    file: str
    connections: int
    close: bool  # a new connection per request
    metric: str  # "rps" or "mbps"
    goal: float  # least acceptable ratio ours / wrk


MODES = {
    "keepalive": Mode("keepalive", "1KiB.bin", 64, False, "rps", 1.0),
    "new": Mode("new", "1KiB.bin", 64, True, "rps", 0.8),
    "large": Mode("large", "64MiB.bin", 4, False, "mbps", 0.9),
}
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_READ = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m), ([\d.]+)([KMGT]?B) read")
_P99 = re.compile(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1e6}
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_BINARY = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}  # wrk prints powers of 1024


def run_wrk(
    url: str, *, connections: int, duration: float, cpu: int | None, close: bool = False, server_pid: int | None = None
) -> dict:
    """One wrk -t1 run: requests/s, MB/s received, p99, the CPU time wrk used (its resource usage), and
    with server_pid the server tree's CPU over the run."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        *(["-H", "Connection: close"] if close else []),
        url,
    ]
    server = _ServerCpu(server_pid)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + 60,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu_percent = server.percent()
    m = _RPS.search(proc.stdout)
    done = _READ.search(proc.stdout)
    if proc.returncode != 0 or not m or not done:
        raise RuntimeError(f"wrk failed: {proc.stderr.strip() or proc.stdout.strip()}")
    p99 = _P99.search(proc.stdout)
    requests = int(done.group(1))
    elapsed = float(done.group(2)) * _UNIT_S[done.group(3)]
    received = float(done.group(4)) * _BINARY[done.group(5)]
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    errors = re.search(r"Socket errors: .*|Non-2xx or 3xx responses: \d+", proc.stdout)
    return {
        "rps": float(m.group(1)),
        "mbps": received / elapsed / 1e6,
        "p99_us": float(p99.group(1)) * _UNIT_US[p99.group(2)] if p99 else None,
        "requests": requests,
        "cpu_s": round(cpu_s, 3),
        "errors": errors.group(0) if errors else None,
        "cpu_us_per_request": cpu_s * 1e6 / requests if requests else None,
        "cpu_us_per_mb": cpu_s * 1e6 / (received / 1e6) if received else None,
        "server_cpu_percent": server_cpu_percent,
    }


class _ServerCpu:
    """The CPU a server's process tree used from construction to percent() (100 = one CPU); wrk cannot
    sample it, so the comparison does, around each wrk run."""

    def __init__(self, pid: int | None) -> None:
        self.sampler = ServerSampler(pid) if pid is not None else None
        self.start = self.sampler.sample() if self.sampler else None

    def percent(self) -> float | None:
        if self.sampler is None or self.start is None:
            return None
        end = self.sampler.sample()
        return self.sampler.report(self.start["t_ns"], end["t_ns"])["cpu_percent"] if end else None


def run_ours(
    url: str,
    *,
    connections: int,
    duration: float,
    cpu: int | None,
    corpus: str | None,
    close: bool = False,
    server_pid: int | None = None,
    server_cpu: int | None = None,
) -> dict:
    """One `serverzoo load` run with one worker process, every body verified; with server_pid the server
    tree is sampled, so the run's client-bound judgement knows whether the server was saturated too."""
    doc = run_load(
        LoadOptions(
            url=url,
            connections=connections,
            duration=duration,
            workers=1,
            cpus=[cpu] if cpu is not None else None,
            corpus=corpus,
            conn_mode="new" if close else "keepalive",
            server_pid=server_pid,
            server_cpus=[server_cpu] if server_pid is not None and server_cpu is not None else None,
        )
    )
    cpu_s = doc["client"]["cpu_percent"] / 100 * doc["elapsed_s"]
    return {
        "rps": doc["rps"],
        "mbps": doc["mb_per_s"],
        "p99_us": doc["latency_us"]["p99"],
        "requests": doc["requests"],
        "errors": doc["errors"]["total"],
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_request": cpu_s * 1e6 / doc["requests"] if doc["requests"] else None,
        "cpu_us_per_mb": cpu_s * 1e6 / (doc["bytes"] / 1e6) if doc["bytes"] else None,
        "client_bound": doc["client"]["client_bound"],
        "both_saturated": doc["client"]["both_saturated"],
        "server_cpu_percent": (doc.get("server") or {}).get("cpu_percent"),
    }


def compare_with_wrk(
    base_url: str,
    modes: list[Mode],
    *,
    repeat: int = 5,
    duration: float = 5.0,
    client_cpu: int | None = 1,
    corpus: str | None = None,
    pause_s: float = 0.5,
    progress=None,
    server_pid: int | None = None,
    server_cpu: int | None = None,
) -> dict:
    """For each repetition, each mode: wrk then ours. Per mode: every run, the medians and the ratio.

    server_pid: the server's process tree is sampled in every run of both tools. When the server used
    CPU_BOUND_PERCENT of its CPU with both, the server was the limit: the ratio then says how close each
    tool came to what the server can give, and only the client CPU per request compares the generators."""
    runs: dict[str, dict[str, list[dict]]] = {m.name: {"wrk": [], "ours": []} for m in modes}
    for i in range(repeat):
        for mode in modes:
            url = base_url + mode.file
            for tool in ("wrk", "ours"):
                if tool == "wrk":
                    r = run_wrk(
                        url,
                        connections=mode.connections,
                        duration=duration,
                        cpu=client_cpu,
                        close=mode.close,
                        server_pid=server_pid,
                    )
                else:
                    r = run_ours(
                        url,
                        connections=mode.connections,
                        duration=duration,
                        cpu=client_cpu,
                        corpus=corpus,
                        close=mode.close,
                        server_pid=server_pid,
                        server_cpu=server_cpu,
                    )
                runs[mode.name][tool].append(r)
                if progress:
                    progress(
                        f"  run {i + 1}/{repeat} {mode.name:<9} {tool:<5} {r['rps']:>10.0f} req/s "
                        f"{r['mbps']:>10.1f} MB/s"
                        + (
                            f", server {r['server_cpu_percent']:.0f}% CPU"
                            if r["server_cpu_percent"] is not None
                            else ""
                        )
                    )
                time.sleep(pause_s)  # let the server settle between runs
    out = {}
    for mode in modes:
        rs = runs[mode.name]
        med = {tool: statistics.median(r[mode.metric] for r in rs[tool]) for tool in rs}
        out[mode.name] = {
            "file": mode.file,
            "connections": mode.connections,
            "close": mode.close,
            "metric": mode.metric,
            "goal": mode.goal,
            "runs": rs,
            "median": med,
            "ratio": med["ours"] / med["wrk"] if med["wrk"] else None,
            "median_cpu_us_per_request": {t: _median(r["cpu_us_per_request"] for r in rs[t]) for t in rs},
            "median_cpu_us_per_mb": {t: _median(r["cpu_us_per_mb"] for r in rs[t]) for t in rs},
            "median_server_cpu_percent": {t: _median(r["server_cpu_percent"] for r in rs[t]) for t in rs},
        }
    return {"url": base_url, "repeat": repeat, "duration_s": duration, "client_cpu": client_cpu, "modes": out}


def _median(values) -> float | None:
    values = [v for v in values if v]
    return statistics.median(values) if values else None


def format_comparison(title: str, c: dict) -> str:
    lines = [title]
    for name, m in c["modes"].items():
        unit = "req/s" if m["metric"] == "rps" else "MB/s"
        lines.append(
            f" {name}: {m['file']}, {m['connections']} connections"
            + (", a new connection per request" if m["close"] else "")
            + f" ({unit})"
        )
        lines.append(f"  {'':<8}{'wrk':>12}{'serverzoo':>12}")
        for i, (a, b) in enumerate(zip(m["runs"]["wrk"], m["runs"]["ours"])):
            lines.append(f"  run {i + 1:<4}{a[m['metric']]:>12.0f}{b[m['metric']]:>12.0f}")
        lines.append(
            f"  {'median':<8}{m['median']['wrk']:>12.0f}{m['median']['ours']:>12.0f}   "
            f"ratio {m['ratio']:.2f}x (goal >= {m['goal']:.2f}x)"
        )
        cr, cb = m["median_cpu_us_per_request"], m["median_cpu_us_per_mb"]
        lines.append(
            f"  client CPU per request: wrk {_us(cr['wrk'])}, serverzoo {_us(cr['ours'])}; "
            f"per MB received: wrk {_us(cb['wrk'])}, serverzoo {_us(cb['ours'])}"
        )
        ours = m["runs"]["ours"]
        lines.append(
            f"  serverzoo runs marked client-bound: {sum(r['client_bound'] for r in ours)} of {len(ours)}, "
            f"both saturated: {sum(r['both_saturated'] for r in ours)}; "
            f"with errors: {sum(r['errors'] > 0 for r in ours)}; wrk runs with errors: "
            f"{sum(bool(r['errors']) for r in m['runs']['wrk'])}"
        )
        sc = m["median_server_cpu_percent"]
        if sc["wrk"] is not None and sc["ours"] is not None:
            lines.append(f"  server CPU (of one CPU): with wrk {sc['wrk']:.0f}%, with serverzoo {sc['ours']:.0f}%")
            if min(sc.values()) >= CPU_BOUND_PERCENT:
                lines.append(
                    "  the server was the limit with both tools: the ratio compares what each got out of a "
                    "saturated server; the client CPU per request compares the generators"
                )
    return "\n".join(lines)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} us"


def make_root(files: set[str]) -> str:
    """A world-readable corpus directory with the modes' files (nginx workers run as nobody)."""
    root = tempfile.mkdtemp(prefix="serverzoo-wrkcmp-")
    os.chmod(root, 0o755)
    write_corpus(root, sorted(f.removesuffix(".bin") for f in files), seed=0)
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--repeat", type=int, default=5, help="runs of each tool and mode [5]")
    ap.add_argument("-d", "--duration", type=float, default=5.0, help="seconds per run [5]")
    ap.add_argument("--mode", action="append", choices=list(MODES), help="repeatable [all three]")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--model", default="asyncio", help="serverzoo model of section 2 ('' to skip) [asyncio]")
    ap.add_argument("--model-args", default="", help="extra `serve` arguments, e.g. '--loop uvloop'")
    ap.add_argument("--no-nginx", action="store_true", help="skip section 1")
    ap.add_argument("--json", help="write every run and the medians here")
    args = ap.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        print("note: fewer than 2 usable CPUs; server and client will share one", file=sys.stderr)
    modes = [MODES[name] for name in (args.mode or MODES)]
    root = make_root({m.file for m in modes} | {MODES["keepalive"].file})
    out: dict = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    say = lambda text: print(text, flush=True)  # noqa: E731
    try:
        if not args.no_nginx:
            with NginxServer(root, tuned=True, cpus=[args.server_cpu]) as ngx:
                c = compare_with_wrk(
                    ngx.url,
                    modes,
                    repeat=args.repeat,
                    duration=args.duration,
                    client_cpu=args.client_cpu,
                    corpus=root,
                    progress=say,
                    server_pid=ngx.pid,
                    server_cpu=args.server_cpu,
                )
            out["nginx"] = c
            say(
                format_comparison(
                    f"nginx (1 worker, tuned, CPU {args.server_cpu}), {args.repeat} x "
                    f"{args.duration:g} s, clients on CPU {args.client_cpu}",
                    c,
                )
            )
        if args.model:
            from serverzoo.servers.launch import ServerProcess, ServerStartError

            try:
                with ServerProcess(args.model, root, *args.model_args.split(), cpus=[args.server_cpu]) as srv:
                    c = compare_with_wrk(
                        srv.url,
                        [MODES["keepalive"]],
                        repeat=args.repeat,
                        duration=args.duration,
                        client_cpu=args.client_cpu,
                        corpus=root,
                        progress=say,
                        server_pid=srv.pid,
                        server_cpu=args.server_cpu,
                    )
                out["model"] = {"model": args.model, "args": args.model_args, **c}
                say(
                    format_comparison(
                        f"serverzoo {args.model} {args.model_args}".rstrip() + f" (CPU {args.server_cpu}), same setup",
                        c,
                    )
                )
            except ServerStartError as exc:
                say(f"section 2 skipped: {exc}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    if args.json:
        write_result(args.json, out)
    return 0


def write_result(path: str, out: dict) -> None:
    """A comparison's runs and medians as JSON, with the machine they ran on."""
    from serverzoo.machine import describe_machine

    with open(path, "w") as f:
        json.dump({"machine": describe_machine(), **out}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
