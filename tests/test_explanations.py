"""Why a verdict came out so: the readings, on tables of made-up spending."""

from __future__ import annotations

import json
import os

import pytest
from markupsafe import escape as html_escape

from serverzoo.bench import uncertainty as u
from serverzoo.bench.analysis import RunView
from serverzoo.bench.explanations import Limit, Spend, capacity_reading, explain, reading
from serverzoo.bench.results import Load, Run
from serverzoo.bench.verdicts import Contender, decide

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bench_run_fixture.json")


def spent(
    server: str,
    cores: float,
    given: int = 1,
    us_per_request: float = 10.0,
    p50_us: float = 500.0,
    us_per_mb: float | None = None,
) -> Spend:
    return Spend(server, cores, given, us_per_request / 1e6, None if us_per_mb is None else us_per_mb / 1e6, p50_us)


def contenders(*figures: tuple[str, float], flags: dict[str, tuple[str, ...]] | None = None) -> list[Contender]:
    return [
        Contender(s, u.Estimate(v, v * 0.02, 5, "batch-means"), (flags or {}).get(s, ()), (), 10_000)
        for s, v in figures
    ]


# name, verdict inputs (contenders, metric, higher is better), spending, words the reading must hold
# (or, after "!", must not)
CASES = [
    (
        "both busy: the cheaper request path",
        (contenders(("select", 130), ("asyncio", 100)), "rps", True),
        [spent("select", 0.92, us_per_request=7.5), spent("asyncio", 0.93, us_per_request=9.8)],
        ["Both kept their CPU busy", "7.5 µs", "9.8 µs", "accounts for most of the lead"],
    ),
    (
        "both busy, but the cost gap covers little of the lead",
        (contenders(("select", 150), ("asyncio", 100)), "rps", True),
        [spent("select", 0.92, us_per_request=9.5), spent("asyncio", 0.93, us_per_request=10.0)],
        ["Both kept their CPU busy", "!accounts for"],
    ),
    (
        "more cores on a two-CPU placement",
        (contenders(("forking", 1500), ("select", 1000)), "rps", True),
        [spent("forking", 1.8, given=2), spent("select", 1.0, given=2)],
        ["forking put 1.8 cores to work against select's 1.0", "more than one core"],
    ),
    (
        "the slower one left its CPU idle",
        (contenders(("threading", 900), ("iterative", 300)), "rps", True),
        [spent("threading", 0.9), spent("iterative", 0.3)],
        ["iterative left 70% of its CPU idle", "held up by waiting"],
    ),
    (
        "neither short of CPU: latency decides a closed loop",
        (contenders(("asyncio", 400), ("threading", 300)), "rps", True),
        [spent("asyncio", 0.4, p50_us=2000), spent("threading", 0.45, p50_us=2700)],
        ["Neither was short of CPU", "connections / latency", "2.70 ms against 2.00 ms"],
    ),
    (
        "a latency winner whose runner-up queued for the CPU",
        (contenders(("asyncio", 11_000), ("threading", 16_000)), "p99_us", False),
        [spent("asyncio", 0.5), spent("threading", 0.95)],
        ["threading's CPU was busy (95%)", "queued for the CPU"],
    ),
    (
        "a latency winner with CPU to spare on both sides",
        (contenders(("asyncio", 11_000), ("threading", 16_000)), "p99_us", False),
        [spent("asyncio", 0.2), spent("threading", 0.3)],
        ["Neither was short of CPU", "schedules waiting requests"],
    ),
    (
        "a tie of models that spent alike",
        (contenders(("select", 101), ("asyncio", 100)), "mb_per_s", True),
        [spent("select", 0.95, us_per_mb=420), spent("asyncio", 0.96, us_per_mb=440)],
        ["Alike in what they spent", "420.0-440.0 µs of CPU per MB", "95%-96% busy"],
    ),
    (
        "a tie at low load that CPU cost did not decide",
        (contenders(("trio", 101), ("forking", 100)), "rps", True),
        [spent("trio", 0.08, us_per_request=80), spent("forking", 0.3, us_per_request=300)],
        ["None was short of CPU", "did not decide"],
    ),
    (
        "generator-limited with the servers busy too",
        (
            contenders(
                ("select", 38_000),
                ("prefork", 38_100),
                flags={"select": ("client-bound",), "prefork": ("client-bound",)},
            ),
            "rps",
            True,
        ),
        [spent("select", 0.9), spent("prefork", 0.91)],
        ["busy too", "may be theirs as much as the generator's"],
    ),
    (
        "generator-limited with room on the servers",
        (
            contenders(
                ("select", 38_000),
                ("prefork", 38_100),
                flags={"select": ("client-bound",), "prefork": ("client-bound",)},
            ),
            "rps",
            True,
        ),
        [spent("select", 0.5), spent("prefork", 0.9)],
        ["not busy", "select 50%", "room the generator could not fill"],
    ),
]


