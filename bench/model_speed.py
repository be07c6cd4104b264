"""Every model against nginx under wrk, as ratios, each checked against its speed floor.

    python -m serverzoo.bench.model_speed                      # all workloads, medians of 3 x 5 s
    python -m serverzoo.bench.model_speed --workload keepalive --models select,asyncio-uvloop -r 1 -d 2
    python -m serverzoo.bench.model_speed --json results/model-speed.json

The server (a serverzoo model or nginx with one worker) is pinned to --server-cpu and
wrk (-t1) to --client-cpu. Within each repetition every server runs once, in turn, so
drift on a shared machine hits them alike; the figure per server is the median over
repetitions, and each model is shown as a ratio to nginx measured in the same run.

Workloads:
  keepalive  1 KiB file, 64 keep-alive connections; ratio to nginx tuned
             (`sendfile off; open_file_cache`)
  close      1 KiB file, a new connection per request (Connection: close), 64
             connections; ratio to stock nginx
  large      64 MiB file, 4 connections, MB/s; ratio to stock nginx (sendfile on)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from ..machine import describe_machine, machine_line
from ..servers import resolve, server_names
from ..servers.launch import ServerProcess
from .nginx import NginxServer


@dataclass(frozen=True)
class Workload:
    name: str
    path: str
    connections: int
    close: bool
    metric: str  # "rps" or "mbps"
    nginx_tuned: bool
    floors: dict[str, float]  # variant -> least acceptable ratio to nginx


WORKLOADS = {
    "keepalive": Workload("keepalive", "/1KiB.bin", 64, False, "rps", True, {"select": 0.9, "asyncio-uvloop": 0.9}),
    "close": Workload(
        "close",
        "/1KiB.bin",
        64,
        True,
        "rps",
        False,
        {"select": 0.8, "asyncio-uvloop": 0.8, "asyncio": 0.6, "gevent": 0.6, "trio": 0.6},
    ),
    "large": Workload("large", "/64MiB.bin", 4, False, "mbps", False, dict.fromkeys(server_names(), 1.0)),
}

_UNITS = {"B": 1e-6, "KB": 1024 / 1e6, "MB": 1024**2 / 1e6, "GB": 1024**3 / 1e6}


def make_root() -> str:
    """A world-readable corpus (nginx's workers run as nobody)."""
    root = tempfile.mkdtemp(prefix="serverzoo-speed-")
    os.chmod(root, 0o755)
    with open(os.path.join(root, "1KiB.bin"), "wb") as f:
        f.write(os.urandom(1024))
    with open(os.path.join(root, "64MiB.bin"), "wb") as f:
        f.writelines(os.urandom(1024 * 1024) for _ in range(64))
    for name in os.listdir(root):
        os.chmod(os.path.join(root, name), 0o644)
    return root


def run_wrk(url: str, w: Workload, duration: float, cpu: int) -> dict:
    cmd = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{w.connections}", f"-d{duration:g}s", "--latency"]
    if w.close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    tr = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    p99 = re.search(r"\s99%\s+([\d.]+)(\w+)", out)
    if not rps or not tr:
        return {"rps": 0.0, "mbps": 0.0, "errors": "wrk failed: " + out[-200:].strip(), "p99": None}
    return {
        "rps": float(rps.group(1)),
        "mbps": float(tr.group(1)) * _UNITS.get(tr.group(2), 1),
        "errors": errors.group(0) if errors else None,
        "p99": p99.group(0).split()[-1] if p99 else None,
    }


def measure(variant: str, w: Workload, root: str, duration: float, server_cpu: int, client_cpu: int) -> dict:
    if variant == "nginx":
        server = NginxServer(root, tuned=w.nginx_tuned, cpus=[server_cpu])
    else:
        v = resolve(variant)
        # one server CPU: a model that would start a process per CPU gets exactly one
        one_process = ("--workers", "1") if v.model.default_workers is None else ()
        server = ServerProcess(v.model.name, root, *v.args, *one_process, cpus=[server_cpu])
    with server:
        # a short warm-up so caches and connection setup are not in the measured run
        run_wrk(server.url.rstrip("/") + w.path, w, min(1.0, duration), client_cpu)
        return run_wrk(server.url.rstrip("/") + w.path, w, duration, client_cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m serverzoo.bench.model_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--workload", action="append", choices=list(WORKLOADS), help="default: all")
    ap.add_argument("--models", default=",".join(server_names()), help="comma-separated models and variants")
    ap.add_argument("-r", "--repeat", type=int, default=3)
    ap.add_argument("-d", "--duration", type=float, default=5.0)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--json", help="write every run and the medians here")
    opts = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("model_speed: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    variants = [v.strip() for v in opts.models.split(",") if v.strip()]
    unknown = [v for v in variants if v not in server_names()]
    if unknown:
        print(
            f"model_speed: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(server_names())}",
            file=sys.stderr,
        )
        return 2
    machine = describe_machine()
    print(
        f"# {machine_line(machine)}; server on CPU {opts.server_cpu}, wrk on CPU {opts.client_cpu}; "
        f"{opts.repeat} x {opts.duration:g} s; started {machine['date']}"
    )
    root = make_root()
    doc: dict = {"schema": "serverzoo.model-speed/1", "machine": machine, "options": vars(opts), "workloads": {}}
    try:
        for wname in opts.workload or list(WORKLOADS):
            w = WORKLOADS[wname]
            runs: dict[str, list[dict]] = {v: [] for v in ["nginx", *variants]}
            for rep in range(opts.repeat):
                for v, measured in runs.items():
                    measured.append(measure(v, w, root, opts.duration, opts.server_cpu, opts.client_cpu))
                    print(
                        f"  {wname} rep {rep + 1} {v:15s} {measured[-1][w.metric]:>10.1f} "
                        f"{'req/s' if w.metric == 'rps' else 'MB/s'}",
                        file=sys.stderr,
                        flush=True,
                    )
            med = {v: statistics.median(r[w.metric] for r in rs) for v, rs in runs.items()}
            unit = "req/s" if w.metric == "rps" else "MB/s"
            flavour = "tuned" if w.nginx_tuned else "stock"
            print(
                f"\n## {wname}: {w.path}, {w.connections} connections"
                f"{', Connection: close' if w.close else ', keep-alive'}; nginx {flavour}"
            )
            print(f"| server | {unit} (median) | ratio to nginx | floor | p99 (last run) |")
            print("|---|---|---|---|---|")
            for v in runs:
                ratio = med[v] / med["nginx"] if med["nginx"] else float("nan")
                floor = w.floors.get(v)
                verdict = "" if floor is None else (" (meets)" if ratio >= floor else " (BELOW)")
                print(
                    f"| {v} | {med[v]:.0f} | {ratio:.2f}x | {'' if floor is None else f'{floor:.2f}x'}{verdict} "
                    f"| {runs[v][-1]['p99']} |"
                )
            doc["workloads"][wname] = {"runs": runs, "medians": med, "floors": w.floors, "unit": unit}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
