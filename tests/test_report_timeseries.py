"""The report draws cells that ran a few seconds over time: throughput and p99 from their timelines."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from serverzoo.bench.analysis import SERIES_MIN_S, time_series
from serverzoo.bench.report import build_report
from serverzoo.bench.results import Load, Run
from serverzoo.cli import main

from .report_fixtures import STALLED_CELL, stretched_fixture


def test_long_cells_get_charts_over_time_and_short_ones_none() -> None:
    report = build_report([Run.from_doc(stretched_fixture(), check=False)])
    over_time = {s.name: [label for label, _chart in s.over_time] for s in report.sections}
    assert over_time["small-keepalive"] == ["c=1", "c=32"], over_time
    assert all(not labels for name, labels in over_time.items() if name != "small-keepalive"), over_time
    chart = dict(next(s for s in report.sections if s.name == "small-keepalive").over_time)["c=32"]
    assert chart.startswith("<svg") and "requests/s" in chart and "p99 (ms)" in chart


def test_a_stall_shows_as_a_dip_in_throughput_and_a_gap_in_p99() -> None:
    doc = stretched_fixture()
    cell = next(
        c
        for c in doc["cells"]
        if c["scenario"] == "small-keepalive" and c["level"] == 32 and (c["server"], c["repetition"]) == STALLED_CELL
    )
    series = time_series(Load.from_doc(cell["load"]))
    assert series is not None and len(series.t) == 50 and series.t[-1] == 5.0
    stall = len(series.t) // 2
    assert series.rps[stall] == 40.0  # 4 responses in a 0.1 s slice
    assert min(series.rps[:stall] + series.rps[stall + 1 :]) > 10 * series.rps[stall]
    assert series.p99_us[stall] is None  # 4 responses cannot name a p99
    assert all(v is not None for i, v in enumerate(series.p99_us) if i != stall)


def test_long_timelines_are_binned_and_short_cells_are_not_drawn() -> None:
    doc = stretched_fixture(repeats=20)  # 200 slices of 0.1 s
    load = Load.from_doc(next(c for c in doc["cells"] if c["scenario"] == "small-keepalive")["load"])
    series = time_series(load)
    assert series is not None and len(series.t) == 50 and series.t[:2] == [0.4, 0.8]  # bins of 4 slices
    assert sum(r * 0.4 for r in series.rps) == pytest.approx(sum(s.requests for s in load.timeline))
    short = Load.from_doc(next(c for c in doc["cells"] if c["scenario"] == "large-stream")["load"])
    assert sum(s.seconds or 0 for s in short.timeline) < SERIES_MIN_S and time_series(short) is None


def test_the_html_report_folds_the_charts_over_time(tmp_path) -> None:
    run, html = tmp_path / "run.json", tmp_path / "report.html"
    run.write_text(json.dumps(stretched_fixture()))
    result = CliRunner().invoke(main, ["report", str(run), "--html", str(html)])
    assert result.exit_code == 0, result.output
    text = html.read_text()
    assert text.count('<details class="over-time">') == 1
    assert "Small files, keep-alive over time: throughput and p99 of each cell (c=1, c=32)" in text
