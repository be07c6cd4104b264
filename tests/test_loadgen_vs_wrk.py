"""bench/loadgen_vs_wrk.py: how a comparison reads when the server, not a generator, was the limit,
and the server CPU it samples around a wrk run."""

import os
import time

import pytest

from serverzoo.bench.loadgen_vs_wrk import _ServerCpu, format_comparison


def _run(rps: float, server_cpu: float | None, client_bound: bool = False, both: bool = False) -> dict:
    return {
        "rps": rps,
        "mbps": rps / 1000,
        "cpu_us_per_request": 4.5,
        "cpu_us_per_mb": 3500.0,
        "errors": 0,
        "client_bound": client_bound,
        "both_saturated": both,
        "server_cpu_percent": server_cpu,
    }


def _comparison(wrk_server: float | None, ours_server: float | None, *, both: bool) -> dict:
    runs = {"wrk": [_run(200_000, wrk_server)], "ours": [_run(204_000, ours_server, not both, both)]}
    return {
        "modes": {
            "keepalive": {
                "file": "1KiB.bin",
                "connections": 64,
                "close": False,
                "metric": "rps",
                "goal": 1.0,
                "runs": runs,
                "median": {"wrk": 200_000, "ours": 204_000},
                "ratio": 1.02,
                "median_cpu_us_per_request": {"wrk": 4.6, "ours": 4.5},
                "median_cpu_us_per_mb": {"wrk": 3600.0, "ours": 3500.0},
                "median_server_cpu_percent": {"wrk": wrk_server, "ours": ours_server},
            }
        }
    }


LIMIT_LINE = "the server was the limit with both tools"


@pytest.mark.parametrize(
    ("wrk_server", "ours_server", "both", "says_server_limit"),
    [
        (99.0, 94.0, True, True),  # saturated with both tools: the ratio is the server's
        (99.0, 80.0, False, False),  # ours left the server idle time: the generator may be the limit
        (60.0, 95.0, True, False),  # wrk left it idle: wrk was the limit, the ratio compares generators
        (None, None, False, False),  # not sampled: nothing said about the server
    ],
)
def test_the_server_limit_is_named_only_when_both_tools_saturated_it(wrk_server, ours_server, both, says_server_limit):
    text = format_comparison("nginx", _comparison(wrk_server, ours_server, both=both))
    assert (LIMIT_LINE in text) is says_server_limit
    assert ("server CPU (of one CPU)" in text) is (wrk_server is not None)
    assert f"both saturated: {int(both)}" in text
    assert "ratio 1.02x (goal >= 1.00x)" in text


def test_server_cpu_is_the_tree_cpu_over_the_window():
    window = _ServerCpu(os.getpid())
    burn_until = time.process_time() + 0.05
    while time.process_time() < burn_until:  # bounded: 50 ms of this process's CPU
        pass
    percent = window.percent()
    assert percent is not None and percent > 0
    assert _ServerCpu(None).percent() is None
