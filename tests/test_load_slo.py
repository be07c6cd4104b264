"""--slo and --abort-on-fail against a real server: the exit status, the JSON, an early stop."""

from __future__ import annotations

import json

import jsonschema
import pytest

from serverzoo.clients.loadgen import LoadOptions, run_load, schema_path
from serverzoo.clients.loadgen.corpus import write_corpus
from serverzoo.clients.loadgen.options import OptionError
from serverzoo.servers.launch import ServerProcess

from .load_helpers import run_cli


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("slo-corpus"))
    write_corpus(root, ["1KiB"])
    return root


@pytest.fixture(scope="module")
def server(corpus: str):
    with ServerProcess("asyncio", corpus) as srv:
        yield srv


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    with open(schema_path()) as f:
        return jsonschema.Draft202012Validator(json.load(f))


def test_a_missed_goal_exits_5_and_the_json_says_by_how_much(server, corpus: str, validator) -> None:
    # every response waits 20 ms, so its p90 cannot be under 10 ms, and it is under 1 s
    out = run_cli(
        "load",
        server.url + "_/work?wait=20",
        "-c",
        "2",
        "-n",
        "40",
        "-w",
        "1",
        "--slo",
        "p90<10ms",
        "--slo",
        "p90<1s",
        "--slo",
        "errors<=0%",
        "--json",
        "-",
    )
    assert out.returncode == 5, out.stderr
    doc = json.loads(out.stdout)
    validator.validate(doc)
    first, second, errors = doc["slo"]["goals"]
    assert not doc["slo"]["passed"] and doc["slo"]["aborted"] is None
    assert first["goal"] == "p90<10ms" and not first["passed"] and first["measured"] >= 20_000
    assert first["margin"] == 10_000 - first["measured"] and first["unit"] == "us"
    assert second["passed"] and second["margin"] > 0 and errors["passed"] and errors["measured"] == 0
    assert "SLO NOT MET:" in out.stderr and "p90<10ms: NOT met" in out.stderr


def test_goals_met_exit_0(server) -> None:
    out = run_cli(
        "load", server.url + "1KiB.bin", "-c", "2", "-n", "200", "-w", "1", "--slo", "p99<5s", "--slo", "rps>1"
    )
    assert out.returncode == 0, out.stderr
    assert "SLO met:" in out.stdout and "rps>1: met" in out.stdout


def test_help_documents_the_exit_status() -> None:
    out = run_cli("load", "--help")
    assert "5 when a --slo goal was not met" in " ".join(out.stdout.split())
    assert "--abort-on-fail" in out.stdout


@pytest.mark.parametrize(
    "goal, part",
    [("p99<10", "has no unit"), ("p99 >10ms", "upper bound"), ("throughput>5", "unknown measure 'throughput'")],
)
def test_a_malformed_goal_is_a_usage_error(server, goal: str, part: str) -> None:
    out = run_cli("load", server.url + "1KiB.bin", "-n", "10", "--slo", goal)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "'--slo'" in error[0] and part in error[0], out.stderr


def test_abort_on_fail_needs_a_bound_on_the_window(server) -> None:
    opts = LoadOptions(url=server.url + "1KiB.bin", duration=1.0, slos=["p99<1ms"], abort_on_fail=True)
    with pytest.raises(OptionError, match="bounded window"):
        run_load(opts)
    out = run_cli("load", server.url + "1KiB.bin", "-d", "1", "--abort-on-fail")
    assert out.returncode == 2 and "give --slo too" in out.stderr


def test_abort_on_fail_stops_once_the_goal_is_lost(server, validator) -> None:
    # 100 req/s for 20 s, each waiting 30 ms: after the first second the ~100 slow responses
    # already outnumber the 1% of at most ~2000 the window may hold beyond p99 < 10 ms
    doc = run_load(
        LoadOptions(
            url=server.url + "_/work?wait=30",
            connections=8,
            rate=100,
            duration=20.0,
            workers=1,
            slos=["p99<10ms", "errors<1%"],
            abort_on_fail=True,
        )
    )
    validator.validate(doc)
    lost = doc["slo"]["aborted"]
    assert lost is not None and lost["goal"] == "p99<10ms" and lost["at_s"] < 20
    assert doc["elapsed_s"] < 19, "the window was cut short"
    assert not doc["slo"]["goals"][0]["passed"] and doc["slo"]["goals"][1]["passed"]
    assert any(w.startswith("stopped early") for w in doc["warnings"])


def test_abort_on_fail_lets_a_run_that_holds_finish(server) -> None:
    doc = run_load(
        LoadOptions(
            url=server.url + "1KiB.bin",
            connections=2,
            rate=200,
            duration=2.5,
            workers=1,
            slos=["p99<2s", "errors<=0%"],
            abort_on_fail=True,
        )
    )
    assert doc["slo"]["passed"] and doc["slo"]["aborted"] is None
    assert doc["elapsed_s"] >= 2.4
