"""`serverzoo bench --cluster`: the server on the Dask worker with server=1, the load on the one with client=1.

A real cluster on loopback (a scheduler and two worker processes, one of each resource), one
tiny cell with a serverzoo model and one with nginx (when installed).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys

import pytest

from serverzoo.bench.nginx import nginx_binary
from serverzoo.bench.report import build_report, render
from serverzoo.bench.results import Run

from .load_helpers import local_cluster
from .support import world_readable_dir
from .test_bench_smoke import SCENARIOS

distributed = pytest.importorskip("distributed")


@pytest.fixture
def cluster():
    """A scheduler and two worker processes: one with resource server=1, one with client=1."""

    def worker(resources: dict) -> dict:
        return {
            "cls": distributed.Nanny,
            "options": {
                "nthreads": 1,
                "resources": resources,
                "host": "127.0.0.1",
                "dashboard_address": None,
                "silence_logs": logging.ERROR,
            },
        }

    spec = {"server": worker({"server": 1}), "client": worker({"client": 1})}
    scheduler = {
        "cls": distributed.Scheduler,
        "options": {"host": "127.0.0.1", "dashboard": False, "dashboard_address": "127.0.0.1:0"},
    }
    with (
        distributed.SpecCluster(workers=spec, scheduler=scheduler, silence_logs=logging.ERROR) as c,
        distributed.Client(c) as client,
    ):
        client.wait_for_workers(2, timeout=30)
        yield c.scheduler_address, {r: a for a, w in client.scheduler_info()["workers"].items() for r in w["resources"]}


@pytest.fixture
def out_dir():
    with world_readable_dir("serverzoo-bench-cluster-") as path:
        yield path


def test_bench_places_server_and_load_by_resource(cluster, out_dir: str) -> None:
    scheduler, by_resource = cluster
    with open(os.path.join(out_dir, "scenarios.toml"), "w") as f:
        f.write(SCENARIOS)
    models = "threading,nginx" if nginx_binary() else "threading"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "serverzoo",
            "bench",
            "--scenarios-file",
            "scenarios.toml",
            "--scenarios",
            "small",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--models",
            models,
            "--cluster",
            scheduler,
            "--no-report",
        ],
        cwd=out_dir,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    (path,) = glob.glob(os.path.join(out_dir, "results", "bench-*.json"))
    with open(path) as f:
        doc = json.load(f)
    assert len(doc["cells"]) == len(models.split(","))
    for cell in doc["cells"]:
        assert cell["status"] == "ok", cell["error"]
        server = cell["server_process"]
        assert server["worker"] == by_resource["server"] and server["host"] == "127.0.0.1"
        assert server["clean_stop"] is True
        generators = cell["load"]["cluster"]["workers"]
        assert [w["address"] for w in generators] == [by_resource["client"]]
        assert generators[0]["requests"] == cell["load"]["requests"] > 0
        # the server's CPU and memory, sampled on its worker over the load's measured window
        sampled = cell["load"]["server"]
        assert sampled["pid"] == server["pid"] and sampled["cpu_source"] == "process tree"
        assert sampled["cpu_s"] > 0 and sampled["peak_rss_bytes"] > 0 and server["rss_at_ready_bytes"] > 0
        assert sampled["samples"] and all(0 <= s["t"] <= cell["load"]["elapsed_s"] + 0.2 for s in sampled["samples"])
    text = render(build_report([Run.from_doc(doc)], plots=False), "report.md.j2")
    assert "server on host 127.0.0.1, load generators on host 127.0.0.1" in text


def test_bench_cluster_needs_a_server_worker(out_dir: str) -> None:
    with local_cluster(1, resources={"client": 1}) as c:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "serverzoo",
                "bench",
                "--models",
                "threading",
                "--cluster",
                c.scheduler_address,
                "--max-cells",
                "1",
                "--no-report",
            ],
            cwd=out_dir,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert r.returncode == 4
    assert r.stderr.strip().splitlines()[-1].startswith("serverzoo bench: --cluster") and "server=1" in r.stderr


def test_guard_stops_the_server_when_its_worker_dies(tmp_path) -> None:
    from serverzoo.bench.cluster import start_guard
    from serverzoo.servers.launch import ServerProcess

    server = ServerProcess("threading", str(tmp_path)).start()
    try:
        guard = start_guard(server.pid)
        guard.stdin.close()  # what the death of the Dask worker that holds the pipe does
        assert guard.wait(20) == 0
        assert server.proc.wait(5) is not None, "the server outlived its worker"
    finally:
        server.stop()
