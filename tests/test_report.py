"""`serverzoo report` and `serverzoo compare` on a stored, synthetic results fixture.

tests/fixtures/bench_run_fixture.json is made by tests/fixtures/make_bench_fixture.py:
invented numbers in the exact shape `serverzoo bench` writes (never a measurement).
Every figure checked here is recomputed from the fixture's cells independently of the
report code, so a table that misquotes the JSON fails.
"""

from __future__ import annotations

import copy
import json
import os
import re
import statistics
import subprocess
import sys

import pytest
from click.testing import CliRunner

from serverzoo.bench import uncertainty as u
from serverzoo.bench.cards import module_docstring
from serverzoo.bench.report import build_report, format_value, render
from serverzoo.bench.results import Run
from serverzoo.bench.results import check_run as validate
from serverzoo.bench.verdicts import run_verdicts
from serverzoo.cli import main
from serverzoo.clients.loadgen.latency import decode

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


def md_section_rows(md: str, title: str, table: int = 0) -> dict[str, list[str]]:
    """server -> cells of its row in the first Markdown table under '## title' (or the table-th one)."""
    part = md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    tables = re.findall(r"(?:^\|.*\n?)+", part, flags=re.MULTILINE)
    rows = {}
    for line in tables[table].splitlines():
        if line.startswith("| ") and not line.startswith("| server") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_html_is_self_contained_with_every_chart_captioned(run, rendered):
    html, _ = rendered
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", html), "the report must not load anything"
    figures = re.findall(r"<figure>(.*?)</figure>", html, flags=re.DOTALL)
    scenarios = run["config"]["scenarios"]
    # per scenario: its main chart and its latency spectrum; then heat map, CPU efficiency, memory, errors
    assert len(figures) == 2 * len(scenarios) + 4
    for fig in figures:
        assert fig.lstrip().startswith("<svg"), fig[:80]
        caption = re.search(r"<figcaption>(.*?)</figcaption>", fig, flags=re.DOTALL).group(1)
        assert run["run_id"] in caption and "FIXTURE" in caption and "2000-01-01" in caption
        assert run["run_id"] in fig.split("<figcaption>")[0], "the chart image carries its own caption"
    for title in (
        "latency spectrum",
        "p99 against offered load",
        "CPU efficiency",
        "Memory per open connection",
        "Heat map",
        "Errors by class",
    ):
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
                    assert rows[server][3 * i].startswith("- (") and "failed" in rows[server][3 * i], rows[server]
                    continue
                shown = format_value(info["metric"], median_metric(run, server, scenario, level))
                assert rows[server][3 * i].split(" (")[0] == shown, (server, scenario, level)
                assert shown in html
                # every latency figure says how many responses it comes from, and a p99 needs 100 of them
                responses = sum(decode(c["load"]["histogram"]).get_total_count() for c in cells)
                p99 = rows[server][3 * i + 2]
                assert p99.endswith(f"(n={responses:,})"), (server, scenario, level, p99)
                assert p99.startswith("- (") == (responses < 100), p99


def test_interval_and_ratio_to_a_healthy_baseline_are_recomputed_from_cells(run, rendered):
    _, md = rendered
    rows = md_section_rows(md, "Small files, keep-alive")
    values = [c["load"]["rps"] for c in cells_of(run, "threading", "small-keepalive", 32)]
    half_width = u.from_samples(values).half_width / statistics.fmean(values)
    assert rows["threading"][4] == f"±{half_width * 100:.1f}% (3 reps)"
    # nginx is client-bound at c=32 and threading unstable there: neither may be the baseline; of the healthy
    # models (iterative, asyncio) the median is the lower one, iterative
    assert rows["iterative"][-1] == "baseline"
    ratio = median_metric(run, "asyncio", "small-keepalive", 32) / median_metric(
        run, "iterative", "small-keepalive", 32
    )
    assert rows["asyncio"][-1] == f"{ratio:.2f}x faster"
    # lower is better for a latency metric; iterative fails the idle scenario, so nginx (healthy there) is its baseline
    wait = md_section_rows(md, "Backend-bound requests, open loop")
    assert wait["iterative"][-1].endswith("x slower")
    idle = md_section_rows(md, "Many idle connections held open")
    assert idle["nginx"][-1] == "baseline" and idle["iterative"][-1] == "n/a"


def test_flags_are_shown_not_averaged_away(rendered):
    html, md = rendered
    flagged = md.split("## Flagged cells\n", 1)[1].split("\n## ", 1)[0]
    assert "| threading | small-keepalive | c=32 | unstable |" in flagged
    assert "| nginx | small-keepalive | c=32 | client-bound |" in flagged
    assert re.search(r"\| iterative \| idle-connections \| c=1 \| [^|]*failed", flagged)
    assert re.search(r"\| iterative \| wait-work \| 1000 req/s offered \| errors, stalled, fell-behind", flagged)
    assert 'class="flag unstable"' in html and 'class="flag client-bound"' in html


