"""The report's "TCP vs UDP" section, from a real `serverzoo udp compare` run.

Once per module, a short real run (loopback, the bare veth link, and a link name that
does not exist, so one place is "not built" with a real reason) writes its JSON, HTML
and Markdown. Every figure checked in the section is recomputed here from that JSON,
not through the report code, so a section that misquotes the measurement fails.
"""

from __future__ import annotations

import copy
import fcntl
import html
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from click.testing import CliRunner
from markupsafe import escape

from serverzoo.bench.report import build_any, render
from serverzoo.bench.store import read_result
from serverzoo.bench.tcp_vs_udp import build_section
from serverzoo.cli import main

from .links_helpers import needs_root_and_iproute2

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bench_run_fixture.json")  # see test_report.py
PY = [sys.executable, "-m", "serverzoo"]
NO_SUCH_LINK = "no-such-link"


@pytest.fixture(scope="module")
def compared(tmp_path_factory, worker_id) -> dict:
    # one real run for all xdist workers: the first to take the lock measures, the others read its files
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    folder = shared / "udp-compare-report"
    paths = {k: str(folder / f"compare.{k}") for k in ("json", "html", "md", "stdout")}
    with open(shared / "udp-compare-report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(paths["stdout"]):
            folder.mkdir(exist_ok=True)
            # the smallest settings it takes: a one-rate sweep, 0.3 s parts
            done = subprocess.run(
                [
                    *PY,
                    "udp",
                    "compare",
                    "--links",
                    f"veth,{NO_SUCH_LINK}",
                    "--time",
                    "0.3",
                    "--step-time",
                    "0.2",
                    "--sweep-from",
                    "4M",
                    "--sweep-to",
                    "4M",
                    "--count",
                    "50",
                    "--cpus",
                    "",
                    "--json",
                    paths["json"],
                ],
                capture_output=True,
                text=True,
                timeout=50,
            )
            assert done.returncode == 0, done.stderr
            rendered = subprocess.run(
                [*PY, "report", paths["json"], "--html", paths["html"], "--md", paths["md"]],
                capture_output=True,
                text=True,
                timeout=50,
            )
            assert rendered.returncode == 0, rendered.stderr
            with open(paths["stdout"] + ".part", "w") as f:
                f.write(done.stdout)
            os.replace(paths["stdout"] + ".part", paths["stdout"])
    texts = {}
    for key in ("json", "html", "md", "stdout"):
        with open(paths[key]) as f:
            texts[key] = f.read()
    return {
        **paths,
        "doc": json.loads(texts["json"]),
        "stdout": texts["stdout"],
        "html_text": texts["html"],
        "md_text": texts["md"],
    }


def esc(text: str) -> str:
    """As the HTML report escapes text (jinja's autoescape)."""
    return str(escape(text))


def measured(doc: dict) -> list[dict]:
    return [p for p in doc["places"] if "unavailable" not in p]


def mbit(bps: float) -> str:
    return f"{bps / 1e6:.0f}" if bps >= 10e6 else f"{bps / 1e6:.1f}"


def md_rows(md: str) -> dict[str, list[str]]:
    """path -> cells, from the TCP-vs-UDP table of a Markdown report."""
    part = md.split("## TCP vs UDP\n", 1)[1]
    rows = {}
    for line in part.splitlines():
        if line.startswith("| ") and not line.startswith("| path") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def html_rows(page: str) -> dict[str, list[str]]:
    table = re.search(r'<table class="tcp-vs-udp">(.*?)</table>', page, flags=re.DOTALL).group(1)
    rows = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1], flags=re.DOTALL):
        cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", tr, flags=re.DOTALL)]
        rows[cells[0]] = cells[1:]
    return rows


