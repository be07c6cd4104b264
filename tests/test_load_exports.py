"""--csv and --hdr-log: the per-interval timeline, read back as CSV and with HdrHistogram's own log reader."""

from __future__ import annotations

import csv
import json
import os

import pytest
from hdrh.log import HistogramLogReader

from serverzoo.clients.loadgen import latency
from serverzoo.clients.loadgen.exports import CSV_COLUMNS

from .load_helpers import one_kib_server, run_cli


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    with one_kib_server(str(tmp_path_factory.mktemp("exports-corpus"))) as file_url:
        yield file_url


def test_timeline_as_csv_and_hdr_log(url: str, tmp_path) -> None:
    csv_path, log_path, json_path = (str(tmp_path / n) for n in ("t.csv", "t.hlog", "r.json"))
    res = run_cli(
        "load",
        url,
        "-c",
        "4",
        "-w",
        "2",
        "-d",
        "1.2s",
        "--timeline-interval",
        "200ms",
        "--csv",
        csv_path,
        "--hdr-log",
        log_path,
        "--json",
        json_path,
    )
    assert res.returncode == 0, res.stderr
    with open(json_path) as f:
        doc = json.load(f)
    timeline = doc["timeline"]
    # six 200 ms boundaries in 1.2 s, give or take one: the window's end and the last slice timer
    # race, and a late timer can fold two slices together or leave a short one at the end
    assert 5 <= len(timeline) <= 7 and doc["requests"] > 0

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(csv_path) as f:
        assert f.readline().strip() == ",".join(CSV_COLUMNS)
    assert len(rows) == len(timeline)
    assert sum(int(r["requests"]) for r in rows) == doc["requests"]
    # a slice with no response (a short one at the end) has no p99: an empty field
    assert [int(r["p99_us"]) if r["p99_us"] else None for r in rows] == [s["p99_us"] for s in timeline]
    assert float(rows[-1]["end_s"]) == timeline[-1]["t"]

    reader = HistogramLogReader(log_path, latency.new_histogram())
    intervals = []
    while (hist := reader.get_next_interval_histogram()) is not None:
        intervals.append(hist)
    assert len(intervals) == len(timeline)
    assert sum(h.get_total_count() for h in intervals) == doc["requests"]
    assert [h.get_value_at_percentile(99) if h.get_total_count() else None for h in intervals] == [
        s["p99_us"] for s in timeline
    ]
    # absolute time stamps: the window's start on the wall clock, plus each slice's offset
    assert reader.get_start_time_sec() == pytest.approx(doc["started_unix_s"], abs=0.001)
    assert intervals[1].get_start_time_stamp() / 1000 == pytest.approx(
        doc["started_unix_s"] + timeline[0]["t"], abs=0.01
    )


def test_an_unwritable_export_path_is_a_one_line_error(url: str, tmp_path) -> None:
    missing = os.path.join(str(tmp_path), "no-such-dir", "t.csv")
    res = run_cli("load", url, "-c", "2", "-w", "1", "-d", "0.3s", "--csv", missing)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"serverzoo load: cannot write {missing}: No such file or directory"]
