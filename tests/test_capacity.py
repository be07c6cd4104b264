"""The capacity search: its walk without I/O, and known answers against real servers.

The known answers are properties of the work endpoint's waits, not of the machine's speed:
a server that gives each of C keep-alive connections its own wait of W ms completes at most
C / W requests per second (the open loop offers each connection its share of the rate), and
an iterative server completes one request at a time whatever the connections, 1 / W.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import jsonschema
import psutil
import pytest

from serverzoo.clients.loadgen import LoadOptions, schema_path
from serverzoo.clients.loadgen.capacity import (
    Search,
    SearchSettings,
    capacity_text,
    find_capacity,
    judge_step,
    required_responses,
)
from serverzoo.clients.loadgen.corpus import write_corpus
from serverzoo.clients.loadgen.options import OptionError
from serverzoo.clients.loadgen.slo import parse_goals, slo_section
from serverzoo.servers.launch import ServerProcess

from .load_helpers import run_cli


def _walk(capacity: float, settings: SearchSettings, floor: float = 1.0) -> tuple[Search, list[float]]:
    search, tried = Search(settings, floor), []
    while search.next_rate is not None and len(tried) < 100:
        rate = search.next_rate
        tried.append(rate)
        search.record(rate, rate <= capacity)
    return search, tried


@pytest.mark.parametrize("capacity", [1.5, 37.0, 50.0, 99.0, 100.0, 1600.0, 123_456.0])
@pytest.mark.parametrize("start", [10.0, 100.0, 5000.0])
def test_search_brackets_the_capacity_within_the_resolution(capacity: float, start: float) -> None:
    search, tried = _walk(capacity, SearchSettings(start=start, resolution=0.05))
    assert search.reason.startswith("resolved"), search.reason
    assert search.held is not None and search.failed is not None
    assert search.held <= capacity < search.failed <= search.held * 1.05
    assert len(tried) == len(set(tried)) <= 20, "no rate is tried twice"


def test_search_ends_when_nothing_holds_down_to_the_floor() -> None:
    search, tried = _walk(0.5, SearchSettings(start=8.0), floor=1.0)
    assert search.held is None and tried == [8.0, 4.0, 2.0, 1.0]
    assert "no rate held" in search.reason


def test_required_responses_follow_the_percentile() -> None:
    assert required_responses(parse_goals(["p99<10ms"])) == 500
    assert required_responses(parse_goals(["p99.9<10ms", "p50<1ms"])) == 5000
    assert required_responses(parse_goals(["p50<1ms"])) == 50  # the floor
    assert required_responses(parse_goals(["errors<1%"])) == 50


def _step_doc(target: float, achieved: float, p99: int, errors: int = 0) -> dict:
    lat = {"mean": p99 / 2, "p50": p99 // 2, "p90": p99, "p99": p99, "p99.9": p99, "max": p99, "count": 100}
    return {
        "requests": 100,
        "errors": {"total": errors},
        "elapsed_s": 1.0,
        "rps": 100.0,
        "latency_us": lat,
        "achieved_rate": achieved,
        "client": {"client_bound": False},
    }


@pytest.mark.parametrize(
    "achieved, p99, errors, goals, held, reason",
    [
        (100.0, 5_000, 0, ["p99<10ms"], True, ""),
        (95.0, 5_000, 0, ["p99<10ms"], True, ""),
        (94.0, 5_000, 0, ["p99<10ms"], False, "achieved 94.0 of 100 req/s"),
        (100.0, 12_000, 0, ["p99<10ms"], False, "p99<10ms: NOT met"),
        (100.0, 5_000, 1, ["p99<10ms"], False, "1 requests failed"),
        (100.0, 5_000, 1, ["p99<10ms", "errors<5%"], True, ""),
    ],
)
def test_judge_step(achieved: float, p99: int, errors: int, goals: list[str], held: bool, reason: str) -> None:
    parsed = parse_goals(goals)
    doc = _step_doc(100.0, achieved, p99, errors)
    doc["slo"] = slo_section(parsed, doc)
    row = judge_step(parsed, doc, 100.0)
    assert row["held"] is held and (reason in " ".join(row["reasons"])) and (held or row["reasons"])
    assert row["latency_us"]["p99"] == p99 and row["latency_us"]["p99<10ms"] == p99


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("capacity-corpus"))
    write_corpus(root, ["1KiB"])
    return root


def _search(url: str, connections: int, start: float, **options) -> dict:
    # a generous goal: past capacity the queue grows without bound, so latency soon exceeds any
    # goal, while a brief stall of a busy machine stays inside this one
    opts = LoadOptions(url=url, connections=connections, slos=["p90<300ms"], **options)
    return find_capacity(opts, SearchSettings(start=start, resolution=0.1, max_time_s=45))


def test_known_answer_concurrent_model(corpus: str) -> None:
    # 4 connections, each request waiting 40 ms: 4 / 0.040 = 100 requests/s
    with ServerProcess("asyncio", corpus) as srv:
        doc = _search(srv.url + "_/work?wait=40", 4, start=50.0)
    assert doc["resolved"], capacity_text(doc)
    assert doc["capacity_rps"] == pytest.approx(100, rel=0.15), capacity_text(doc)


def test_known_answer_iterative_model(corpus: str) -> None:
    # one request at a time, each waiting 20 ms: 1 / 0.020 = 50 requests/s, whatever the
    # connections (a new one per request, so the iterative server takes them in turn)
    with ServerProcess("iterative", corpus) as srv:
        doc = _search(srv.url + "_/work?wait=20", 4, start=25.0, conn_mode="new")
    assert doc["resolved"], capacity_text(doc)
    assert doc["capacity_rps"] == pytest.approx(50, rel=0.15), capacity_text(doc)


def test_cli_prints_the_curve_and_a_valid_document(corpus: str) -> None:
    with open(schema_path("capacity")) as f:
        validator = jsonschema.Draft202012Validator(json.load(f))
    out = run_cli(
        "load",
        "/_/work?wait=20",
        "--serve",
        "asyncio",
        "--root",
        corpus,
        "-c",
        "2",
        "--find-capacity",
        "--slo",
        "p90<300ms",
        "--search-start",
        "40",
        "--search-resolution",
        "0.5",
        "--json",
        "-",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    validator.validate(doc)
    assert doc["server_process"]["name"] == "asyncio" and doc["server_process"]["clean_stop"]
    assert [s["step"] for s in doc["steps"]] == list(range(1, len(doc["steps"]) + 1))
    held = [s["target_rate"] for s in doc["steps"] if s["held"]]
    assert doc["capacity_rps"] == max(held)
    assert "target/s" in out.stderr and f"Capacity: {doc['capacity_rps']:,.4g} req/s" in out.stderr


def test_cli_no_rate_holds_exits_5(corpus: str) -> None:
    out = run_cli(
        "load",
        "/_/work?wait=20",
        "--serve",
        "asyncio",
        "--root",
        corpus,
        "-c",
        "2",
        "--find-capacity",
        "--slo",
        "p50<5ms",
        "--search-start",
        "40",
        "--search-time",
        "5s",
    )
    assert out.returncode == 5, out.stderr
    assert "Capacity: none found at p50<5ms" in out.stdout


@pytest.mark.parametrize(
    "goals, extra, part",
    [
        ([], {}, "give --slo"),
        (["rps>100"], {}, "not an rps goal"),
        (["p99<10ms"], {"requests": 100}, "drop -n"),
    ],
)
def test_a_search_that_cannot_mean_anything_is_refused(goals: list[str], extra: dict, part: str) -> None:
    opts = LoadOptions(url="http://127.0.0.1:9/", slos=goals, **extra)
    with pytest.raises(OptionError, match=part):
        find_capacity(opts, SearchSettings())


def _wait_for_load(proc: subprocess.Popen, limit_s: float = 30.0) -> None:
    """Return once a load worker of proc holds an established connection: the first step's
    load is running. A fixed sleep would assume how long start-up takes on a busy machine."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited ({proc.returncode}) before its load ran:\n{out[-2000:]}\n{err[-2000:]}")
        try:
            workers = {
                child.pid
                for child in psutil.Process(proc.pid).children(recursive=True)
                if "serverzoo.clients.loadgen.worker" in " ".join(child.cmdline())
            }
        except psutil.NoSuchProcess:
            workers = set()  # a child ended while it was read; the next round (or proc.poll()) says more
        if any(c.pid in workers and c.status == psutil.CONN_ESTABLISHED for c in psutil.net_connections("tcp")):
            return
        time.sleep(0.05)
    pytest.fail(f"no load worker connected within {limit_s:g} s")


def test_ctrl_c_ends_the_search(corpus: str) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serverzoo",
            "load",
            "/_/work?wait=20",
            "--serve",
            "asyncio",
            "--root",
            corpus,
            "-c",
            "2",
            "--find-capacity",
            "--slo",
            "p90<300ms",
            "--search-start",
            "20",
            "-d",
            "20s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        _wait_for_load(proc)  # inside the first step's 20 s window
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"still running 30 s after Ctrl-C; its output:\n{out[-2000:]}\n{err[-2000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted during the step at 20 req/s" in out, out + err
    assert proc.returncode == 5 and "Traceback" not in err  # no step was judged: no rate held
