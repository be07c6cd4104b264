"""Service-level goals without I/O: the parser's table, the end-of-run check, the exit status,
and --abort-on-fail's proof that a goal is lost (checked against the reported percentile)."""

from __future__ import annotations

import random
from array import array

import pytest

from serverzoo.clients.loadgen import latency
from serverzoo.clients.loadgen.slo import (
    ERRORS,
    LATENCY,
    RPS,
    Goal,
    SloError,
    check_goal,
    exit_status,
    parse_goal,
    slo_section,
)
from serverzoo.clients.loadgen.slo_watch import Progress, Tally, Watch, lost_goal, target_rank

GOOD = [
    ("p99<10ms", Goal("p99<10ms", LATENCY, "<", 10_000.0, 99.0)),
    (" p99.9 <= 50 ms ", Goal("p99.9<=50ms", LATENCY, "<=", 50_000.0, 99.9)),
    ("p50<500us", Goal("p50<500us", LATENCY, "<", 500.0, 50.0)),
    ("p90<1.5s", Goal("p90<1.5s", LATENCY, "<", 1_500_000.0, 90.0)),
    ("P99<.5ms", Goal("P99<.5ms", LATENCY, "<", 500.0, 99.0)),
    ("p100<=2s", Goal("p100<=2s", LATENCY, "<=", 2_000_000.0, 100.0)),
    ("errors<0.1%", Goal("errors<0.1%", ERRORS, "<", 0.001)),
    ("errors<=0%", Goal("errors<=0%", ERRORS, "<=", 0.0)),
    ("rps>5000", Goal("rps>5000", RPS, ">", 5000.0)),
    ("rps>=2.5k", Goal("rps>=2.5k", RPS, ">=", 2500.0)),
]


@pytest.mark.parametrize("text, goal", GOOD, ids=[t for t, _ in GOOD])
def test_good_goals(text: str, goal: Goal) -> None:
    assert parse_goal(text) == goal


BAD = [
    ("", "no measure"),
    ("<10ms", "no measure"),
    ("p99", "no measure"),
    ("p99 10ms", "no measure"),
    ("p99=10ms", "comparison '='"),
    ("p99<", "no limit"),
    ("p99<10", "'10' has no unit"),
    ("p99<10 parsecs", "'10 parsecs' is not a number"),
    ("p99<ten ms", "'ten ms' is not a number"),
    ("p99>10ms", "upper bound"),
    ("p0<10ms", "'p0' must be above p0"),
    ("p101<10ms", "'p101' must be above p0"),
    ("p99<0ms", "no latency is below"),
    ("q99<10ms", "unknown measure 'q99'"),
    ("latency<10ms", "unknown measure 'latency'"),
    ("errors<0.1", "needs a % sign"),
    ("errors<101%", "above 100%"),
    ("errors<0%", "errors<=0% for none"),
    ("errors>1%", "upper bound"),
    ("rps<5000", "lower bound"),
    ("rps>5000 req/s", "'5000 req/s' is not a rate"),
    ("rps>=0", "give a positive limit"),
]


@pytest.mark.parametrize("text, part", BAD, ids=[t or "empty" for t, _ in BAD])
def test_bad_goals_name_the_bad_part(text: str, part: str) -> None:
    with pytest.raises(SloError) as info:
        parse_goal(text)
    message = str(info.value)
    assert part in message and "\n" not in message


def _doc(values: list[int], errors: int = 0, elapsed: float = 1.0) -> dict:
    """The parts of a load result that goals read, from raw latencies."""
    raw = latency.RawStats.of(array("q", values))
    hist = latency.histogram_of(values)
    return {
        "requests": len(values),
        "errors": {"total": errors},
        "elapsed_s": elapsed,
        "rps": len(values) / elapsed if elapsed else 0.0,
        "latency_us": latency.summary(hist, raw),
        "histogram": latency.encode(hist),
    }


def test_check_reads_the_reported_percentile_and_the_margin() -> None:
    doc = _doc([1000] * 990 + [20_000] * 10)  # p99 is the 990th value: 1 ms
    met = check_goal(parse_goal("p99<2ms"), doc)
    assert met["passed"] and met["measured"] == doc["latency_us"]["p99"] == 1000
    assert met["margin"] == 1000 and met["margin_ratio"] == 0.5 and "met" in met["verdict"]
    missed = check_goal(parse_goal("p99.9<2ms"), doc)
    assert not missed["passed"] and missed["margin"] < 0 and "NOT met" in missed["verdict"]
    # a percentile the summary does not carry is read from the histogram the same way
    p95 = check_goal(parse_goal("p95<=1ms"), doc)
    assert "p95" not in doc["latency_us"] and p95["measured"] == 1000 and p95["passed"]


def test_check_errors_and_throughput() -> None:
    doc = _doc([500] * 999, errors=1, elapsed=2.0)
    assert check_goal(parse_goal("errors<0.1%"), doc)["passed"] is False  # exactly 0.1% is not below it
    assert check_goal(parse_goal("errors<=0.1%"), doc)["passed"] is True
    rps = check_goal(parse_goal("rps>600"), doc)
    assert rps["measured"] == 499.5 and not rps["passed"] and rps["margin"] == pytest.approx(-100.5)
    nothing = check_goal(parse_goal("p99<1s"), _doc([]))
    assert nothing["measured"] is None and not nothing["passed"]


