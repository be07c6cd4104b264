"""`serverzoo load` and `serverzoo corpus` from the command line; the result document and its schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest

from serverzoo.clients.loadgen import LoadOptions, run_load, schema_path
from serverzoo.clients.loadgen.corpus import load_manifest, write_corpus
from serverzoo.servers.launch import ServerProcess

from .load_helpers import run_cli


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("cli-corpus"))
    write_corpus(root, ["1KiB", "16KiB"])
    return root


@pytest.fixture(scope="module")
def server(corpus: str):
    with ServerProcess("threading", corpus, "--header-timeout", "0.5") as srv:
        yield srv


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    with open(schema_path()) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_closed_loop_document_validates(server, corpus: str, validator) -> None:
    doc = run_load(
        LoadOptions(
            url=server.url + "1KiB.bin",
            corpus=corpus,
            connections=4,
            duration=1.0,
            workers=1,
            warmup_s=0.3,
            server_pid=server.pid,
            percentiles=[75, 99.5],
        )
    )
    validator.validate(doc)
    assert doc["schema"] == "serverzoo.load/1" and doc["mode"] == "closed"
    assert doc["target_rate"] is None and doc["achieved_rate"] is None
    assert doc["options"]["connections"] == 4 and doc["options"]["workers_resolved"] == 1
    assert doc["machine"]["python"] == sys.version.split()[0]
    assert 0.9 < doc["elapsed_s"] < 1.5, "measured time, not the nominal one, and the warm-up excluded"
    assert doc["warmup"]["requests"] > 0 and doc["requests"] > 0
    assert doc["rps"] == pytest.approx(doc["requests"] / doc["elapsed_s"], rel=1e-3)
    assert doc["server"]["pid"] == server.pid and doc["server"]["cpu_s"] > 0
    assert doc["server"]["peak_rss_bytes"] > 1_000_000 and doc["server"]["samples"]
    assert "p75" in doc["latency_us"] and "p99.5" in doc["latency_us"]
    assert doc["latency_us"]["p50"] <= doc["latency_us"]["p99"] <= doc["latency_us"]["max"]
    assert 1 <= len(doc["timeline"]) <= 2 and sum(t["requests"] for t in doc["timeline"]) == doc["requests"]


def test_open_loop_document_validates(server, corpus: str, validator) -> None:
    doc = run_load(
        LoadOptions(
            url=server.url, corpus=corpus, zipf=1.1, connections=4, rate=200, duration=1.0, workers=2, ramp_up_s=0.2
        )
    )
    validator.validate(doc)
    assert doc["mode"] == "open" and doc["target_rate"] == 200
    assert doc["achieved_rate"] == pytest.approx(200, rel=0.15)
    assert doc["ramp_up"]["requests"] > 0


def test_cli_json_to_stdout_validates(server, corpus: str, validator, tmp_path) -> None:
    out = run_cli("load", server.url + "16KiB.bin", "--corpus", corpus, "-c", "2", "-n", "50", "-w", "1", "--json", "-")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    validator.validate(doc)
    assert doc["requests"] == 50
    assert "Requests/sec:" in out.stderr and "50 requests in" in out.stderr
    path = tmp_path / "run.json"
    out = run_cli("load", server.url + "16KiB.bin", "-c", "2", "-n", "20", "-w", "1", "--json", str(path))
    assert out.returncode == 0 and "Requests/sec:" in out.stdout
    validator.validate(json.loads(path.read_text()))


def test_cli_summary_says_errors_loudly_and_exits_1(server) -> None:
    out = run_cli("load", server.url + "nothing-here", "-c", "1", "-n", "3", "-w", "1")
    assert out.returncode == 1
    assert "ERRORS: 3 requests failed (bad_status 3)" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["-R", "1", "-w", "2", "-c", "4"], "--rate 1 is below --workers 2"),
        (["-d", "0"], "--duration must be positive"),
        (["-d", "1", "-n", "10"], "give --duration or --requests, not both"),
        (["-c", "1", "-w", "2"], "--connections 1 is below --workers 2"),
        (["-R", "100", "--conn-mode", "pipeline"], "pipelining is a closed-loop setting"),
        (["--depth", "4"], "--depth applies to --conn-mode pipeline"),
        (["-n", "3", "-c", "10"], "--requests 3 is below --connections 10"),
        (["--zipf", "1"], "--zipf ranks the files of a corpus"),
        (["--corpus", "/nonexistent-dir"], "no corpus manifest"),
        (["--cpus", "999"], "--cpus 999 not available"),
    ],
)
def test_meaningless_settings_are_refused_in_one_line(args: list[str], message: str) -> None:
    out = run_cli("load", "http://127.0.0.1:9/x", *args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_bad_urls_are_refused() -> None:
    for url, message in [("https://127.0.0.1/", "https is not supported"), ("ftp://x/", "not an http:// URL")]:
        out = run_cli("load", url, "-n", "10")
        assert out.returncode == 2 and message in out.stderr


def test_corpus_is_reproducible_and_checked(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        out = run_cli("corpus", str(d), "--size", "1KiB", "--size", "3000*3", "--seed", "5")
        assert out.returncode == 0, out.stderr
    ma, mb = load_manifest(str(a)), load_manifest(str(b))
    assert [f.name for f in ma] == ["1KiB.bin", "3000B-0001.bin", "3000B-0002.bin", "3000B-0003.bin"]
    assert [(f.size, f.sha256) for f in ma] == [(f.size, f.sha256) for f in mb]
    assert len({f.sha256 for f in ma}) == 4  # every file has its own bytes
    assert oct(os.stat(a).st_mode & 0o777) == "0o755"
    assert run_cli("corpus", str(a), "--check").returncode == 0
    with open(a / "3000B-0002.bin", "r+b") as f:
        f.seek(100)
        f.write(b"X")
    out = run_cli("corpus", str(a), "--check")
    assert out.returncode == 1 and "3000B-0002.bin" in out.stderr
    other = run_cli("corpus", str(tmp_path / "c"), "--size", "1KiB", "--seed", "6")
    assert other.returncode == 0
    assert load_manifest(str(tmp_path / "c")).files[0].sha256 != ma.files[0].sha256
    bad = run_cli("corpus", str(tmp_path / "d"), "--size", "lots")
    assert bad.returncode == 2 and "not a size" in bad.stderr


def test_python_http_server_is_driven(tmp_path, corpus: str) -> None:
    """The standard library's http.server answers HTTP/1.0 and closes: we reconnect and verify."""
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", corpus],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
        port = int(line.split(" port ")[1].split()[0])
        doc = run_load(
            LoadOptions(url=f"http://127.0.0.1:{port}/16KiB.bin", corpus=corpus, connections=2, requests=40, workers=1)
        )
    finally:
        proc.terminate()
        proc.wait(10)
    assert doc["requests"] == 40 and doc["errors"]["total"] == 0