def test_compare_writes_both_formats_with_the_section(compared):
    doc, page, md = compared["doc"], compared["html_text"], compared["md_text"]
    assert doc["schema"] == "serverzoo.udp-compare/1" and doc["command"][:3] == ["serverzoo", "udp", "compare"]
    assert md.startswith("# serverzoo report: TCP vs UDP") and "\n## TCP vs UDP\n" in md
    assert '<h2 id="tcp-vs-udp">TCP vs UDP</h2>' in page
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page), "the report must not load anything"
    figures = re.findall(r"<figure>(.*?)</figure>", page, flags=re.DOTALL)
    assert len(figures) == 2  # rates, round trips
    when = f"{doc['machine']['date'][:10]} {doc['machine']['date'][11:16]} UTC"
    for fig in figures:  # each chart says where its numbers come from
        assert fig.lstrip().startswith("<svg") and f"udp compare {when} | {doc['machine']['hostname']}:" in fig
    # the machine, the date and the command line of the measurement
    assert doc["machine"]["date"] in page and doc["machine"]["git_commit"][:12] in md
    assert shlex.join(doc["command"]) in md and esc(shlex.join(doc["command"])) in page


def test_the_section_table_is_the_one_udp_compare_prints(compared):
    printed = compared["stdout"].strip()
    assert printed.startswith("| path |")
    assert printed in compared["md_text"]


def test_numbers_in_the_section_match_the_json(compared):
    doc = compared["doc"]
    assert measured(doc) and measured(doc)[0]["place"] == "loopback"
    for rows in (md_rows(compared["md_text"]), html_rows(compared["html_text"])):
        assert set(rows) == {p["place"] for p in doc["places"]}
        for p in measured(doc):
            rx, tcp = p["udp_stream"]["receiver"], p["tcp_stream"]
            udp_cell, clean_cell, tcp_cell, rtt_cell = rows[p["place"]]
            assert udp_cell.startswith(
                f"{mbit(rx['throughput_bps'])} Mbit/s, {rx['loss_percent']:.2f}% lost, {rx['jitter_ms']:.3f} ms"
            )
            clean = p["udp_sweep"]["summary"]["max_clean_bps"]
            assert clean_cell.startswith(f"{mbit(clean)} Mbit/s" if clean else "lossy from the first rate")
            assert (
                tcp_cell == f"{mbit(tcp['sender']['goodput_bps'])} Mbit/s, "
                f"{'yes' if tcp['receiver']['complete'] else 'NO'}"
            )
            for r, cell in zip(p["roundtrip"]["results"], rtt_cell.split(" · ")):
                assert cell.startswith(f"{r['rtt_ms']['p50']:.3f} / {r['rtt_ms']['p99']:.3f}")


def test_verdict_lines_quote_the_measurement(compared):
    doc, md = compared["doc"], compared["md_text"]
    for p in measured(doc):
        line = next(x for x in md.splitlines() if x.startswith(f"- **{p['place']}**: "))
        rx, tcp = p["udp_stream"]["receiver"], p["tcp_stream"]
        if rx["lost"]:
            assert f"UDP lost {rx['loss_percent']:.2f}% of its datagrams ({rx['lost']:,} of {rx['expected']:,})" in line
        else:
            assert f"UDP delivered all {rx['expected']:,} datagrams" in line
        assert tcp["receiver"]["complete"] is True  # loopback and a bare veth lose nothing
        assert f"TCP delivered every byte, at {mbit(tcp['sender']['goodput_bps'])} Mbit/s" in line
        rtt = {r["connection"]: r["rtt_ms"]["p50"] for r in p["roundtrip"]["results"]}
        handshake = rtt["fresh"] - rtt["keep-alive"]
        assert (
            f"the handshake adds {handshake:.3f} ms"
            if 0 <= handshake < 10
            # a lost SYN: 1 s
            else "the handshake adds "
            if handshake >= 0
            else "was no slower than"
        ) in line
        assert esc(line[len(f"- **{p['place']}**: ") :]) in compared["html_text"]


def test_a_link_that_could_not_be_built_shows_its_reason(compared):
    doc, page, md = compared["doc"], compared["html_text"], compared["md_text"]
    missing = [p for p in doc["places"] if "unavailable" in p]
    assert f"link {NO_SUCH_LINK}" in [p["place"] for p in missing]
    for p in missing:
        assert NO_SUCH_LINK not in p["place"] or "no link named" in p["unavailable"]
        assert f"- {p['place']}: **not built here**: {p['unavailable']}" in md
        assert f"<b>not built here</b>: {esc(p['unavailable'])}" in page
        assert md_rows(md)[p["place"]][0].startswith("not measured: ")


