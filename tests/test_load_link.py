"""`serverzoo load --serve MODEL` (a server started for the run) and `--link NAME` (that server and
the generator on the two ends of an emulated link: real network namespaces, root and iproute2).

Every namespace here is made by the test itself or by a `serverzoo load` it started (names carry
that process's pid); each test checks that none of them and no server it started is left.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import jsonschema
import psutil
import pytest

from serverzoo.clients.links import LinkedHosts
from serverzoo.clients.links.namespaces import list_namespaces
from serverzoo.clients.loadgen import LoadOptions, run_load, schema_path
from serverzoo.clients.loadgen.corpus import write_corpus
from serverzoo.servers import resolve

from .links_helpers import needs_root_and_iproute2

needs_links = needs_root_and_iproute2
KIB64 = 64 * 1024


def namespaces_of(pid: int) -> list[str]:
    return [n for n in list_namespaces() if n.startswith(f"szoo-{pid}-")]


def servers_on(root: str) -> list[int]:
    """Live `serverzoo serve` processes serving this test's corpus (only our runs serve it)."""
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "serve" in cmd and root in cmd:
            pids.append(p.pid)
    return pids


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("link-corpus"))
    write_corpus(root, ["1KiB", "64KiB"])
    return root


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    with open(schema_path()) as f:
        return jsonschema.Draft202012Validator(json.load(f))


@pytest.fixture(autouse=True)
def nothing_left_behind(corpus: str):
    yield
    assert not namespaces_of(os.getpid()), "a namespace of this test was left behind"
    assert not servers_on(corpus), "a server started for a run was left behind"


