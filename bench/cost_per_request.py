"""Server CPU time per request under wrk: what a model pays per request, even on a busy machine.

    python -m serverzoo.bench.cost_per_request --path /1KiB.bin -c 64 "gevent" "trio" "trio --file-send read"
    python -m serverzoo.bench.cost_per_request --path /64MiB.bin -c 4 "gevent" "gevent --file-send sendfile"
    python -m serverzoo.bench.cost_per_request --close "gevent" "trio" "select"

Each variant (a model and its `serverzoo serve` arguments) runs as a real server pinned
to --server-cpu with wrk pinned to --client-cpu; rounds interleave the variants so drift
hits them alike, and the medians are printed. Requests/s and MB/s need a quiet machine;
CPU microseconds per request (user + system of the server's process tree, from psutil)
barely depend on what else runs, which makes them the figure to compare variants by
when the machine is shared. The corpus (1KiB, 300KiB and 64MiB files) is written to a
temporary directory unless --root names one.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

from serverzoo.clients.loadgen.corpus import write_corpus
from serverzoo.clients.loadgen.server_sampler import ServerSampler
from serverzoo.servers.launch import ServerProcess

CORPUS_SIZES = ("1KiB", "300KiB", "64MiB")
_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def run_wrk(url: str, connections: int, duration: int, cpu: int, close: bool = False) -> tuple[int, float, float]:
    """(requests, requests/s, MB/s) from one wrk run pinned to cpu; close: a connection per request."""
    extra = ["-H", "Connection: close"] if close else []
    out = subprocess.run(
        ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", *extra, url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out).groups()
    return requests, rps, float(value) * _UNITS[unit] / 1e6


def measure(variant: str, root: str, path: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """(server CPU us per request, requests/s, MB/s) for one round of one variant."""
    model, *serve_args = shlex.split(variant)
    with ServerProcess(model, root, *serve_args, cpus=[args.server_cpu]) as srv:
        sampler = ServerSampler(srv.pid)
        url = srv.url.rstrip("/") + path
        run_wrk(url, args.connections, 1, args.client_cpu, args.close)  # warm-up
        before = sampler.sample()["cpu_s"]
        requests, rps, mbps = run_wrk(url, args.connections, args.duration, args.client_cpu, args.close)
        cpu_s = sampler.sample()["cpu_s"] - before
    return cpu_s * 1e6 / max(requests, 1), rps, mbps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", help='a model and its serve arguments, e.g. "trio --file-send read"')
    ap.add_argument("--path", default="/1KiB.bin")
    ap.add_argument("-c", "--connections", type=int, default=64)
    ap.add_argument("-d", "--duration", type=int, default=3, help="whole seconds per measured run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--close", action="store_true", help="a new connection per request (Connection: close)")
    ap.add_argument("--root", help="directory to serve (default: a temporary corpus)")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("cost_per_request: wrk is not installed (Debian package wrk)", file=sys.stderr)
        return 2
    tmp = None
    root = args.root
    if root is None:
        tmp = tempfile.mkdtemp(prefix="serverzoo-cost-")
        root = os.path.join(tmp, "root")
        write_corpus(root, CORPUS_SIZES)
    try:
        results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in args.variants}
        for _ in range(args.rounds):
            for variant in args.variants:
                results[variant].append(measure(variant, root, args.path, args))
        mode = "Connection: close" if args.close else "keep-alive"
        print(
            f"{args.path}, {args.connections} connections, {mode}, {args.rounds} rounds of {args.duration} s, "
            f"server on CPU {args.server_cpu}, wrk on CPU {args.client_cpu}; medians (all rounds)"
        )
        width = max(map(len, args.variants))
        for variant, rows in results.items():
            cpu, rps, mbps = (statistics.median(r[i] for r in rows) for i in range(3))
            every = " ".join(f"{r[0]:.0f}" for r in rows)
            print(f"  {variant:<{width}}  {cpu:9.1f} us CPU/request  {rps:9.0f} req/s  {mbps:8.1f} MB/s  ({every})")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