@pytest.mark.parametrize("name, verdict_inputs, spends, words", CASES, ids=[c[0] for c in CASES])
def test_reading_table(name, verdict_inputs, spends, words):
    cs, metric, higher = verdict_inputs
    v = decide("s", cs, metric, higher, 32, "c=32")
    text = reading(v, {s.server: s for s in spends}, higher)
    assert text is not None, v.text
    for w in words:
        assert (w[1:] not in text) if w.startswith("!") else (w in text), (w, text)


def test_no_reading_without_the_figures():
    v = decide("s", contenders(("select", 130), ("asyncio", 100)), "rps", True, 32, "c=32")
    assert reading(v, {"select": spent("select", 0.9)}, True) is None
    only = decide("s", contenders(("select", 130)), "rps", True, 32, "c=32")
    assert reading(only, {"select": spent("select", 0.9)}, True) is None


def _load_doc(cpu_percent: float | None, rps: float, cpu_s: float) -> dict:
    server = {"cpu_s": cpu_s} | ({} if cpu_percent is None else {"cpu_percent": cpu_percent})
    return {
        "requests": int(rps),
        "errors": {"total": 0},
        "rps": rps,
        "mb_per_s": 1.0,
        "latency_us": {},
        "server": server,
    }


def test_cpu_per_request_is_the_cpu_rate_over_the_request_rate():
    # The sampler's span runs past the window: 1.3 s of CPU for a 1 s window's 10,000 requests at 100% of a
    # CPU is 100 µs per request, not 130.
    load = Load.from_doc(_load_doc(100.0, 10_000, 1.3))
    assert load.server_cpu_per_request_s == pytest.approx(100e-6)
    assert Load.from_doc(_load_doc(None, 10_000, 1.3)).server_cpu_per_request_s is None


def test_a_run_without_cpu_rates_has_no_readings_and_its_report_still_builds():
    view = RunView(Run.from_doc(json.load(open(FIXTURE)), check=False))
    from serverzoo.bench.verdicts import compute

    assert all(explain(v, view) is None for v in compute(view))


def test_the_report_gives_each_verdict_its_reading():
    doc = json.load(open(FIXTURE))
    for cell in doc["cells"]:
        if cell.get("load"):
            cell["load"]["server"]["cpu_percent"] = 90.0  # every server busy: the cheaper request path reads
    from serverzoo.bench.report import build_report, render

    report = build_report([Run.from_doc(doc, check=False)], plots=False)
    md, html = render(report, "report.md.j2"), render(report, "report.html.j2")
    assert report.why and all(scenario in report.view.scenarios for scenario in report.why)
    for why in report.why.values():
        assert f"Why: {why}" in md
        assert html_escape(why) in html
        assert any(line.endswith(why) for line in report.summary)


# -- capacity verdicts -----------------------------------------------------------------------


def searched(server: str, failed: float, busy_at_failure: float | None, **busy_held: float) -> Limit:
    return Limit(server, failed, busy_at_failure, {float(r[1:]): u for r, u in busy_held.items()})


CAPACITY = [
    (
        "the runner-up ran out of CPU where the winner held",
        searched("asyncio", 3150, 0.97, r1000=0.2, r2000=0.41, r3000=0.62),
        searched("threading", 2000, 0.96),
        ["threading failed the goal at 2,000 req/s with its CPU 96% busy", "asyncio held 2,000 req/s", "41% busy"],
    ),
    (
        "the runner-up failed with its CPU idle",
        searched("asyncio", 1700, 0.5),
        searched("iterative", 50, 0.04),
        ["iterative failed the goal at 50 req/s with 96% of its CPU idle", "waited for something other than CPU"],
    ),
    (
        "the winner's figure at that rate unknown",
        searched("asyncio", 3150, 0.97),
        searched("threading", 2000, 0.9),
        ["ran out of CPU.", "!asyncio held"],
    ),
]


@pytest.mark.parametrize("name, winner, runner_up, words", CAPACITY, ids=[c[0] for c in CAPACITY])
def test_capacity_reading_table(name, winner, runner_up, words):
    text = capacity_reading(winner, runner_up)
    for w in words:
        assert (w[1:] not in text) if w.startswith("!") else (w in text), text


def test_no_capacity_reading_without_the_failed_steps_cpu():
    assert capacity_reading(searched("asyncio", 3150, 0.9), searched("threading", 2000, None)) is None
    assert capacity_reading(searched("asyncio", 3150, 0.9), Limit("threading", None, None, {})) is None