def test_think_time_paces_the_closed_loop(server, corpus: str) -> None:
    doc = run_load(
        LoadOptions(url=server.url + "1KiB.bin", corpus=corpus, connections=2, duration=1.0, workers=1, think_s=0.05)
    )
    # each connection sends at most one request per 50 ms of thinking: about 40 in a second
    assert 20 <= doc["requests"] <= 42 and doc["errors"]["total"] == 0


def test_timeline_slices_follow_the_interval_and_the_cgroup_counts_the_server(
    server, corpus: str, validator, tmp_path
) -> None:
    from serverzoo.bench.cgroups import CgroupPlacer

    placer = CgroupPlacer()
    cgroup = placer.new()
    if cgroup is None:
        pytest.skip(f"no cgroup v2 here: {placer.why_not}")
    try:
        assert cgroup.adopt(server.pid) >= 1
        doc = run_load(
            LoadOptions(
                url=server.url + "1KiB.bin",
                corpus=corpus,
                connections=2,
                duration=0.6,
                workers=2,
                timeline_interval_s=0.1,
                server_pid=server.pid,
                server_cgroup=cgroup.path,
            )
        )
    finally:
        # the module's server lives on: move it back out before the cgroup goes
        with open(os.path.join(os.path.dirname(cgroup.path), "cgroup.procs"), "w") as f:
            f.write(str(server.pid))
        assert cgroup.remove() is None
    assert not os.path.exists(cgroup.path)
    validator.validate(doc)
    # Slices close on timers scheduled every 0.1 s on the window's clock; a timer may fire late on a
    # busy machine (that slice is longer, the next shorter), and each slice's rate is its own requests
    # over its own measured length. Two workers' slices merge into one: it ends at the later end and
    # begins at the earlier start. So: one slice per boundary that fired in the window plus the last,
    # in order, each reaching back at least to the previous end, the last at the window's end, and
    # every request in exactly one slice. No boundary is timed with the window's end (0.6 s), so each
    # worker has at most 6 slices, and the merged slices of one index cover the same boundary.
    timeline = doc["timeline"]
    assert 2 <= len(timeline) <= 6, timeline
    for prev_end, t in zip([0.0] + [x["t"] for x in timeline], timeline):
        assert t["t"] > prev_end and t["dt"] >= t["t"] - prev_end - 0.002, timeline
    # one instant ends a worker's window and its last slice: equal up to the slice's rounding to 1 ms
    assert timeline[-1]["t"] == pytest.approx(doc["elapsed_s"], abs=0.0005), (timeline, doc["elapsed_s"])
    assert sum(t["requests"] for t in timeline) == doc["requests"]
    assert doc["server"]["cpu_source"] == "cgroup" and doc["server"]["cpu_s"] > 0


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--timeline-interval", "1ms"], "--timeline-interval must be at least"),
        (["--reconnect-after", "0"], "--reconnect-after must be at least 1"),
        (["--reconnect-after", "5", "--conn-mode", "new"], "--reconnect-after applies to the closed keep-alive loop"),
        (["--server-cgroup", "/tmp"], "not a cgroup v2 directory"),
    ],
)
def test_bad_slice_reconnect_and_cgroup_options_are_one_line_errors(args, fragment) -> None:
    result = run_cli("load", "http://127.0.0.1:9/x", "-d", "1", *args)
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "kind, text, value",
    [
        ("DURATION", "500ms", 0.5),
        ("DURATION", 3, 3.0),  # a default, already a number
        ("CPUS", "2-3", [2, 3]),
        ("CPUS", [1], [1]),
        ("SIZE", "1KiB", 1024.0),
        ("SIZE", "2048", 2048.0),  # a plain number of bytes, as the benchmark runner writes it
    ],
)
def test_option_types_read_text_and_pass_parsed_values(kind: str, text, value) -> None:
    from serverzoo.clients.loadgen import load_cli

    assert getattr(load_cli, kind).convert(text, None, None) == value


@pytest.mark.parametrize(
    "kind, text, message",
    [("DURATION", "3x", "not a duration"), ("CPUS", "a-b", "not a CPU list"), ("SIZE", "12Q", "not a size")],
)
def test_option_types_reject_bad_text_with_the_parsers_message(kind: str, text: str, message: str) -> None:
    import click

    from serverzoo.clients.loadgen import load_cli

    with pytest.raises(click.BadParameter, match=message):
        getattr(load_cli, kind).convert(text, None, None)
