"""The cluster-against-local comparison's arithmetic: paired ratios, their spread, the --floor verdict."""

import pytest

from serverzoo.bench.cluster_vs_local import below_floor, format_comparison, summarize


def run(rps: float, *, other: dict | None = None) -> dict:
    return {
        "rps": rps,
        "requests": int(rps * 5),
        "errors": 0,
        "generator_cpu_percent": 90.0,
        "cpu_us_per_request": 8.0,
        "server_cpu_percent": 95.0,
        "foreign_cpu_percent": 1.0,
        "workers": None,
        "other_cpu_percent": other,
    }


OTHER = {"all": 4.0, "coordinator": 2.5, "dask_workers": 1.5}


def comparison(local: list[float], cluster: list[float], two: list[float] | None = None) -> dict:
    runs = {"local-1": [run(r) for r in local], "cluster-2": [run(r, other=OTHER) for r in cluster]}
    if two is not None:
        runs["local-2"] = [run(r) for r in two]
    return {
        "server": "select",
        "conn_mode": "keepalive",
        "connections": 64,
        "repeat": len(local),
        "duration_s": 5.0,
        "warmup_s": 1.0,
        "client_cpu": 1,
        "runs": runs,
        "summary": summarize(runs),
    }


def test_ratios_are_paired_by_repetition_not_taken_from_medians():
    # drift: both sides fall together; the paired ratios stay at 1.1 while a ratio of medians would not
    c = comparison([100.0, 50.0, 200.0], [110.0, 55.0, 220.0])
    ratio = c["summary"]["cluster-2"]["ratio"]
    assert ratio == pytest.approx({"median": 1.1, "low": 1.1, "high": 1.1})
    assert c["summary"]["local-1"]["ratio"] == {"median": 1.0, "low": 1.0, "high": 1.0}
    assert c["summary"]["cluster-2"]["rps"] == {"median": 110.0, "low": 55.0, "high": 220.0}


def test_spread_is_the_lowest_and_highest_paired_ratio():
    c = comparison([100.0, 100.0, 100.0, 100.0, 100.0], [90.0, 95.0, 101.0, 97.0, 120.0], two=[100.0] * 5)
    ratio = c["summary"]["cluster-2"]["ratio"]
    assert ratio == pytest.approx({"median": 0.97, "low": 0.90, "high": 1.20})
    assert c["summary"]["dask"] == pytest.approx({"median": 0.97, "low": 0.90, "high": 1.20})
    assert c["summary"]["cluster_other_cpu_percent"]["coordinator"] == {"median": 2.5, "low": 2.5, "high": 2.5}
    text = format_comparison("select on CPU 0", c)
    assert "0.970x [0.900-1.200]" in text
    assert "cluster-2 / local-2 (what Dask costs)" in text


def test_floor_fails_only_a_median_below_it():
    low = comparison([100.0, 100.0, 100.0], [96.0, 97.0, 110.0])  # median 0.97
    high = comparison([100.0, 100.0, 100.0], [99.0, 101.0, 102.0])  # median 1.01
    assert below_floor([low, high], 0.95) == []
    failed = below_floor([low, high], 1.0)
    assert len(failed) == 1
    assert failed[0].startswith("select keepalive: cluster-2 / local-1 median 0.970x [0.960-1.100]")
    assert below_floor([high], 1.0) == []


def test_a_repetition_disturbed_by_other_processes_is_left_out():
    runs = {"local-1": [run(100.0), run(100.0), run(100.0)], "cluster-2": [run(100.0), run(50.0), run(102.0)]}
    runs["cluster-2"][1]["foreign_cpu_percent"] = 45.0
    s = summarize(runs)
    assert s["left_out"] == [1] and not s["all_disturbed"]
    assert s["cluster-2"]["ratio"] == pytest.approx({"median": 1.01, "low": 1.0, "high": 1.02})
    for r in runs["local-1"] + runs["cluster-2"]:
        r["foreign_cpu_percent"] = 45.0
    s = summarize(runs)
    assert s["all_disturbed"] and s["cluster-2"]["ratio"]["low"] == pytest.approx(0.5)
