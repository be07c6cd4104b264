"""A real, tiny benchmark run: two models, two scenarios, one-second cells, one repetition.

It is interrupted with SIGINT after two cells, resumed for one more cell (--max-cells),
then resumed to the end, and the reports it writes are checked against its JSON.
Real servers and the real load generator on loopback; about 30 s.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from serverzoo.bench.nginx import nginx_binary
from serverzoo.bench.report import format_value
from serverzoo.bench.store import SCHEMA

from .support import one_scenario_plan, world_readable_dir

SCENARIOS = """
[run]
unstable_spread = 0.10
error_rate_limit = 0.01

[corpus]
seed = 7
files = ["1KiB"]

[presets.quick]
servers = "models"
repeat = 1
reference = true

[scenarios.small]
title = "Small files, keep-alive"
mode = "closed"
paths = ["/1KiB.bin"]
quick = { concurrency = [2], duration = 1.0, warmup = 0.2 }

[scenarios.cpu]
title = "CPU-bound requests"
mode = "closed"
paths = ["/_/work?cpu=2"]
reference = false
placement = "server-all"
quick = { concurrency = [2], duration = 1.0, warmup = 0.2 }
"""
MODELS = ("iterative", "threading")


@pytest.fixture
def out_dir():
    with world_readable_dir("serverzoo-bench-smoke-") as path:
        yield path


def bench(out: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "serverzoo", "bench", *args],
        cwd=out,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_file(out: str) -> str:
    files = glob.glob(os.path.join(out, "results", "bench-*.json"))
    return files[0] if len(files) == 1 else ""


def wait_for_cells(out: str, n: int, proc: subprocess.Popen, limit: float = 40.0) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        path = run_file(out)
        if path:
            with open(path) as f:
                doc = json.load(f)  # always whole: the file is replaced atomically
            if len(doc["cells"]) >= n:
                return doc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} cells after {limit} s")


def _nginx_serves(cmdline: list[str], marker: str) -> bool:
    """An nginx master whose config (in its own temporary prefix) serves a root under marker."""
    if "-c" not in cmdline[:-1]:
        return False
    try:
        with open(cmdline[cmdline.index("-c") + 1]) as f:
            return marker in f.read()
    except OSError:
        return False


def leftover_processes(marker: str) -> list[str]:
    """Live processes of ours: marker on the command line (servers, generators) or nginx serving it."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if marker in " ".join(cmd) or (cmd and "nginx" in cmd[0] and _nginx_serves(cmd, marker)):
            found.append(f"{p.pid}: {' '.join(cmd)}")
    return found


def cell_cgroups(runner_pid: int) -> list[str]:
    """The cell cgroups a runner process made that still exist."""
    from serverzoo.bench.cgroups import PREFIX, usable_root

    root, _ = usable_root()
    return glob.glob(os.path.join(root, f"{PREFIX}{runner_pid}-*")) if root else []


