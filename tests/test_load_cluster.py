"""`serverzoo load --cluster`: generators on the worker processes of a real Dask LocalCluster (loopback).

Each test is bounded by the load's duration plus the cluster's start (well under a second
per worker process) and closes every cluster it starts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading

import jsonschema
import psutil
import pytest

from serverzoo.clients.loadgen import LoadOptions, latency, schema_path
from serverzoo.clients.loadgen.cluster import (
    ClusterError,
    ClusterOptions,
    ClusterPartial,
    cluster_client,
    run_cluster_load,
)
from serverzoo.clients.loadgen.corpus import write_corpus
from serverzoo.servers.launch import ServerProcess

from .load_helpers import local_cluster, refused_port, run_cli, wait_gone

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("cluster-corpus"))
    write_corpus(root, ["1KiB"])
    return root


@pytest.fixture(scope="module")
def server(corpus: str):
    with ServerProcess("threading", corpus) as srv:
        yield srv


def test_cli_local_cluster_merges_workers_exactly(server, corpus: str, tmp_path) -> None:
    out = tmp_path / "out.json"
    r = run_cli(
        "load",
        server.url + "1KiB.bin",
        "--corpus",
        corpus,
        "-c",
        "4",
        "-d",
        "1",
        "--warmup",
        "0.2",
        "--cluster",
        "local:2",
        "--json",
        str(out),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    with open(schema_path()) as f:
        jsonschema.validate(doc, json.load(f))
    workers = doc["cluster"]["workers"]
    assert len(workers) == 2 and doc["partial"] is False
    assert [w["connections"] for w in workers] == [2, 2], "-c is split between the workers"
    assert all(w["status"] == "ok" and w["requests"] > 0 for w in workers)
    assert sum(w["requests"] for w in workers) == doc["requests"]
    assert sum(w["errors"] for w in workers) == doc["errors"]["total"] == 0
    assert all(w["clock_offset_ms"] is not None and w["rtt_ms"] > 0 for w in workers)
    # the merged histogram is the sum of the workers' histograms, value for value
    merged = latency.decode(doc["histogram"])
    parts = latency.merge(w["histogram"] for w in workers)
    assert merged.get_total_count() == doc["requests"]

    def counts(hist) -> list[tuple[int, int]]:
        return [(v.value_iterated_to, v.count_at_value_iterated_to) for v in hist.get_recorded_iterator()]

    assert counts(merged) == counts(parts) and len(counts(merged)) > 1
    assert "Cluster local:2: 2 workers" in r.stdout


def test_unreachable_scheduler_fails_before_any_load(tmp_path) -> None:
    with socket.socket() as target:  # the server under test: nobody may connect to it
        target.bind(("127.0.0.1", 0))
        target.listen()
        target.setblocking(False)
        url = f"http://127.0.0.1:{target.getsockname()[1]}/1KiB.bin"
        r = run_cli(
            "load",
            url,
            "-c",
            "2",
            "-d",
            "1",
            "--cluster",
            f"tcp://127.0.0.1:{refused_port()}",
            "--cluster-timeout",
            "1",
            "--json",
            str(tmp_path / "out.json"),
            timeout=30,
        )
        with pytest.raises(BlockingIOError):
            target.accept()
    assert r.returncode == 4
    assert r.stderr.strip().count("\n") == 0 and "cannot reach the Dask scheduler" in r.stderr
    assert not (tmp_path / "out.json").exists()


def test_cluster_refuses_what_it_cannot_do() -> None:
    r = run_cli("load", "/1KiB.bin", "--serve", "threading", "--root", ".", "--cluster", "local:2")
    assert r.returncode == 2 and "--cluster loads a server that is already running" in r.stderr
    r = run_cli("load", "http://127.0.0.1:1/", "--cluster", "local:0")
    assert r.returncode == 2 and "local:N" in r.stderr
    with pytest.raises(ClusterError, match="has only 2 workers"), local_cluster(2) as cluster:
        run_cluster_load(
            LoadOptions(url="http://127.0.0.1:1/", connections=4, duration=1),
            ClusterOptions(cluster.scheduler_address, workers=3),
        )


def test_killed_worker_gives_partial_result(server, corpus: str) -> None:
    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        victim = min(pids)
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["doc"] = run_cluster_load(
                    LoadOptions(url=server.url + "1KiB.bin", corpus=corpus, connections=4, duration=20),
                    ClusterOptions(cluster.scheduler_address),
                )
            except Exception as exc:  # the outcome under test
                outcome["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        generators: list[psutil.Process] = []
        for _ in range(300):  # the victim's generator connects to the server once the common start has passed
            generators = psutil.Process(pids[victim]).children()
            if generators and _connected(generators[0], server.port):
                break
            thread.join(0.1)
        assert generators and _connected(generators[0], server.port), "the victim's generator never started"
        thread.join(1.0)  # let it measure
        os.kill(pids[victim], signal.SIGKILL)
        thread.join(15)  # the other worker is stopped within seconds, not at the end of its 20 s
        assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, ClusterPartial), outcome
    assert str(error).startswith(f"cluster worker {victim} ") and "\n" not in str(error)
    doc = error.document
    assert doc["partial"] is True and doc["warnings"][0].startswith("partial result")
    rows = {w["address"]: w for w in doc["cluster"]["workers"]}
    assert rows[victim]["status"] == "lost" and rows[victim]["requests"] is None
    survivor = next(w for a, w in rows.items() if a != victim)
    assert survivor["status"] == "stopped" and survivor["requests"] == doc["requests"] > 0
    assert doc["elapsed_s"] < 10
    assert all(wait_gone(g.pid) for g in generators), "the lost worker's generator process outlived it"


def _connected(proc: psutil.Process, port: int) -> bool:
    connections = getattr(proc, "net_connections", None) or proc.connections  # psutil 6 renamed it
    try:
        return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in connections("tcp"))
    except psutil.Error:
        return False


def test_local_cluster_runs_without_dask_housekeeping_timers() -> None:
    """The settings reach the worker processes (through their nannies), not only this process."""

    def timers(dask_worker) -> list[str]:
        return sorted(dask_worker.periodic_callbacks)

    def tick_ms(dask_worker) -> float:
        return dask_worker.periodic_callbacks["tick"].callback_time

    with cluster_client(ClusterOptions("local:2")) as client:
        for names in client.run(timers).values():
            assert "heartbeat" in names  # Dask's floor stays
            assert not {"profile", "profile-cycle", "memory_monitor"} & set(names), names
        assert set(client.run(tick_ms).values()) == {1000}
        scheduler = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.periodic_callbacks))
        assert "stealing" not in scheduler and not any(n.startswith("amm") for n in scheduler), scheduler