def test_exit_status() -> None:
    clean, failing = _doc([500] * 100), _doc([500] * 100, errors=1)
    assert exit_status(clean, 5) == 0 and exit_status(failing, 5) == 1
    clean["slo"] = slo_section([parse_goal("p99<1ms")], clean)
    assert exit_status(clean, 5) == 0
    clean["slo"] = slo_section([parse_goal("p99<100us")], clean)
    assert exit_status(clean, 5) == 5
    # an errors goal that held says the failures were acceptable; one that did not is exit 5
    failing["slo"] = slo_section([parse_goal("errors<5%")], failing)
    assert exit_status(failing, 5) == 0
    failing["slo"] = slo_section([parse_goal("errors<0.5%")], failing)
    assert exit_status(failing, 5) == 5
    # without an errors goal, failed requests are still exit 1
    failing["slo"] = slo_section([parse_goal("p99<1ms")], failing)
    assert exit_status(failing, 5) == 1


def test_the_goal_that_stopped_a_run_counts_as_failed() -> None:
    doc = _doc([500] * 100)
    lost = {"goal": "rps>1000", "reason": "at most 10 responses fit", "at_s": 1.0}
    section = slo_section([parse_goal("rps>1000"), parse_goal("p99<1ms")], doc, lost)
    assert [c["passed"] for c in section["goals"]] == [False, True] and not section["passed"]


def test_tally_counts_only_new_values() -> None:
    tally = Tally([(1000.0, True), (1000.0, False)])
    values = array("q", [999, 1000, 1001])
    assert tally.update(values) == [2, 1]
    values.extend([5000, 10])
    assert tally.update(values) == [3, 2]


def test_target_rank_is_hdrhistograms() -> None:
    for n in (1, 7, 100, 333, 1001):
        for q in (50.0, 90.0, 99.0, 99.9, 100.0):
            hist = latency.histogram_of(range(1, n + 1))  # the k-th value is k (exact below 2048)
            assert hist.get_value_at_percentile(q) == target_rank(q, n), (n, q)


def test_latency_lost_only_when_the_rest_of_the_window_cannot_save_it() -> None:
    goal = parse_goal("p99<10ms")
    # 1000 responses at most: 10 may lie above the rank-990 value; 11 already beyond cannot
    assert lost_goal([goal], Progress(200, 0, (10,), 800, 10.0)) is None
    lost = lost_goal([goal], Progress(200, 0, (11,), 800, 10.0))
    assert lost is not None and lost["goal"] == "p99<10ms" and "11 responses" in lost["reason"]


def test_errors_and_rps_lost() -> None:
    errors = parse_goal("errors<1%")
    assert lost_goal([errors], Progress(100, 9, (), 891, 10.0)) is None
    assert lost_goal([errors], Progress(100, 10, (), 890, 10.0)) is not None  # 10 of at most 1000: 1%
    rps = parse_goal("rps>100")
    assert lost_goal([rps], Progress(100, 0, (), 900, 10.0)) is None
    assert lost_goal([rps], Progress(100, 0, (), 880, 10.0)) is not None  # 980 / 9.9 s < 100
    assert lost_goal([rps], Progress(100, 0, (), 0, None)) is None  # a request count has no known length


def test_a_lost_verdict_holds_however_the_window_ends() -> None:
    """Whenever the watch calls a goal lost at some point of a window, every way the window
    could go on from there ends with the reported figure failing the goal."""
    rng = random.Random(20261130)
    goals = [parse_goal(t) for t in ("p99<10ms", "p90<=5ms", "p50<2ms", "errors<2%")]
    limits = [(g.limit, g.strict) for g in goals if g.measure == LATENCY]
    called = 0
    for _ in range(300):
        most = rng.randint(20, 400)  # outcomes the window holds at most
        slow_share = rng.random() * 0.3
        outcomes = [
            None
            if rng.random() < 0.02
            # an error
            else (rng.randint(10_000, 60_000) if rng.random() < slow_share else rng.randint(100, 12_000))
            for _ in range(most)
        ]
        cut = rng.randint(1, most)
        seen = outcomes[:cut]
        values = [v for v in seen if v is not None]
        tally = Tally(limits)
        progress = Progress(len(values), len(seen) - len(values), tuple(tally.update(values)), most - cut, None)
        lost = lost_goal(goals, progress)
        if lost is None:
            continue
        called += 1
        goal = next(g for g in goals if g.text == lost["goal"])
        for _ in range(5):  # however many of the rest arrive, and however fast they are
            rest = outcomes[cut : cut + rng.randint(0, most - cut)]
            fast = [1 if v is not None else None for v in rest]
            final = seen + fast
            doc = _doc([v for v in final if v is not None], errors=sum(v is None for v in final))
            assert not check_goal(goal, doc)["passed"], (lost, len(final))
    assert called > 20  # the property was exercised, not skipped


def test_watch_waits_for_every_worker_inside_the_window() -> None:
    watch = Watch([parse_goal("p99<10ms")], 10.0)
    inside = {"slo": {"responses": 100, "errors": 0, "violations": [50], "remaining": 400}}
    warming = {"slo": {"responses": 0, "errors": 0, "violations": [0], "remaining": None}}
    assert not watch.update([inside, warming], 1.0) and watch.lost is None
    assert not watch.update([inside, None], 1.0)
    assert watch.update([inside, inside], 2.0)
    assert watch.lost is not None and watch.lost["at_s"] == 2.0 and "100 responses" in watch.lost["reason"]
    assert not watch.update([inside, inside], 3.0)  # reported once