@pytest.mark.timeout(150)
def test_tiny_matrix_interrupted_resumed_and_reported(out_dir):
    scenarios = os.path.join(out_dir, "scenarios.toml")
    with open(scenarios, "w") as f:
        f.write(SCENARIOS)
    with_nginx = nginx_binary() is not None
    expected = (
        [f"{m}/small/c2/r1" for m in MODELS]
        + (["nginx/small/c2/r1"] if with_nginx else [])
        + [f"{m}/cpu/c2/r1" for m in MODELS]
    )
    common = ["--scenarios-file", scenarios, "--models", ",".join(MODELS) + (",nginx" if with_nginx else "")]

    # 1. interrupted by SIGINT (Ctrl-C) after two cells
    proc = bench(out_dir, *common, "--no-report")
    try:
        wait_for_cells(out_dir, 2, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "resume with: serverzoo bench --resume" in err
    path = run_file(out_dir)
    with open(path) as f:
        doc = json.load(f)
    kept = len(doc["cells"])
    assert doc["status"] == "interrupted" and 2 <= kept < len(expected), (doc["status"], kept)
    assert [c["id"] for c in doc["cells"]] == expected[:kept]
    assert not glob.glob(os.path.join(out_dir, "results", ".tmp-*")), "a temporary file was left behind"
    time.sleep(0.5)
    assert leftover_processes(out_dir) == [], "the interrupted cell's server or generator is still running"
    assert cell_cgroups(proc.pid) == [], "the interrupted cell's cgroup was left behind"

    # 2. resumed for one more cell only
    proc = bench(out_dir, "--resume", path, "--max-cells", "1", "--no-report")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    with open(path) as f:
        doc = json.load(f)
    assert doc["status"] == "partial" and len(doc["cells"]) == kept + 1

    # 3. resumed to the end, with the reports
    proc = bench(out_dir, "--resume", path)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    with open(path) as f:
        doc = json.load(f)
    assert doc["status"] == "complete" and doc["finished"]
    assert [c["id"] for c in doc["cells"]] == expected
    assert len(doc["resumed"]) == 2

    # the JSON: schema, machine, exact configuration, and every cell measured for real
    assert doc["schema"] == SCHEMA
    for key in ("cpu_model", "cpus", "governor", "kernel", "python", "python_build", "packages", "git_commit", "date"):
        assert key in doc["machine"]
    config = doc["config"]
    assert config["scenarios_toml"] == SCENARIOS and config["repeat"] == 1
    assert set(config["scenarios"]) == {"small", "cpu"}
    assert config["cpus"]["server"] and config["cpus"]["client"]
    if with_nginx:
        assert "worker_processes 1;" in config["reference"]["config"]
        assert config["reference"]["version"]
    for cell in doc["cells"]:
        assert cell["status"] == "ok", cell["error"]
        load = cell["load"]
        assert load["schema"] == "serverzoo.load/1"
        assert load["requests"] > 0 and load["rps"] > 0
        assert load["options"]["cpus"] == config["cpus"]["client"]
        assert load["options"]["warmup_s"] == 0.2 and load["options"]["duration"] == 1.0
        assert 0.9 < load["elapsed_s"] < 1.5, load["elapsed_s"]
        assert load["server"]["pid"] == cell["server_process"]["pid"]
        assert load["server"]["cpu_s"] > 0 and load["server"]["peak_rss_bytes"] > 0
        assert cell["server_process"]["rss_at_ready_bytes"] > 0
        assert cell["server_process"]["clean_stop"] is True, cell["server_process"]
        assert cell["generator"]["argv"][:3] == ["-m", "serverzoo", "load"]
        # where each side ran, as the scenario asked; the server's CPU from its cgroup where there is one
        placement = cell["placement"]
        assert placement["name"] == ("server-all" if cell["scenario"] == "cpu" else "split")
        assert cell["server_process"]["cpus"] == placement["server_cpus"] == load["options"]["server_cpus"]
        if placement["name"] == "server-all":
            assert set(placement["server_cpus"]) == set(config["cpus"]["server"]) | set(config["cpus"]["client"])
        if config["cpu_accounting"]["cgroup_root"]:
            assert load["server"]["cpu_source"] == "cgroup", cell["server_process"]["cpu_accounting"]

    # medians and flags are stored with the cells
    assert {(s["server"], s["scenario"]) for s in doc["summary"]} == {tuple(i.split("/")[:2]) for i in expected}
    assert all(s["n"] == 1 and s["median"] > 0 and isinstance(s["flags"], list) for s in doc["summary"])

    # the reports, next to the JSON; their numbers are the JSON's
    stem = os.path.splitext(path)[0]
    with open(stem + ".html") as f:
        html = f.read()
    with open(stem + ".md") as f:
        md = f.read()
    assert html.count("<svg") >= 4 and "http://cdn" not in html and "<script" not in html
    assert doc["run_id"] in html and doc["run_id"] in md
    for cell in doc["cells"]:
        shown = format_value("rps", cell["load"]["rps"])
        row = next(line for line in md.splitlines() if line.startswith(f"| {cell['server']} | {shown}"))
        assert row, (cell["id"], shown)
        assert shown in html


def test_a_cell_that_cannot_start_or_load_is_recorded_as_failed(out_dir):
    from serverzoo.bench.corpus import ensure_corpus
    from serverzoo.bench.runner import CellRunner
    from serverzoo.bench.scenarios import Scenario, ServerSpec, ZipfMix

    sc = Scenario(
        "small", "small", "", "closed", (), ZipfMix("nomix", 1.0), "keep-alive", "rps", True, (), (1,), 0, 0.3, 0.0
    )
    plan = one_scenario_plan(
        sc,
        {
            "bad": ServerSpec("bad", "threading", ("--no-such-option",)),
            "threading": ServerSpec("threading", "threading"),
        },
    )
    root = ensure_corpus(os.path.join(out_dir, "corpus"), plan.corpus)
    bad, good = plan.cells()
    record = CellRunner(plan, root).run(bad)
    assert record["status"] == "failed" and record["error"].startswith("server did not start")
    # a generator that cannot run (no manifest for its Zipf mix) fails the cell with the generator's own reason
    record = CellRunner(plan, root).run(good)
    assert record["status"] == "failed" and "load generator wrote no result" in record["error"], record["error"]
    assert record["server_process"]["clean_stop"] is True
    assert leftover_processes(out_dir) == []


def test_ctrl_c_waits_while_a_server_starts_or_stops():
    from serverzoo.bench.runner import Interrupts

    guard = Interrupts()
    reached = []
    with pytest.raises(KeyboardInterrupt), guard.critical():  # noqa: PT012 (raised as the block ends)
        guard.handler(signal.SIGINT, None)  # arrives mid-start: remembered, not raised
        reached.append(True)
    assert reached and not guard.pending
    with pytest.raises(KeyboardInterrupt):
        guard.handler(signal.SIGINT, None)  # outside a critical section it interrupts at once


def test_an_interrupt_lost_in_a_hook_stops_the_run_before_the_next_cell():
    """A signal that lands in an at-fork hook or a finalizer has its KeyboardInterrupt printed and dropped."""
    from serverzoo.bench.runner import Interrupts

    guard = Interrupts()
    guard.check()  # nothing asked: the run goes on
    try:
        guard.handler(signal.SIGINT, None)
    except KeyboardInterrupt:
        pass  # what Python does with an exception raised in such a hook
    with pytest.raises(KeyboardInterrupt):
        guard.check()
    guard.reset()
    guard.check()


def test_an_idle_cell_measures_the_same_load_without_the_idle_set_first(out_dir):
    """A cell of a scenario with idle connections runs its active load twice on one server:
    without the idle set, then with it; both documents are kept and the run validates."""
    from serverzoo.bench.corpus import ensure_corpus
    from serverzoo.bench.results import CellRecord
    from serverzoo.bench.runner import CellRunner
    from serverzoo.bench.scenarios import Scenario, ServerSpec

    sc = Scenario(
        "idle", "idle", "", "closed", ("/1KiB.bin",), None, "keep-alive", "rps", False, (), (2,), 0, 0.5, 0.2, idle=20
    )
    plan = one_scenario_plan(sc, {"select": ServerSpec("select", "select")})
    root = ensure_corpus(os.path.join(out_dir, "corpus"), plan.corpus)
    (cell,) = plan.cells()
    record = CellRunner(plan, root).run(cell)
    assert record["status"] == "ok", record["error"]
    without, with_idle = record["load_without_idle"], record["load"]
    assert without["requests"] > 0 and with_idle["requests"] > 0
    assert "p99" in without["latency_us"] and "p99" in with_idle["latency_us"]
    assert without["adversaries"] is None or without["adversaries"]["idle"]["connections"] == 0
    assert with_idle["adversaries"]["idle"]["connections"] == 20
    assert CellRecord.from_doc(record).load_without_idle is not None
    assert leftover_processes(out_dir) == []