@needs_root_and_iproute2
def test_a_measured_link_shows_what_it_was_built_with(compared):
    doc, page, md = compared["doc"], compared["html_text"], compared["md_text"]
    veth = next(p for p in doc["places"] if p["place"] == "link veth")
    assert "unavailable" not in veth, veth.get("unavailable")
    line = next(x for x in md.splitlines() if x.startswith("- link veth: "))
    assert veth["link"]["profile"]["description"] in line
    for applied in veth["link"]["applied"]:
        assert applied in line and f"<li>{esc(applied)}</li>" in page


def test_report_from_udp_compare_alone_and_mixed_with_a_bench_run(compared, tmp_path):
    runner = CliRunner()
    alone = runner.invoke(main, ["report", compared["json"], "--md", str(tmp_path / "alone.md")])
    assert alone.exit_code == 0, alone.stderr
    assert (tmp_path / "alone.md").read_text() == compared["md_text"]
    for order in ([compared["json"], FIXTURE], [FIXTURE, compared["json"]]):
        md = str(tmp_path / "mixed.md")
        result = runner.invoke(main, ["report", *order, "--md", md])
        assert result.exit_code == 0, result.stderr
        text = open(md).read()
        assert text.startswith("# serverzoo benchmark report: fixture-run-1")
        assert "\n## TCP vs UDP\n" in text and compared["stdout"].strip() in text
        assert text.index("## TCP vs UDP") < text.index("## How each model works")
    # the HTML page of both, without charts: the bench fixture's take seconds, and the section's are checked above
    page = render(build_any([read_result(FIXTURE), read_result(compared["json"])], plots=False), "report.html.j2")
    assert '<h2 id="tcp-vs-udp">TCP vs UDP</h2>' in page and "serverzoo benchmark report" in page
    assert html_rows(page) == html_rows(compared["html_text"])


def test_verdicts_follow_the_data(compared):
    """The same real run with two figures changed: the lines say what the changed figures say."""
    doc = copy.deepcopy(compared["doc"])
    place = doc["places"][0]
    rx = place["udp_stream"]["receiver"]
    rx["lost"], rx["loss_percent"] = 7, 100 * 7 / rx["expected"]
    place["tcp_stream"]["receiver"]["complete"] = False
    place["tcp_stream"]["receiver"]["bytes"] = place["tcp_stream"]["sender"]["bytes"] - 1
    section = build_section(doc, plots=False)
    lines = " ".join(dict(section.verdicts)["loopback"])
    assert f"UDP lost {rx['loss_percent']:.2f}% of its datagrams (7 of {rx['expected']:,})" in lines
    assert f"TCP did NOT deliver every byte ({place['tcp_stream']['sender']['bytes'] - 1:,} of " in lines
    assert section.rows[0][3].endswith(", NO")


def test_bad_files_give_one_line_and_exit_2(compared, tmp_path):
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\xff\xfe not json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"schema": "serverzoo.nothing/9"}))
    udp_test = tmp_path / "udp-test.json"
    udp_test.write_text(json.dumps({"schema": "serverzoo.udp/1", "results": []}))
    torn = dict(compared["doc"])
    torn["places"] = [{k: v for k, v in p.items() if k != "roundtrip"} for p in torn["places"]]
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps(torn))
    out = str(tmp_path / "r.md")
    for bad, words in (
        (garbage, "not JSON"),
        (unknown, "neither a serverzoo bench run nor a udp-compare result"),
        (udp_test, "'serverzoo.udp/1'"),
        (incomplete, "has no roundtrip"),
        (tmp_path / "missing.json", "no such file"),
    ):
        for args in (["report", str(bad)], ["report", compared["json"], str(bad), "--md", out]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 2, result.output
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "r.md").exists()


def test_compare_refuses_an_unwritable_json_path_before_measuring(tmp_path):
    done = subprocess.run(
        [*PY, "udp", "compare", "--links", "", "--json", str(tmp_path / "no" / "such" / "r.json")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--json" in done.stderr and "no folder" in done.stderr and "Traceback" not in done.stderr
