"""`serverzoo profile`: known answers about the models (properties, never speeds), and its report section.

The known answers: the iterative server at one keep-alive connection makes a small,
fixed set of system calls per request and sleeps at most once per request (waiting
for the client's next request), with no thread or process behind it; forking creates
one process per connection and threading one thread per connection when every request
is a new connection; select creates none; prefork's process count does not move.
Each runs real servers and the real load generator for a few tenths of a second per
pass. A missing strace or py-spy skips only the tests that need it, with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from serverzoo.bench import code_links, profile_report, syscall_counts
from serverzoo.bench.corpus import ensure_corpus
from serverzoo.bench.flamegraph import py_spy_binary
from serverzoo.bench.plan import build_plan
from serverzoo.bench.profiling import Profiler
from serverzoo.bench.scenarios import load_suite
from serverzoo.servers import MODELS

SCENARIOS = """
[corpus]
seed = 3
files = ["1KiB"]

[presets.quick]
servers = "models"
repeat = 1
reference = false

[scenarios.keepalive]
mode = "closed"
paths = ["/1KiB.bin"]
connection = "keep-alive"
quick = { concurrency = [1], duration = 0.3 }

[scenarios.new-connection]
mode = "closed"
paths = ["/1KiB.bin"]
connection = "close"
quick = { concurrency = [1], duration = 0.3 }
"""

needs_strace = pytest.mark.skipif(
    syscall_counts.strace_binary() is None, reason="strace is not installed (Debian package strace)"
)
needs_py_spy = pytest.mark.skipif(py_spy_binary() is None, reason="py-spy is not installed (pip install py-spy)")


@pytest.fixture(scope="module")
def suite_and_corpus(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("profile")
    path = base / "scenarios.toml"
    path.write_text(SCENARIOS)
    suite = load_suite(str(path))
    return suite, ensure_corpus(str(base / "corpus"), suite.corpus), str(base)


def _profile(
    suite_and_corpus, model: str, scenario: str, passes: tuple[str, ...], level: int = 1, idle: int = 0
) -> dict:
    suite, corpus, base = suite_and_corpus
    plan = build_plan(suite, "quick", models=[model], scenarios=[scenario], concurrency=[level])
    profiler = Profiler(plan, corpus, passes=passes, idle=idle)
    return profiler.profile(model, scenario, level, os.path.join(base, f"{model}-{scenario}.svg"))


@needs_strace
def test_iterative_keepalive_makes_a_few_fixed_syscalls_and_no_extra_switch(suite_and_corpus):
    r = _profile(suite_and_corpus, "iterative", "keepalive", ("counters", "syscalls"))
    calls = r["syscalls_per_request"]
    assert 0.9 <= calls.get("recvfrom", 0) <= 1.2, calls  # one read per request (a last one sees the close)
    sends = sum(calls.get(name, 0) for name in ("sendto", "sendfile", "sendmsg", "writev"))
    assert 0.9 <= sends <= 1.1, calls  # one send per request: head and 1 KiB body together
    assert r["syscalls_total_per_request"] <= 8, calls
    # every call made about once per request or more is a socket call or the wait for one
    assert {n for n, v in calls.items() if v >= 0.5} <= {"recvfrom", "sendto", "sendfile", "poll", "ioctl"}, calls
    switches = r["context_switches_per_request"]
    # at most the one sleep waiting for the client's next request; never a hand-off to another thread.
    # Involuntary switches are not the model's: they count preemptions by whatever else runs on that
    # core (the client waking up, other tests), so they are reported but not a known answer.
    assert switches["voluntary"] <= 1.2, switches
    assert (r["threads_created"], r["processes_created"], r["threads_peak"], r["processes_peak"]) == (0, 0, 1, 1)


@needs_strace
@pytest.mark.parametrize(
    "model, created, not_created",
    [("forking", "processes_created", "threads_created"), ("threading", "threads_created", "processes_created")],
)
def test_one_process_or_thread_per_connection(suite_and_corpus, model, created, not_created):
    r = _profile(suite_and_corpus, model, "new-connection", ("syscalls",))
    accepted = r["passes"]["syscalls"]["connections_accepted"]
    # the client's connection in flight when the window closed may not have been accepted yet
    assert r["passes"]["syscalls"]["connections"] - 1 <= accepted <= r["passes"]["syscalls"]["connections"], r
    assert accepted >= 3
    assert r[created] == accepted and r[f"{created}_per_connection"] == 1.0, r
    assert r[not_created] == 0


@needs_strace
def test_select_creates_no_thread_or_process(suite_and_corpus):
    r = _profile(suite_and_corpus, "select", "new-connection", ("counters", "syscalls"), level=2)
    assert r["passes"]["syscalls"]["connections"] >= 3
    assert (r["threads_created"], r["processes_created"]) == (0, 0)
    assert (r["threads_peak"], r["processes_min"], r["processes_peak"]) == (1, 1, 1)


@needs_strace
def test_prefork_process_count_is_constant(suite_and_corpus):
    r = _profile(suite_and_corpus, "prefork", "new-connection", ("counters", "syscalls"), level=2)
    assert r["processes_created"] == 0
    assert r["processes_min"] == r["processes_peak"] >= 2, r  # the supervisor and its workers, throughout


@needs_py_spy
def test_flame_graph_shows_the_models_loop(suite_and_corpus):
    r = _profile(suite_and_corpus, "iterative", "keepalive", ("flamegraph",))
    _, _, base = suite_and_corpus
    assert r["flamegraph"] == "iterative-keepalive.svg", r["skipped"]
    with open(os.path.join(base, r["flamegraph"]), encoding="utf-8") as f:
        svg = f.read()
    assert svg.lstrip().startswith("<?xml") and "serve_connection" in svg


def test_idle_memory_counts_held_connections_and_stops_at_a_bounded_model(suite_and_corpus):
    r = _profile(suite_and_corpus, "select", "keepalive", ("memory",), idle=40)
    assert r["idle_memory"]["held"] == 40
    assert r["rss_per_idle_connection_bytes"] is not None
    bounded = _profile(suite_and_corpus, "iterative", "keepalive", ("memory",), idle=40)
    assert bounded["idle_memory"]["held"] == 1  # one at a time: the second waits in the listen backlog
    assert bounded["rss_per_idle_connection_bytes"] is None and "memory" in bounded["skipped"]


def test_a_missing_tracer_skips_only_its_pass(suite_and_corpus, monkeypatch):
    monkeypatch.setattr(syscall_counts, "strace_binary", lambda: None)
    monkeypatch.setattr("serverzoo.bench.flamegraph.py_spy_binary", lambda: None)
    r = _profile(suite_and_corpus, "select", "keepalive", ("counters", "syscalls", "flamegraph"))
    assert r["skipped"]["syscalls"] == "strace is not installed (Debian package strace)"
    assert r["skipped"]["flamegraph"] == "py-spy is not installed (pip install py-spy)"
    assert r["syscalls_per_request"] is None and r["flamegraph"] is None
    assert r["passes"]["counters"]["requests_served"] > 0 and r["context_switches_per_request"] is not None


# -- strace output ----------------------------------------------------------------------

STRACE_OUTPUT = """\
100  clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, exit_signal=0} <unfinished ...>
101  recvfrom(5, "", 65536, 0, NULL, NULL) = 0
100  <... clone3 resumed> => {parent_tid=[102]}, 88) = 102
100  clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 103
100  clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = -1 EAGAIN (Resource temporarily unavailable)
100  clone3({flags=CLONE_VM|CLONE_THREAD, exit_signal=0}, 88) = 104
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 44.50    0.000684          24        28         2 futex
 11.65    0.000179         179         3         1 clone
  4.62    0.000071          23         2           clone3
  0.00    0.000000           0         1           recvfrom
