"""`serverzoo report` and `serverzoo compare` on a stored, synthetic results fixture.

tests/fixtures/bench_run_fixture.json is made by tests/fixtures/make_bench_fixture.py:
invented numbers in the exact shape `serverzoo bench` writes (never a measurement).
Every figure checked here is recomputed from the fixture's cells independently of the
report code, so a table that misquotes the JSON fails.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import statistics
import subprocess
import sys

import pytest
from click.testing import CliRunner

from serverzoo.bench.cards import module_docstring
from serverzoo.bench.report import build_report, format_value, render
from serverzoo.cli import main

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bench_run_fixture.json")


@pytest.fixture(scope="module")
def run() -> dict:
    with open(FIXTURE) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def rendered(run, tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("report")
    html, md = str(folder / "r.html"), str(folder / "r.md")
    result = CliRunner().invoke(main, ["report", FIXTURE, "--html", html, "--md", md])
    assert result.exit_code == 0, result.output + result.stderr
    with open(html) as f, open(md) as g:
        return f.read(), g.read()


def cells_of(run: dict, server: str, scenario: str, level: int) -> list[dict]:
    return [c for c in run["cells"] if (c["server"], c["scenario"], c["level"]) == (server, scenario, level)]


def median_metric(run: dict, server: str, scenario: str, level: int) -> float:
    metric = run["config"]["scenarios"][scenario]["metric"]
    values = []
    for c in cells_of(run, server, scenario, level):
        load = c["load"]
        values.append(load["latency_us"]["p99"] if metric == "p99_us" else load[metric])
    return statistics.median(values)


def md_section_rows(md: str, title: str) -> dict[str, list[str]]:
    """server -> cells of its row in the Markdown table under '## title'."""
    part = md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in part.splitlines():
        if line.startswith("| ") and not line.startswith("| server") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_html_is_self_contained_with_every_chart_captioned(run, rendered):
    html, _ = rendered
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", html), "the report must not load anything"
    figures = re.findall(r"<figure>(.*?)</figure>", html, flags=re.S)
    scenarios = run["config"]["scenarios"]
    # per scenario: its main chart and its latency spectrum; then heat map, CPU efficiency, memory, errors
    assert len(figures) == 2 * len(scenarios) + 4
    for fig in figures:
        assert fig.lstrip().startswith("<svg"), fig[:80]
        caption = re.search(r"<figcaption>(.*?)</figcaption>", fig, flags=re.S).group(1)
        assert run["run_id"] in caption and "FIXTURE" in caption and "2000-01-01" in caption
        assert run["run_id"] in fig.split("<figcaption>")[0], "the chart image carries its own caption"
    for title in ("latency spectrum", "p99 against offered load", "CPU efficiency", "Memory per open connection",
                  "Heat map", "Errors by class"):
        assert title in html, title


def test_tables_quote_the_json(run, rendered):
    html, md = rendered
    for scenario, info in run["config"]["scenarios"].items():
        rows = md_section_rows(md, info["title"])
        for server in run["config"]["servers"]:
            if server not in rows:
                assert not any(c["server"] == server and c["scenario"] == scenario for c in run["cells"])
                continue
            for i, level in enumerate(info["levels"]):
                cells = cells_of(run, server, scenario, level)
                if not any(c["load"]["requests"] for c in cells):
                    assert rows[server][2 * i].startswith("- (") and "failed" in rows[server][2 * i], rows[server]
                    continue
                shown = format_value(info["metric"], median_metric(run, server, scenario, level))
                assert rows[server][2 * i].split(" (")[0] == shown, (server, scenario, level)
                assert shown in html


def test_spread_and_ratio_to_iterative_are_recomputed_from_cells(run, rendered):
    _, md = rendered
    rows = md_section_rows(md, "Small files, keep-alive")
    values = [c["load"]["rps"] for c in cells_of(run, "threading", "small-keepalive", 32)]
    spread = (max(values) - min(values)) / 2 / statistics.median(values)
    assert rows["threading"][3] == f"±{spread * 100:.1f}%"
    ratios = [median_metric(run, "asyncio", "small-keepalive", lv) / median_metric(run, "iterative", "small-keepalive", lv)
              for lv in (1, 32)]
    expected = math.exp(sum(map(math.log, ratios)) / 2)
    assert rows["asyncio"][-1] == f"{expected:.2f}x faster"
    # lower is better for a latency metric: iterative's p99 is far higher, so the others are "faster"
    wait = md_section_rows(md, "Backend-bound requests, open loop")
    assert wait["threading"][-1].endswith("x faster")
    summary = md.split("## Against iterative\n", 1)[1].split("\n## ", 1)[0]
    assert "| **geometric mean** |" in summary


def test_flags_are_shown_not_averaged_away(rendered):
    html, md = rendered
    flagged = md.split("## Flagged cells\n", 1)[1].split("\n## ", 1)[0]
    assert "| threading | small-keepalive | c=32 | unstable |" in flagged
    assert "| nginx | small-keepalive | c=32 | client-bound |" in flagged
    assert re.search(r"\| iterative \| idle-connections \| c=1 \| [^|]*failed", flagged)
    assert re.search(r"\| iterative \| wait-work \| 1000 req/s offered \| errors, stalled, fell-behind", flagged)
    assert 'class="flag unstable"' in html and 'class="flag client-bound"' in html


def test_which_model_section_is_derived_from_the_data(run):
    report = build_report([run], plots=False)
    verdicts = {v.scenario: v for v in report.verdicts}
    assert verdicts["small-keepalive"].winner[0] == "asyncio"
    assert verdicts["small-keepalive"].runner_up[0] == "threading"
    assert "iterative" in verdicts["idle-connections"].failed
    assert "iterative" in verdicts["wait-work"].degraded
    assert all(v.winner is None or v.winner[0] != "nginx" for v in verdicts.values()), "the yardstick never wins"
    # change the data, and the verdict follows it
    changed = copy.deepcopy(run)
    for c in changed["cells"]:
        if c["server"] == "threading" and c["scenario"] == "small-keepalive":
            c["load"]["rps"] *= 10
    text = render(build_report([changed], plots=False), "report.md.j2")
    row = next(line for line in text.splitlines() if line.startswith("| Small files, keep-alive |"))
    assert row.split("|")[2].strip().startswith("**threading**"), row


def test_model_cards_come_from_the_model_files_without_importing_them(rendered):
    html, md = rendered
    import serverzoo.servers as servers

    doc = module_docstring(os.path.join(os.path.dirname(servers.__file__), "threading_server.py"))
    first = doc.split("\n\n")[0].replace("\n", " ")
    assert first in md and first in html
    code = ("import sys; from serverzoo.bench.report import build_report, render; "
            "from serverzoo.bench.store import read_run; "
            f"r = build_report([read_run({FIXTURE!r})], plots=False); render(r, 'report.html.j2'); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('gevent', 'trio', 'uvloop')] + "
            "[m for m in sys.modules if m.startswith('serverzoo.servers.') and m.endswith('_server')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _variant(run: dict, factor: float, server: str = "threading", scenario: str = "small-keepalive",
             level: int = 1) -> dict:
    other = copy.deepcopy(run)
    other["run_id"] = f"fixture-run-x{factor}"
    for c in other["cells"]:
        if (c["server"], c["scenario"], c["level"]) == (server, scenario, level):
            c["load"]["rps"] *= factor
    return other


def _write(tmp_path, name: str, doc: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_delta_table_marks_changes_beyond_noise(run, tmp_path):
    slower = _write(tmp_path, "b.json", _variant(run, 0.7))
    md = str(tmp_path / "d.md")
    result = CliRunner().invoke(main, ["report", FIXTURE, slower, "--md", md])
    assert result.exit_code == 0, result.stderr
    text = open(md).read()
    section = text.split("## Changes from fixture-run-1 to fixture-run-x0.7\n", 1)[1]
    assert "1 regression(s), 0 improvement(s) beyond noise" in section
    assert re.search(r"\| threading \| small-keepalive \| 1 \| [^|]+ \| [^|]+ \| -30\.0% \| [^|]+ \| \*\*worse\*\* \|",
                     section)
    assert "within noise" in section


@pytest.mark.parametrize("factor, code, words", [
    (1.0, 0, "0 regression(s)"),
    (0.7, 1, "REGRESSION"),
    (1.5, 0, "improvement"),
    (0.97, 0, "0 regression(s)"),  # 3% is within the noise floor
])
def test_compare_exit_code_is_a_regression_gate(run, tmp_path, factor, code, words):
    after = _write(tmp_path, "after.json", _variant(run, factor))
    result = CliRunner().invoke(main, ["compare", FIXTURE, after])
    assert result.exit_code == code, result.output + result.stderr
    assert words in result.output


def test_compare_counts_a_newly_failing_cell_as_a_regression(run, tmp_path):
    broken = copy.deepcopy(run)
    for c in broken["cells"]:
        if c["server"] == "asyncio" and c["scenario"] == "large-stream":
            c["status"], c["error"], c["load"] = "failed", "server did not start: fixture", None
    result = CliRunner().invoke(main, ["compare", FIXTURE, _write(tmp_path, "broken.json", broken)])
    assert result.exit_code == 1
    assert "asyncio/large-stream/1: measured before, FAILS now" in result.output


def test_compare_and_report_reject_bad_input_in_one_line(run, tmp_path):
    other = copy.deepcopy(run)
    other["cells"] = []
    for args in (["compare", FIXTURE, str(tmp_path / "missing.json")],
                 ["compare", FIXTURE, _write(tmp_path, "empty.json", other)],
                 ["report", _write(tmp_path, "x.json", {"schema": "nope"})]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_flags_are_stored_in_the_run_summary(run):
    from serverzoo.bench.analysis import summarize

    rows = {(s["server"], s["scenario"], s["level"]): s for s in summarize(run)}
    assert "unstable" in rows[("threading", "small-keepalive", 32)]["flags"]
    assert "client-bound" in rows[("nginx", "small-keepalive", 32)]["flags"]
    assert "failed" in rows[("iterative", "idle-connections", 1)]["flags"]
    assert rows[("asyncio", "small-keepalive", 1)]["median"] == median_metric(run, "asyncio", "small-keepalive", 1)