def load_cli(*args: str, timeout: float = 45) -> tuple[int, str, str]:
    """`serverzoo load ARGS` in a subprocess: (exit code, stdout, stderr); its namespaces must be gone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "serverzoo", "load", "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert not namespaces_of(proc.pid), f"serverzoo load left namespaces behind: {namespaces_of(proc.pid)}"
    return proc.returncode, out, err


def wire_bytes(namespace: str) -> tuple[int, int]:
    """(received, sent) bytes over every interface of a namespace but loopback: what crossed the link."""
    out = subprocess.run(
        ["ip", "-n", namespace, "-s", "-j", "link", "show"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    links = [link for link in json.loads(out) if link["ifname"] != "lo"]
    assert links, out
    return (
        sum(link["stats64"]["rx"]["bytes"] for link in links),
        sum(link["stats64"]["tx"]["bytes"] for link in links),
    )


def body_bytes_expected(doc: dict) -> int:
    return sum(t["sent"] * t["expect_length"] for t in doc["targets"])


# -- --serve on loopback ----------------------------------------------------------------------
def test_serve_on_loopback_verifies_bodies_and_records_the_server(corpus: str, validator) -> None:
    code, out, err = load_cli(
        "/1KiB.bin",
        "/64KiB.bin",
        "--serve",
        "threading",
        "--corpus",
        corpus,
        "-n",
        "200",
        "-c",
        "4",
        "-w",
        "1",
        "--json",
        "-",
    )
    assert code == 0, err
    doc = json.loads(out)
    validator.validate(doc)
    assert doc["requests"] == 200 and doc["errors"]["total"] == 0
    assert doc["options"]["verify_every"] == 1 and all(t["sha256"] for t in doc["targets"])
    assert doc["body_bytes"] == body_bytes_expected(doc) and {t["sent"] > 0 for t in doc["targets"]} == {True}
    started = doc["server_process"]
    assert started["name"] == started["model"] == "threading" and started["root"] == corpus
    assert started["argv"][1:5] == ["-m", "serverzoo", "serve", "threading"]
    assert started["clean_stop"] is True and started["exit_code"] == 0 and started["problem"] is None
    # sampled (CPU time within a window this short may round to 0 clock ticks; memory cannot)
    assert doc["server"]["pid"] == started["pid"] and doc["server"]["peak_rss_bytes"] > 1_000_000
    assert doc["link"] is None
    assert doc["url"] == started["url"] + "1KiB.bin" and doc["url"].startswith("http://127.0.0.1:")
    assert f"server threading started for this run (pid {started['pid']})" in err
    assert not psutil.pid_exists(started["pid"])


def test_requests_left_waiting_are_reported_not_dropped(corpus: str, validator) -> None:
    """The iterative server serves one keep-alive connection until it closes: the other three
    wait the whole window. Their requests are in no latency figure, so they are counted apart."""
    code, out, err = load_cli(
        "/1KiB.bin", "--serve", "iterative", "--corpus", corpus, "-c", "4", "-w", "1", "-d", "1s", "--json", "-"
    )
    assert code == 0, err
    doc = json.loads(out)
    validator.validate(doc)
    waiting = doc["unfinished"]
    assert 3 <= waiting["count"] <= 4, waiting
    assert waiting["longer_than_max"] >= 3 and waiting["oldest_us"] > doc["latency_us"]["max"]
    assert waiting["stalled"] >= 3  # waiting the whole window: far beyond the slowest response
    assert waiting["oldest_us"] >= 0.5 * doc["elapsed_s"] * 1e6  # waiting since the window opened
    assert "requests still waiting at the end" in err and "the latency figures leave them out" in err


def test_serve_resolves_a_variant_and_passes_server_args(corpus: str) -> None:
    code, out, err = load_cli(
        "/1KiB.bin",
        "--serve",
        "asyncio-uvloop",
        "--server-args",
        "--workers 2",
        "--root",
        corpus,
        "--server-cpus",
        "0",
        "-n",
        "50",
        "-c",
        "2",
        "-w",
        "1",
        "--json",
        "-",
    )
    assert code == 0, err
    started = json.loads(out)["server_process"]
    assert started["name"] == "asyncio-uvloop" and started["model"] == "asyncio"
    assert started["argv"][4:5] == ["asyncio"]
    assert started["argv"][-4:] == [*resolve("asyncio-uvloop").args, "--workers", "2"]
    assert started["cpus"] == [0] and started["clean_stop"] is True


@pytest.mark.parametrize(
    "args, code, message",
    [
        (
            ["/1KiB.bin", "--link", "veth", "--corpus", "{corpus}"],
            2,
            "--link runs the server on the link's server host",
        ),
        (
            ["http://127.0.0.1:9/1KiB.bin", "--serve", "threading", "--corpus", "{corpus}"],
            2,
            "give paths like /1KiB.bin",
        ),
        (["/1KiB.bin", "--serve", "nosuch", "--corpus", "{corpus}"], 2, "--serve nosuch: unknown server"),
        (["/1KiB.bin", "--serve", "threading"], 2, "--serve needs a directory to serve"),
        (["/1KiB.bin", "--corpus", "{corpus}"], 2, "/1KiB.bin is a path: give a full URL"),
        (
            ["/1KiB.bin", "--serve", "threading", "--corpus", "{corpus}", "--server-args", "--pool 3"],
            2,
            "--serve threading did not start: Error: --pool does not apply to the threading model",
        ),
        (["/1KiB.bin", "--serve", "threading", "--corpus", "{corpus}", "--link", "nosuch"], 3, "--link nosuch: "),
    ],
    ids=[
        "link-without-serve",
        "url-with-serve",
        "unknown-model",
        "no-root",
        "path-without-serve",
        "server-fails",
        "unknown-link",
    ],
)
def test_bad_settings_say_so_in_one_line(corpus: str, args: list[str], code: int, message: str) -> None:
    rc, out, err = load_cli(*(a.format(corpus=corpus) for a in args), "-n", "10", "-c", "1")
    assert rc == code, err
    assert err.startswith("serverzoo load: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert out == ""


# -- --link ----------------------------------------------------------------------------------
@needs_links
def test_requests_cross_the_link(corpus: str) -> None:
    with LinkedHosts("veth") as link:
        rx0, tx0 = wire_bytes(link.server_ns)
        doc = run_load(
            LoadOptions(
                url="/64KiB.bin", serve="threading", corpus=corpus, link="veth", requests=200, connections=4, workers=1
            ),
            hosts=link,
        )
        rx1, tx1 = wire_bytes(link.server_ns)
    assert doc["requests"] == 200 and doc["errors"]["total"] == 0
    # every request came in over the server host's side of the link, every body went out over it
    assert rx1 - rx0 >= 200 * len(b"GET /64KiB.bin HTTP/1.1\r\n\r\n")
    assert tx1 - tx0 >= 200 * KIB64
    assert doc["url"].startswith(f"http://{link.server_addr}:")
    assert doc["server_process"]["argv"][:4] == ["ip", "netns", "exec", link.server_ns]
    assert doc["link"]["profile"]["name"] == "veth"
    assert not psutil.pid_exists(doc["server_process"]["pid"])


@needs_links
def test_cli_link_result_names_the_link(corpus: str, validator) -> None:
    code, out, err = load_cli(
        "/1KiB.bin",
        "--serve",
        "threading",
        "--corpus",
        corpus,
        "--link",
        "veth",
        "-n",
        "200",
        "-c",
        "4",
        "-w",
        "1",
        "--json",
        "-",
    )
    assert code == 0, err
    doc = json.loads(out)
    validator.validate(doc)
    assert doc["requests"] == 200 and doc["errors"]["total"] == 0
    assert doc["link"]["profile"]["name"] == "veth" and doc["options"]["link"] == "veth"
    server_addr = doc["link"]["server_addr"]
    assert doc["url"].startswith(f"http://{server_addr}:")
    argv = doc["server_process"]["argv"]
    assert argv[:3] == ["ip", "netns", "exec"] and argv[3].endswith("-srv")
    assert doc["server_process"]["clean_stop"] is True
    assert doc["server"]["pid"] == doc["server_process"]["pid"]
    assert "over link veth: " in err


@needs_links
def test_lossy_link_every_byte_verified(corpus: str) -> None:
    code, out, err = load_cli(
        "/64KiB.bin",
        "--serve",
        "threading",
        "--corpus",
        corpus,
        "--link",
        "lossy",
        "-n",
        "200",
        "-c",
        "4",
        "-w",
        "1",
        "--json",
        "-",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert any("loss" in a for a in doc["link"]["applied"]), doc["link"]
    assert doc["requests"] == 200 and doc["errors"]["total"] == 0
    assert doc["options"]["verify_every"] == 1 and doc["targets"][0]["sha256"]
    assert doc["body_bytes"] == 200 * KIB64


def start_in_window(*args: str) -> tuple[subprocess.Popen, bytes]:
    """`serverzoo load --live ARGS` as a terminal's foreground job (its own process group, Ctrl-C not
    ignored), returned once its live line shows that the measured window has begun."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "serverzoo", "load", "--live", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = b""
    deadline = time.monotonic() + 30
    while b"req/s" not in seen and time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 1)[0]:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    if b"req/s" not in seen:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the run did not begin: {seen!r}")
    return proc, seen