------ ----------- ----------- --------- --------- ----------------
100.00    0.001537          17        34         3 total
"""


def test_accepted_connections_are_the_accept_calls_that_did_not_fail():
    text = STRACE_OUTPUT.replace(
        " 0.00    0.000000           0         1           recvfrom",
        " 1.00    0.000100           1        12         4 accept4",
    )
    assert syscall_counts.parse_strace_output(text).accepted == 8


def test_strace_output_gives_counts_and_what_was_created():
    counts = syscall_counts.parse_strace_output(STRACE_OUTPUT)
    assert dict(counts.calls) == {"futex": 28, "clone": 3, "clone3": 2, "recvfrom": 1}
    assert dict(counts.errors) == {"futex": 2, "clone": 1}
    assert (counts.threads_created, counts.processes_created) == (2, 1)  # the failed fork created nothing


# -- code links and the report section ---------------------------------------------------


def test_every_model_links_to_code_that_exists():
    assert set(code_links.ROLES) == set(MODELS)
    for model in MODELS:
        refs = code_links.code_for(model)
        assert refs["loop"] is not None and refs["io"] is not None
        for ref in filter(None, refs.values()):
            with open(os.path.join(code_links._repository_root(), ref.path), encoding="utf-8") as f:
                lines = f.read().splitlines()
            assert "\n".join(lines[ref.first - 1 : ref.last]) + "\n" == ref.source
            name = ref.name.rsplit(".", 1)[-1]
            assert f"def {name}(" in lines[ref.first - 1] or f"def {name}(" in ref.source.split("\n", 3)[-1], ref


def _record(server: str, model: str, **figures) -> dict:
    base = {
        "server": server,
        "model": model,
        "scenario": "small",
        "level_key": "c8",
        "skipped": {},
        "passes": {"syscalls": {"connections": 40}, "flamegraph": {"samples": 12, "requests_served": 100}},
        "cpu_us_per_request": {"user": 20.0, "system": 10.0},
        "context_switches_per_request": {"voluntary": 1.9, "involuntary": 0.1},
        "syscalls_per_request": {"futex": 3.0, "recvfrom": 1.0, "sendto": 1.0},
        "syscalls_total_per_request": 5.0,
        "threads_created": 40,
        "processes_created": 0,
        "threads_created_per_connection": 1.0,
        "processes_created_per_connection": 0.0,
        "threads_peak": 9,
        "processes_peak": 1,
        "processes_min": 1,
        "rss_per_idle_connection_bytes": 24000,
        "pss_per_idle_connection_bytes": 24000,
        "idle_memory": {"held": 50},
        "flamegraph": None,
    }
    return base | figures


def test_section_renders_table_chart_sentences_code_and_inline_flame_graphs(tmp_path):
    svg = '<?xml version="1.0"?><svg width="1200" height="300" onload="init(evt)"><script>var x="</iframe>";</script></svg>'
    (tmp_path / "t.svg").write_text(svg)
    records = [
        _record("threading", "threading", flamegraph="t.svg"),
        _record(
            "forking",
            "forking",
            threads_created=0,
            threads_created_per_connection=0.0,
            processes_created=40,
            processes_created_per_connection=1.0,
            threads_peak=9,
            processes_peak=9,
            syscalls_per_request=None,
            syscalls_total_per_request=None,
            skipped={"syscalls": "strace is not installed (Debian package strace)"},
        ),
    ]
    section = profile_report.build_section(records, str(tmp_path), "caption")
    html = str(profile_report.render_html(section))
    assert "Where the time goes" in html and "<table>" in html and "<svg" in html  # the chart
    assert html.count('sandbox="allow-scripts allow-same-origin"') == 1
    assert '</iframe>";' not in html  # the SVG travels base64-encoded, never as markup of the page
    assert "threading: 30 µs of CPU per request" in html and "1.00 threads created per connection" in html
    assert "forking:" in html and "1.00 processes created per connection" in html
    assert "Skipped syscalls: strace is not installed" in html
    blocking = code_links.code_for("threading")["io"]
    assert f'href="#{blocking.anchor}"' in html and f'id="{blocking.anchor}"' in html
    assert blocking.where in html
    md = profile_report.render_markdown(section)
    assert "## Where the time goes" in md and "| threading | 20.0 | 10.0 | 1.90 |" in md
    assert "[svg](t.svg)" in md and f"`{blocking.where}`" in md


def test_sentence_follows_the_figures():
    threaded = profile_report.explain(_record("threading", "threading"))
    assert threaded.startswith("threading: 30 µs of CPU per request, 33% of it in the kernel; 1.90 voluntary")
    assert "futex (3/request under strace)" in threaded
    loop = profile_report.explain(
        _record(
            "select",
            "select",
            context_switches_per_request={"voluntary": 0.01, "involuntary": 0.0},
            threads_created=0,
            threads_created_per_connection=0.0,
            threads_peak=1,
        )
    )
    assert "seldom sleeps" in loop and "no thread or process created for 40 connections" in loop


def test_run_without_profiles_has_no_section():
    assert str(profile_report.where_the_time_goes({"cells": []}, "html")) == ""
    assert profile_report.where_the_time_goes(None, "md") == ""


# -- the command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["select", "--scenario", "nope"], "unknown scenario 'nope'"),
        (["nginx"], "not a Python model"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(args, message, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "serverzoo", "profile", *args, "--json", str(tmp_path / "p.json")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not os.path.exists(tmp_path / "p.json")


def test_cli_writes_the_json_with_machine_and_command(suite_and_corpus, tmp_path):
    _, corpus, base = suite_and_corpus
    path = tmp_path / "p.json"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serverzoo",
            "profile",
            "select",
            "--scenario",
            "keepalive",
            "--scenarios-file",
            os.path.join(base, "scenarios.toml"),
            "--corpus",
            corpus,
            "--idle",
            "20",
            "--duration",
            "0.2",
            "--json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(path.read_text())
    for key in (
        "cpu_us_per_request",
        "syscalls_per_request",
        "context_switches_per_request",
        "processes_created",
        "threads_peak",
        "rss_per_idle_connection_bytes",
        "flamegraph",
        "machine",
        "command",
    ):
        assert key in doc
    assert doc["command"][:3] == ["serverzoo", "profile", "select"] and doc["machine"]["cpu_model"]
    if doc["flamegraph"]:
        assert (tmp_path / doc["flamegraph"]).is_file()
    else:
        assert "flamegraph" in doc["skipped"]
    assert "context switches per request" in out.stdout


def test_bench_profile_stores_profiles_and_reports_them(suite_and_corpus, tmp_path):
    """`serverzoo bench --profile`: the profiles follow the cells, go into the run's JSON and its report."""
    _, corpus, base = suite_and_corpus
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serverzoo",
            "bench",
            "--models",
            "select",
            "--scenarios",
            "keepalive",
            "--scenarios-file",
            os.path.join(base, "scenarios.toml"),
            "--corpus",
            corpus,
            "--out",
            str(tmp_path),
            "--profile",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    [run_path] = tmp_path.glob("bench-*.json")
    doc = json.loads(run_path.read_text())
    assert len(doc["cells"]) == 1 and doc["profile_errors"] == []
    [profile] = doc["profiles"]
    assert (profile["server"], profile["scenario"], profile["level"]) == ("select", "keepalive", 1)
    assert profile["passes"]["counters"]["requests_served"] > 0 and profile["context_switches_per_request"]
    assert "profile select/keepalive/c1:" in out.stderr
    html = run_path.with_suffix(".html").read_text()
    md = run_path.with_suffix(".md").read_text()
    assert 'id="where-the-time-goes"' in html and "## Where the time goes" in md
    if profile["flamegraph"]:
        assert (tmp_path / profile["flamegraph"]).is_file() and "<iframe" in html


@pytest.mark.parametrize(
    "stderr, tasks",
    [
        ("strace: Process 19004 attached with 33 threads\n", 33),  # -p on a threaded process: one line for all
        ("strace: Process 7 attached\nstrace: Process 9 attached\n", 2),
        ("strace: Process 7 attached with 3 threads\nstrace: Process 12 attached\n", 4),  # a thread born later
        ("strace: attach: ptrace(PTRACE_SEIZE, 7): Operation not permitted\n", 0),
        ("", 0),
    ],
)
def test_strace_attach_lines_count_every_task(stderr, tasks):
    assert syscall_counts.attached_tasks(stderr) == tasks