def test_which_model_section_is_derived_from_the_data(run):
    report = build_report([Run.from_doc(run)], plots=False)
    verdicts = {v.scenario: v for v in report.verdicts}
    small = verdicts["small-keepalive"]
    assert (small.kind, small.winner, small.level) == ("winner", "asyncio", 32)
    assert small.ranking[1].server == "threading" and small.margin > small.noise
    assert ("iterative", "failed: 48 requests timed out") in verdicts["idle-connections"].excluded
    assert dict(verdicts["wait-work"].excluded)["iterative"].startswith("degraded:")
    assert all("nginx" not in (v.winner, *v.tie) for v in verdicts.values()), "the yardstick never wins"
    # change the data, and the verdict follows it
    changed = copy.deepcopy(run)
    for c in changed["cells"]:
        if c["server"] == "threading" and c["scenario"] == "small-keepalive":
            c["load"]["rps"] *= 10
    text = render(build_report([Run.from_doc(changed)], plots=False), "report.md.j2")
    row = next(line for line in text.splitlines() if line.startswith("| Small files, keep-alive |"))
    assert row.split("|")[2].strip() == "**threading**", row
    # the same figures without their timeline slices and with one repetition: nothing measured the noise
    single = copy.deepcopy(run)
    single["cells"] = [c for c in single["cells"] if c["repetition"] == 1]
    for c in single["cells"]:
        if c["load"]:
            c["load"]["timeline"] = c["load"]["timeline"][:1]
    report = build_report([Run.from_doc(single)], plots=False)
    assert {v.kind for v in report.verdicts} <= {"tie", "none", "winner"}
    assert all(v.winner is None or v.margin is None for v in report.verdicts), "one sample separated two models"
    assert len(report.unseparated) >= 3
    assert "Too short to separate models" in render(report, "report.html.j2")


def test_report_renders_the_verdicts_stored_in_the_run(run, tmp_path):
    stored = copy.deepcopy(run)
    stored["verdicts"] = run_verdicts(stored)
    validate(stored)  # what the runner stores passes the run schema
    stored["verdicts"][0]["text"] = "a verdict text only the stored copy has"
    md = str(tmp_path / "r.md")
    result = CliRunner().invoke(main, ["report", _write(tmp_path, "stored.json", stored), "--md", md])
    assert result.exit_code == 0, result.stderr
    assert "a verdict text only the stored copy has" in open(md).read()


def test_model_cards_come_from_the_model_files_without_importing_them(rendered):
    html, md = rendered
    from serverzoo import servers

    doc = module_docstring(os.path.join(os.path.dirname(servers.__file__), "threading_server.py"))
    first = doc.split("\n\n")[0].replace("\n", " ")
    assert first in md and first in html
    code = (
        "import sys; from serverzoo.bench.report import build_report, render; "
        "from serverzoo.bench.store import load_run; "
        f"r = build_report([load_run({FIXTURE!r})], plots=False); render(r, 'report.html.j2'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('gevent', 'trio', 'uvloop')] + "
        "[m for m in sys.modules if m.startswith('serverzoo.servers.') and m.endswith('_server')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _variant(
    run: dict, factor: float, server: str = "threading", scenario: str = "small-keepalive", level: int = 1
) -> dict:
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
    assert re.search(
        r"\| threading \| small-keepalive \| 1 \| [^|]+ \| [^|]+ \| -30\.0% \| [^|]+ \| \*\*worse\*\* \|", section
    )
    assert "within noise" in section


@pytest.mark.parametrize(
    "factor, code, words",
    [
        (1.0, 0, "0 regression(s)"),
        (0.7, 1, "REGRESSION"),
        (1.5, 0, "improvement"),
        (0.97, 0, "0 regression(s)"),  # 3% is within the noise floor
    ],
)
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
    for args in (
        ["compare", FIXTURE, str(tmp_path / "missing.json")],
        ["compare", FIXTURE, _write(tmp_path, "empty.json", other)],
        ["report", _write(tmp_path, "x.json", {"schema": "nope"})],
    ):
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


