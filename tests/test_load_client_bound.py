"""The client-bound rule (client_bound.py) on made-up runs: the generator's signs, and a saturated server
outweighing its CPU and wait signs but not a late open-loop send."""

from __future__ import annotations

import pytest

from serverzoo.clients.loadgen.client_bound import judge_client


def worker(
    cpu_percent: float, wait_percent: float | None = 0.0, slip_p99_us: int | None = None, index: int = 0
) -> dict:
    """A worker's result over a 2 s window."""
    return {
        "worker": index,
        "pid": 100 + index,
        "cpu": index,
        "loop": "uvloop",
        "cpu_s": cpu_percent / 50,
        "runqueue_wait_s": None if wait_percent is None else wait_percent / 50,
        "lag": {"p50_us": 10, "p99_us": 50, "max_us": 90},
        "open_loop": None if slip_p99_us is None else {"slip": {"p99_us": slip_p99_us}},
    }


@pytest.mark.parametrize(
    "workers, server_percent, server_cpus, bound, both",
    [
        # the generator's own signs, without a server figure
        ([worker(50)], None, None, False, False),
        ([worker(95)], None, None, True, False),
        ([worker(89.9)], None, None, False, False),
        ([worker(90)], None, None, True, False),
        ([worker(40, wait_percent=12)], None, None, True, False),  # its CPU was shared
        ([worker(40, wait_percent=None)], None, None, False, False),  # no schedstat
        ([worker(30, slip_p99_us=20_000)], None, None, True, False),
        ([worker(30, slip_p99_us=5_000)], None, None, False, False),
        ([worker(50), worker(96, index=1)], None, None, True, False),  # any one worker
        # the server's CPU weighed against them
        ([worker(97)], 60.0, 1, True, False),  # the server had time to spare: the generator is the limit
        ([worker(97)], 99.0, 1, False, True),  # both saturated: the server is the limit
        ([worker(97)], 90.0, 1, False, True),
        ([worker(97)], 150.0, 2, True, False),  # two server CPUs, 75% of each
        ([worker(97)], 185.0, 2, False, True),
        ([worker(40, wait_percent=30)], 98.0, 1, False, True),
        ([worker(97, slip_p99_us=20_000)], 99.0, 1, True, True),  # late sends are the generator's regardless
        ([worker(50)], 99.0, 1, False, False),  # a saturated server alone is no note about the generator
        ([worker(97)], 99.0, None, True, False),  # how many CPUs the server had is unknown: no comparison
    ],
)
def test_client_bound_rule(
    workers: list[dict], server_percent: float | None, server_cpus: int | None, bound: bool, both: bool
) -> None:
    judged = judge_client(workers, 2.0, server_percent, server_cpus)
    assert judged["client_bound"] is bound
    assert bool(judged["reasons"]) is bound
    assert judged["both_saturated"] is both
    assert bool(judged["notes"]) is both
    if both:
        assert "server is the limit" in judged["notes"][0] and "\n" not in judged["notes"][0]


def test_a_short_window_is_not_judged() -> None:
    judged = judge_client([worker(99, wait_percent=50)], 0.2, 40.0, 1)
    assert judged["client_bound"] is False and judged["reasons"] == [] and judged["both_saturated"] is False
