"""`serverzoo bench --link NAME`: the whole matrix across an emulated link, with real processes.

A tiny run (one scenario, half-second cells) over the bare `veth` link is interrupted with
Ctrl-C after its first cell, then resumed to the end; a loopback run of one cell is put
beside it. Checked: every cell's server ran on the link's server host and the generator on
its client host, the link was built once per run and removed afterwards (also after Ctrl-C),
no server is left, the JSON and the reports name the link, and `report` keeps the two
networks apart while `compare` refuses to pair them. The namespaces are made by the bench
processes this test starts (names carry their pids). About 20 s.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from serverzoo.bench.nginx import nginx_binary
from serverzoo.clients.links.namespaces import list_namespaces

from .links_helpers import needs_root_and_iproute2
from .support import world_readable_dir

PY = [sys.executable, "-m", "serverzoo"]
needs_links = needs_root_and_iproute2

SCENARIOS = """
[corpus]
seed = 3
files = ["1KiB"]

[presets.quick]
servers = "models"
repeat = 1
reference = true

[scenarios.small]
title = "Small files, keep-alive"
mode = "closed"
paths = ["/1KiB.bin"]
quick = { concurrency = [2], duration = 0.5, warmup = 0.1 }

[links.veth]
description = "the bare veth pair"

[links.mine]
description = "only in this scenarios file"
rate_mbit = 50
"""


@pytest.fixture
def out_dir():
    """A world-readable folder holding the scenarios file (world_readable_dir)."""
    with world_readable_dir("serverzoo-bench-link-") as path:
        with open(os.path.join(path, "scenarios.toml"), "w") as f:
            f.write(SCENARIOS)
        yield path


def bench(out: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*PY, "bench", *args], cwd=out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err


def runs(out: str) -> set[str]:
    return set(glob.glob(os.path.join(out, "results", "bench-*.json")))


def read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)  # always whole: the runner replaces it atomically


def namespaces_of(pid: int) -> list[str]:
    return [n for n in list_namespaces() if n.startswith(f"szoo-{pid}-")]


def wait_for_first_cell(out: str, proc: subprocess.Popen, limit: float = 30.0) -> str:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for path in runs(out):
            if read(path)["cells"]:
                return path
        assert proc.poll() is None, finish(proc)
        time.sleep(0.05)
    raise AssertionError(f"no cell after {limit} s")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def left_running(out: str, doc: dict) -> list[str]:
    """Servers of the run still alive, by their recorded PIDs, or any process whose command line names out."""
    found = [
        f"server {c['server_process']['pid']}"
        for c in doc["cells"]
        if c["server_process"].get("pid") and alive(c["server_process"]["pid"])
    ]
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and out in " ".join(p.info["cmdline"] or []):
            found.append(f"{p.pid}: {' '.join(p.info['cmdline'])}")
    return found


@needs_links
@pytest.mark.timeout(120)
def test_bench_over_a_link_interrupted_resumed_and_reported_beside_loopback(out_dir):
    scenarios = os.path.join(out_dir, "scenarios.toml")
    models = "iterative,threading" + (",nginx" if nginx_binary() else "")

    # 1. over veth, Ctrl-C after the first cell: the link goes away with the run
    proc = bench(out_dir, "--scenarios-file", scenarios, "--models", models, "--link", "veth", "--no-report")
    path = wait_for_first_cell(out_dir, proc)
    assert len(namespaces_of(proc.pid)) == 2, "the run's link is not up while it runs"
    proc.send_signal(signal.SIGINT)
    err = finish(proc, 30)
    assert proc.returncode == 130, err
    assert "link veth removed" in err
    assert namespaces_of(proc.pid) == [], "the interrupted run left its namespaces"
    doc = read(path)
    assert doc["status"] == "interrupted" and 1 <= len(doc["cells"]) < len(models.split(","))
    assert left_running(out_dir, doc) == []

    # 2. resumed to the end: the same link rebuilt, once, for the remaining cells
    proc = bench(out_dir, "--resume", path, "--no-report")
    err = finish(proc)
    assert proc.returncode == 0, err
    assert namespaces_of(proc.pid) == []
    doc = read(path)
    assert doc["status"] == "complete", err
    assert left_running(out_dir, doc) == []
    link = doc["config"]["link"]
    assert link["profile"]["name"] == "veth" and link["source"] == scenarios
    assert link["server_addr"] == "127.18.0.1" and link["client_addr"] == "127.18.0.2"
    assert isinstance(link["applied"], list) and "kernel" in link
    assert doc["resumed"][0]["link_applied"] == link["applied"]
    assert [c["server"] for c in doc["cells"]] == models.split(",")
    client_hosts = []
    for cell in doc["cells"]:
        assert cell["status"] == "ok", cell["error"]
        server = cell["server_process"]
        assert server["url"].startswith("http://127.18.0.1:"), server["url"]
        assert server["argv"][:3] == ["ip", "netns", "exec"] and server["argv"][3].endswith("-srv")
        assert server["clean_stop"] is True, server
        load = cell["load"]
        assert load["requests"] > 0
        if cell["server"] != "iterative":  # its second keep-alive client waits behind the first, by design
            assert load["errors"]["total"] == 0, load["errors"]
        assert load["url"].startswith("http://127.18.0.1:")
        # sampled by PID across the namespaces: the generator saw the server's own process
        assert load["server"]["pid"] == server["pid"] and load["server"]["cpu_s"] > 0
        assert load["options"]["cpus"] == doc["config"]["cpus"]["client"]
        client_hosts.append(cell["generator"]["netns"])
        assert server["argv"][3] == cell["generator"]["netns"].removesuffix("-cli") + "-srv"
    first, rest = client_hosts[0], client_hosts[1:]
    assert len(set(rest)) == 1, "one link per run, not one per cell"
    assert rest[0] != first, "the resumed run built its own link"

    # 3. one loopback cell beside it
    proc = bench(out_dir, "--scenarios-file", scenarios, "--models", "iterative", "--no-report")
    err = finish(proc)
    assert proc.returncode == 0, err
    (loop,) = runs(out_dir) - {path}
    loop_doc = read(loop)
    assert loop_doc["config"]["link"] is None
    assert loop_doc["cells"][0]["server_process"]["url"].startswith("http://127.0.0.1:")

    # 4. the report names the link and keeps the two networks apart; compare refuses to pair them
    md_path = os.path.join(out_dir, "both.md")
    done = subprocess.run([*PY, "report", loop, path, "--md", md_path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with open(md_path) as f:
        md = f.read()
    assert "Network: link veth (nothing added)" in md
    assert f"{loop_doc['run_id']} over loopback and {doc['run_id']} over veth, side by side" in md
    rows = [line for line in md.splitlines() if line.startswith("| iterative @")]
    assert [r.split("|")[1].strip() for r in rows] == ["iterative @loopback", "iterative @veth"]
    assert "## Changes from" not in md, "runs over different links were paired as before/after"
    done = subprocess.run([*PY, "compare", loop, path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "over loopback" in done.stderr and "over veth" in done.stderr
    assert "Traceback" not in done.stderr

    from serverzoo.bench.report import build_report, render
    from serverzoo.bench.results import Run

    page = render(build_report([Run.from_doc(doc)], plots=False), "report.html.j2")
    assert "over <b>veth</b>" in page and "<td>network</td><td>link veth" in page


def test_an_unknown_link_is_one_line_and_nothing_runs(out_dir):
    proc = bench(out_dir, "--models", "iterative", "--scenarios", "small-keepalive", "--link", "nosuch")
    err = finish(proc)
    assert proc.returncode == 3, err
    assert err.count("\n") == 1 and "no link named 'nosuch'" in err and "veth" in err
    assert "Traceback" not in err
    assert runs(out_dir) == set()


def test_dry_run_names_the_link_from_the_scenarios_file_or_links_file(out_dir):
    scenarios = os.path.join(out_dir, "scenarios.toml")
    done = subprocess.run(
        [
            *PY,
            "bench",
            "--scenarios-file",
            scenarios,
            "--models",
            "iterative",
            "--no-reference",
            "--link",
            "mine",
            "--dry-run",
        ],
        cwd=out_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "over link mine (50 Mbit/s" in done.stderr
    assert done.stdout.split() == ["iterative/small/c2/r1"]
    links = os.path.join(out_dir, "links.toml")
    with open(links, "w") as f:
        f.write("[links.far]\nrtt_ms = 30\nrate_mbit = 5\n")
    done = subprocess.run(
        [
            *PY,
            "bench",
            "--models",
            "iterative",
            "--scenarios",
            "small-keepalive",
            "--link",
            "far",
            "--links-file",
            links,
            "--dry-run",
        ],
        cwd=out_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "over link far (30 ms RTT, 5 Mbit/s" in done.stderr
    assert runs(out_dir) == set()


@needs_links
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is needed to drop root")
def test_without_root_it_says_so_in_one_line(out_dir):
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *PY,
            "bench",
            "--models",
            "iterative",
            "--scenarios",
            "small-keepalive",
            "--link",
            "veth",
        ],
        cwd=out_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert "need root" in done.stderr and done.stderr.count("\n") == 1
    assert not os.path.exists(os.path.join(out_dir, "results")), "it wrote a corpus or a run before refusing"


# -- without root: the fixture run (synthetic numbers), given a link in its configuration ------

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bench_run_fixture.json")
WAN = {
    "profile": {
        "name": "wan",
        "description": "",
        "rtt_ms": 40,
        "jitter_ms": 0.0,
        "rate_mbit": 100,
        "loss_percent": 0.0,
        "queue_ms": 50.0,
    },
    "applied": ["delay 20 ms each way"],
    "server_addr": "127.18.0.1",
    "client_addr": "127.18.0.2",
    "kernel": None,
}


def over(link: dict | None, run_id: str, tmp_path, rps_factor: float = 1.0) -> str:
    with open(FIXTURE) as f:
        doc = json.load(f)
    doc["run_id"], doc["config"]["link"] = run_id, link
    for cell in doc["cells"]:
        if cell.get("load") and cell["server"] == "iterative":
            cell["load"]["rps"] *= rps_factor
    path = str(tmp_path / f"{run_id}.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def test_report_puts_runs_over_different_links_side_by_side(tmp_path):
    from click.testing import CliRunner

    from serverzoo.cli import main

    loop, wan = over(None, "run-loop", tmp_path), over(WAN, "run-wan", tmp_path, rps_factor=0.01)
    md = str(tmp_path / "r.md")
    result = CliRunner().invoke(main, ["report", loop, wan, "--md", md])
    assert result.exit_code == 0, result.stderr
    text = open(md).read()
    assert "Network: link wan (40 ms RTT, 100 Mbit/s)" in text
    assert "## Changes from" not in text
    section = text.split("## run-loop over loopback and run-wan over wan, side by side\n", 1)[1]
    small = section.split("### Small files, keep-alive (requests/s)\n", 1)[1].split("###", 1)[0]
    rows = {line.split("|")[1].strip(): line for line in small.splitlines() if line.startswith("| ")}
    assert {"iterative @loopback", "iterative @wan", "threading @loopback", "threading @wan"} <= set(rows)
    assert "100.00x slower" in rows["iterative @wan"] and "slower" not in rows["iterative @loopback"]
    assert "(same)" in rows["threading @wan"]

    # the same link twice is still a delta table, and says which link
    again = over(WAN, "run-wan-2", tmp_path)
    result = CliRunner().invoke(main, ["report", wan, again, "--md", md])
    assert result.exit_code == 0, result.stderr
    text = open(md).read()
    assert "## Changes from run-wan to run-wan-2\n\nBoth runs over wan." in text and "side by side" not in text


def test_compare_refuses_runs_over_different_links_in_one_line(tmp_path):
    from click.testing import CliRunner

    from serverzoo.cli import main

    loop, wan = over(None, "run-loop", tmp_path), over(WAN, "run-wan", tmp_path)
    result = CliRunner().invoke(main, ["compare", loop, wan])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "run-loop ran over loopback and run-wan over wan" in result.stderr and "side by side" in result.stderr
    edited = dict(WAN, profile=dict(WAN["profile"], rtt_ms=80))  # same name, another profile
    result = CliRunner().invoke(main, ["compare", wan, over(edited, "run-wan-80", tmp_path)])
    assert result.exit_code == 2 and "wan (40 ms RTT, 100 Mbit/s)" in result.stderr and "80 ms RTT" in result.stderr
    result = CliRunner().invoke(main, ["compare", wan, over(WAN, "run-wan-2", tmp_path)])
    assert result.exit_code == 0, result.output + result.stderr
    assert "(both over wan)" in result.output


def test_resume_refuses_a_link_option_and_a_bad_links_table_is_one_line(out_dir):
    from click.testing import CliRunner

    from serverzoo.cli import main

    result = CliRunner().invoke(main, ["bench", "--resume", FIXTURE, "--link", "veth"])
    assert result.exit_code == 2 and "drop --link" in result.stderr
    bad = os.path.join(out_dir, "bad.toml")
    with open(os.path.join(out_dir, "scenarios.toml")) as f, open(bad, "w") as g:
        g.write(f.read().replace("rate_mbit = 50", "rate_mbit = 0"))
    result = CliRunner().invoke(main, ["bench", "--scenarios-file", bad, "--dry-run"])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert "bad.toml: link 'mine': rate_mbit must be > 0" in result.stderr