def test_compare_claims_nothing_where_the_noise_between_server_starts_was_not_measured(run, tmp_path):
    one = copy.deepcopy(run)
    one["cells"] = [c for c in one["cells"] if c["repetition"] == 1]  # a quick run: one repetition per cell
    slower = _variant(one, 0.7)
    result = CliRunner().invoke(
        main, ["compare", _write(tmp_path, "a.json", one), _write(tmp_path, "b.json", slower), "--all"]
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert "threading/small-keepalive/1:" in result.output and "-30.0%" in result.output
    assert "unmeasured" in result.output and "REGRESSION" not in result.output
    assert "0 regression(s)" in result.output


def test_a_run_that_does_not_match_the_schema_is_one_line(run, tmp_path):
    bad = copy.deepcopy(run)
    bad["cells"][3]["load"]["requests"] = "many"
    for command in ("report", "compare"):
        args = [command, _write(tmp_path, "bad.json", bad)] + ([FIXTURE] if command == "compare" else [])
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        line = result.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert "bad.json: not a valid bench run at cells/3/load/requests: 'many' is not of type 'integer'" in line


def test_each_scenario_says_where_server_and_generator_ran(run):
    placed = copy.deepcopy(run)
    for c in placed["cells"]:
        if c["scenario"] == "large-stream":
            c["server_process"]["cpus"], c["generator"]["cpus"] = [0, 1], [1]
            c["placement"] = {"name": "server-all", "text": "the server on every CPU; the load generator shares one"}
    md = render(build_report([Run.from_doc(placed)], plots=False), "report.md.j2")
    large = md.split("## Large-file streaming\n", 1)[1].split("\n## ", 1)[0]
    assert (
        "CPU placement: the server on every CPU; the load generator shares one (server on CPU 0,1, load "
        "generator on CPU 1)"
    ) in large
    small = md.split("## Small files, keep-alive\n", 1)[1].split("\n## ", 1)[0]
    assert "CPU placement: server on CPU 0, load generator on CPU 1." in small


def test_a_p99_from_too_few_responses_is_neither_shown_nor_compared(run):
    from serverzoo.clients.loadgen.latency import encode, histogram_of

    starved = copy.deepcopy(run)
    for c in starved["cells"]:
        if (c["server"], c["scenario"], c["level"]) == ("iterative", "wait-work", 1000):
            c["load"]["histogram"] = encode(histogram_of([4_000_000] * 10))  # 10 responses per repetition
    md = render(build_report([Run.from_doc(starved)], plots=False), "report.md.j2")
    row = md_section_rows(md, "Backend-bound requests, open loop")["iterative"]
    assert row[3].startswith("- (n=30) (") and row[4:6] == ["-", "- (n=30)"] and row[-1] == "n/a", row


def test_model_cards_are_markdown_without_figures_or_outside_references():
    import re as _re

    from serverzoo.bench.cards import model_cards
    from serverzoo.bench.scenarios import ServerSpec
    from serverzoo.servers import MODELS, resolve, server_names

    specs = {v.name: ServerSpec(v.name, v.model.name, v.args) for v in map(resolve, server_names())}
    cards = {c.server: c for c in model_cards(specs)}
    for card in cards.values():
        text = card.html
        assert "How it works" in text or card.model not in MODELS, card.server
        for bad in ("ANCHORS", "STYLE.md", "shared/", "../", "GB/s", "MB/s", "req/s", "requests/s", "2026-"):
            assert bad not in text, (card.server, bad)
        assert not _re.search(r"\d\s*ms\b", text), card.server
    assert "<code>threading</code>" in cards["threadpool"].html  # Markdown, rendered
    assert "standard library's asyncio event loop" in cards["asyncio"].ran_on
    assert cards["asyncio-uvloop"].ran_on.startswith("uvloop") and not cards["threading"].ran_on


def test_idle_cost_pairs_each_repetition_with_its_run_without_idle(run, tmp_path):
    """A cell of the idle scenario carries the same active load run first without the idle set;
    the report shows both p99s (medians over the same repetitions) and their ratio."""
    doc = copy.deepcopy(run)
    made_up = {1: [400.0, 500.0, 450.0], 16: [900.0, 800.0, 1000.0]}  # asyncio's p99 without idle, by repetition
    for c in doc["cells"]:
        if (c["server"], c["scenario"]) == ("asyncio", "idle-connections"):
            without = copy.deepcopy(c["load"])
            without["latency_us"]["p99"] = made_up[c["level"]][c["repetition"] - 1]
            c["load_without_idle"] = without
    validate(doc)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    md_path = tmp_path / "r.md"
    result = CliRunner().invoke(main, ["report", str(path), "--md", str(md_path), "--html", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    costs = md_section_rows(md_path.read_text(), "Many idle connections held open", table=1)
    assert set(costs) == {"asyncio"}  # only cells that ran both are shown
    for i, level in enumerate((1, 16)):
        with_idle = statistics.median(
            c["load"]["latency_us"]["p99"] for c in cells_of(doc, "asyncio", "idle-connections", level)
        )
        without = statistics.median(made_up[level])
        assert costs["asyncio"][3 * i : 3 * i + 3] == [
            format_value("p99_us", without),
            format_value("p99_us", with_idle),
            f"{with_idle / without:.2f}x",
        ]
    assert "p99 without idle" in (tmp_path / "r.html").read_text()