def finish(proc: subprocess.Popen, seen: bytes) -> str:
    try:
        return (seen + proc.communicate(timeout=30)[1]).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@needs_links
def test_ctrl_c_ends_the_window_and_removes_everything(corpus: str, tmp_path) -> None:
    """A terminal's Ctrl-C (SIGINT to the foreground process group) ends the window early; the server,
    which must not see that SIGINT (it would fail the window's last requests), and the link go away."""
    result = tmp_path / "run.json"
    proc, seen = start_in_window(
        "/1KiB.bin",
        "--serve",
        "threading",
        "--corpus",
        corpus,
        "--link",
        "veth",
        "-d",
        "30s",
        "-c",
        "2",
        "-w",
        "1",
        "--json",
        str(result),
    )
    try:
        (server_pid,) = servers_on(corpus)
        assert namespaces_of(proc.pid), "the link is up"
        with open(f"/proc/{server_pid}/status") as f:
            blocked = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
        assert blocked & (1 << (signal.SIGINT - 1)), "the server would shut down on the terminal's Ctrl-C"
        os.killpg(proc.pid, signal.SIGINT)
    finally:
        err = finish(proc, seen)
    assert proc.returncode == 0, err
    doc = json.loads(result.read_text())
    assert doc["interrupted"] is True and doc["elapsed_s"] < 25, err
    assert doc["requests"] > 0 and doc["errors"]["total"] == 0, err
    assert doc["server_process"]["clean_stop"] is True, doc["server_process"]
    assert not namespaces_of(proc.pid)
    assert not psutil.pid_exists(server_pid)


def test_sigterm_stops_the_started_server(corpus: str) -> None:
    proc, seen = start_in_window(
        "/1KiB.bin", "--serve", "threading", "--corpus", corpus, "-d", "30s", "-c", "2", "-w", "1"
    )
    try:
        (server_pid,) = servers_on(corpus)
        proc.terminate()
    finally:
        err = finish(proc, seen)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert not psutil.pid_exists(server_pid)
