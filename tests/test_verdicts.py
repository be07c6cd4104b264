"""Verdicts, baselines and the regression gate, on tables of made-up cells.

Every case names the situation it stands for: a clear winner, a tie, a noisy pair, a
client-bound leader, a failing or degraded leader, a p99 from too few responses, a
figure whose noise nothing measured.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from serverzoo.bench import uncertainty as u
from serverzoo.bench.analysis import RunView, judge_change, judge_changes, repetition_estimate
from serverzoo.bench.results import Load, Run, RunFormatError, Slice, check_run
from serverzoo.bench.verdicts import Contender, Verdict, decide, run_verdicts

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bench_run_fixture.json")


def est(value: float, rel: float | None = 0.02, n: int = 5) -> u.Estimate:
    """A figure with a relative 95% half-width (None: unmeasured)."""
    return u.Estimate(value, value * rel, n, "batch-means") if rel is not None else u.single(value)


def c(
    server: str,
    value: float | None,
    rel: float | None = 0.02,
    *flags: str,
    responses: int = 10_000,
    reasons: tuple[str, ...] = (),
) -> Contender:
    return Contender(server, est(value, rel) if value is not None else None, flags, reasons, responses)


# name, contenders, metric, higher is better -> kind, winner, tie
CASES = [
    ("clear winner", [c("select", 120), c("asyncio", 100), c("threading", 80)], "rps", True, "winner", "select", ()),
    (
        "tie within the noise",
        [c("select", 103, 0.03), c("asyncio", 100, 0.03), c("threading", 80)],
        "rps",
        True,
        "tie",
        None,
        ("select", "asyncio"),
    ),
    (
        "noisy pair far apart still ties",
        [c("gevent", 150, 0.4), c("trio", 100, 0.4)],
        "rps",
        True,
        "tie",
        None,
        ("gevent", "trio"),
    ),
    (
        "one sample separates nothing",
        [c("select", 200, None), c("asyncio", 100)],
        "rps",
        True,
        "tie",
        None,
        ("select", "asyncio"),
    ),
    (
        "a failed leader is left out",
        [c("iterative", 500, 0.02, "failed", reasons=("server did not start",)), c("select", 120), c("asyncio", 100)],
        "rps",
        True,
        "winner",
        "select",
        (),
    ),
    (
        "a degraded leader is left out",
        [c("iterative", 500, 0.02, "errors", "stalled"), c("select", 100), c("asyncio", 101)],
        "rps",
        True,
        "tie",
        None,
        ("asyncio", "select"),
    ),
    (
        "client-bound leaders tie at the generator's ceiling",
        [
            c("select", 20_000, 0.02, "client-bound"),
            c("asyncio", 19_900),
            c("prefork", 20_500, 0.02, "client-bound"),
            c("threading", 9_000),
        ],
        "rps",
        True,
        "generator-limited",
        None,
        ("prefork", "select", "asyncio"),
    ),
    (
        "a lone client-bound model clearly ahead wins by at least its margin",
        [c("prefork", 20_000, 0.02, "client-bound"), c("iterative", 7_000), c("threading", 9_000)],
        "rps",
        True,
        "generator-limited",
        "prefork",
        (),
    ),
    (
        "ahead of the runner-up but level with a noisier model below it",
        [c("select", 120), c("asyncio", 100), c("gevent", 99, 0.3)],
        "rps",
        True,
        "tie",
        None,
        ("select", "gevent"),
    ),
    ("lower latency wins", [c("asyncio", 11_000), c("threading", 13_000)], "p99_us", False, "winner", "asyncio", ()),
    (
        "a p99 from too few responses is left out",
        [c("iterative", 5_000, 0.02, responses=2), c("asyncio", 11_000), c("threading", 13_000)],
        "p99_us",
        False,
        "winner",
        "asyncio",
        (),
    ),
    (
        "a client-bound latency is left out",
        [c("select", 5_000, 0.02, "client-bound"), c("asyncio", 11_000), c("threading", 11_100)],
        "p99_us",
        False,
        "tie",
        None,
        ("asyncio", "threading"),
    ),
    (
        "the only clean model",
        [c("asyncio", 100), c("iterative", None, None, "failed")],
        "rps",
        True,
        "winner",
        "asyncio",
        (),
    ),
    ("nobody served it", [c("iterative", None, None, "failed")], "rps", True, "none", None, ()),
]


@pytest.mark.parametrize("name, contenders, metric, higher, kind, winner, tie", CASES, ids=[x[0] for x in CASES])
def test_verdict_table(name, contenders, metric, higher, kind, winner, tie):
    v = decide("s", contenders, metric, higher, 32, "c=32")
    assert (v.kind, v.winner, v.tie) == (kind, winner, tie), v.text
    decided_by = {winner, *tie} - {None}
    for server, reason in v.excluded:
        assert server not in decided_by and reason
    flagged = {x.server for x in contenders if set(x.flags) & {"failed", "errors", "stalled"}}
    assert not flagged & decided_by, "a failed or degraded cell decided the verdict"
    stored = json.loads(json.dumps(v.to_dict()))
    assert Verdict.from_dict(stored).to_dict() == stored, "the stored verdict reads back the same"


def test_verdict_texts_state_margin_basis_and_confidence():
    won = decide("s", [c("select", 120), c("asyncio", 100)], "rps", True, 32, "c=32")
    assert won.margin == pytest.approx(0.20)
    assert won.noise == pytest.approx(u.combined_half_width(est(120), est(100)) / 100)
    assert won.text == f"select, 20.0% ahead of asyncio (noise ±{won.noise:.1%}) at c=32"
    assert won.confidence == "95% intervals from 5 timeline batches of one repetition"
    tie = decide("s", [c("select", 103, 0.03), c("asyncio", 100, 0.03)], "rps", True, 32, "c=32")
    assert tie.text == "tie: select, asyncio (within 3%) at c=32"
    bound = decide("s", [c("select", 20_000, 0.02, "client-bound"), c("asyncio", 19_900)], "rps", True, 32, "c=32")
    assert bound.text == (
        "generator-limited: every model that reached 20,000 req/s is tied at >= 20,000 at c=32: select, asyncio"
    )
    blind = decide("s", [c("select", 200, None), c("asyncio", 100, None)], "rps", True, 1, "c=1")
    assert blind.confidence.startswith("noise unmeasured")
    d = won.to_dict()
    assert d["basis"] == {"level": 32, "label": "c=32", "metric": "rps"} and d["tie"] == [] and d["winner"] == "select"


# -- the level and the baseline, on the fixture run ---------------------------------------


@pytest.fixture(scope="module")
def doc() -> dict:
    with open(FIXTURE) as f:
        return json.load(f)


def test_verdicts_rest_on_the_top_level_never_c1(doc):
    view = RunView(Run.from_doc(doc))
    assert view.basis_level("small-keepalive") == 32
    # make c=1 favour threading hugely: the verdict, taken at c=32, does not move
    changed = copy.deepcopy(doc)
    for cell in changed["cells"]:
        if (cell["server"], cell["scenario"], cell["level"]) == ("threading", "small-keepalive", 1):
            cell["load"]["rps"] *= 50
    verdicts = {v["scenario"]: v for v in run_verdicts(changed)}
    assert verdicts["small-keepalive"]["winner"] == "asyncio"
    assert verdicts["small-keepalive"]["basis"]["level"] == 32


def test_open_loop_ranks_models_that_kept_up_at_the_highest_rate(doc):
    verdicts = {v["scenario"]: v for v in run_verdicts(doc)}
    wait = verdicts["wait-work"]
    assert wait["basis"]["level"] == 1000
    assert "iterative" in {e["server"] for e in wait["excluded"]}
    assert "achieved" in next(e["reason"] for e in wait["excluded"] if e["server"] == "iterative")
    check_run(dict(doc, verdicts=run_verdicts(doc)))


def test_baseline_is_never_a_flagged_server(doc):
    view = RunView(Run.from_doc(doc))
    assert view.baseline("large-stream") == "nginx"  # healthy there
    assert view.baseline("small-keepalive") == "iterative"  # nginx client-bound, threading unstable
    assert view.baseline("small-keepalive", preferred="threading") == "iterative"
    assert view.baseline("large-stream", preferred="asyncio") == "asyncio"
    failing = copy.deepcopy(doc)
    for cell in failing["cells"]:
        if cell["scenario"] == "large-stream" and cell["server"] in ("nginx", "threading"):
            cell["status"], cell["load"], cell["error"] = "failed", None, "server did not start: fixture"
    view = RunView(Run.from_doc(failing))
    base = view.baseline("large-stream")
    assert base in ("iterative", "asyncio") and not view.flagged_in(base, "large-stream")


# -- the regression gate --------------------------------------------------------------------

REPS = "repetitions"
# before, after, higher is better -> verdict
GATE = [
    (u.Estimate(100, 2, 3, REPS), u.Estimate(80, 2, 3, REPS), True, "regression"),
    (u.Estimate(100, 2, 3, REPS), u.Estimate(120, 2, 3, REPS), True, "improvement"),
    (u.Estimate(100, 25, 3, REPS), u.Estimate(80, 25, 3, REPS), True, "within noise"),  # noisier than the change
    (u.Estimate(100, 1, 3, REPS), u.Estimate(97, 1, 3, REPS), True, "within noise"),  # under the 5% floor
    (u.Estimate(100, 1, 5, "batch-means"), u.Estimate(80, 1, 5, "batch-means"), True, "unmeasured"),  # one start each
    (u.single(100), u.Estimate(80, 2, 3, REPS), True, "unmeasured"),
    (u.Estimate(10_000, 200, 3, REPS), u.Estimate(12_000, 200, 3, REPS), False, "regression"),  # p99 went up
]


@pytest.mark.parametrize("before, after, higher, verdict", GATE)
def test_gate_table(before, after, higher, verdict):
    assert judge_change(before, after, higher, floor=0.05)[0] == verdict


def _cells(changes: list[float], noise: float = 0.06) -> list[tuple[u.Estimate, u.Estimate, bool]]:
    """Cells of three repetitions each, before 100 and after 100 * (1 + change), each +-noise."""
    return [
        (u.Estimate(100.0, 100.0 * noise, 3, REPS), u.Estimate(100.0 * (1 + x), 100.0 * noise, 3, REPS), True)
        for x in changes
    ]


def test_a_change_that_stands_out_alone_is_luck_among_many_cells():
    # -9% against +-6% noise: p about 0.04 alone; with 25 unchanged cells beside it, about 1 in 20 such
    # cells would look that far off by luck, so the family does not call it a regression
    alone = judge_changes(_cells([-0.09]), floor=0.05)
    assert alone[0][0] == "regression"
    among = judge_changes(_cells([-0.09] + [0.0] * 25), floor=0.05)
    assert among[0][0] == "within noise" and "not among 26 cells" in among[0][1]
    assert all(v == "within noise" for v, _, _ in among)


def test_a_real_change_still_fails_the_gate_among_many_cells():
    judged = judge_changes(_cells([-0.30, +0.30] + [0.0] * 70), floor=0.05)
    assert [v for v, _, _ in judged[:2]] == ["regression", "improvement"]
    assert "adjusted for 72 cells" in judged[0][1] and judged[0][2] <= 0.05
    assert {v for v, _, _ in judged[2:]} == {"within noise"}


def test_unmeasured_cells_are_not_part_of_the_family():
    once = (u.Estimate(100.0, 1.0, 5, "batch-means"), u.Estimate(50.0, 1.0, 5, "batch-means"), True)
    judged = judge_changes([once, *_cells([-0.09])], floor=0.05)
    assert judged[0] == ("unmeasured", "one repetition: the noise between server starts was not measured", None)
    assert judged[1][0] == "regression"  # a family of one: the unmeasured cell took no share of the 5%


# -- typed results -----------------------------------------------------------------------------


def _load(timeline: list[dict], rps: float = 1000.0, p99: float = 900.0) -> Load:
    return Load.from_doc(
        {
            "requests": int(rps),
            "errors": {"total": 0},
            "rps": rps,
            "mb_per_s": 1.0,
            "latency_us": {"p99": p99},
            "timeline": timeline,
        }
    )


def test_a_repetition_has_an_interval_from_its_slices():
    steady = [{"start_ns": i * 10**8, "end_ns": (i + 1) * 10**8, "requests": 100, "bytes": 10_000} for i in range(10)]
    e = repetition_estimate(_load(steady), "rps")
    assert (e.value, e.method, e.n) == (1000.0, "batch-means", 5) and e.half_width == pytest.approx(0, abs=1e-6)
    assert repetition_estimate(_load(steady), "mb_per_s").measured
    one_second = [{"t": 0.7, "requests": 700, "errors": 0, "p99_us": 900}]  # a 0.7 s cell in 1 s slices
    assert not repetition_estimate(_load(one_second), "rps").measured
    no_histograms = [dict(s) for s in steady]
    assert not repetition_estimate(_load(no_histograms), "p99_us").measured


def test_a_p99_interval_comes_from_merged_slice_histograms():
    from serverzoo.clients.loadgen.latency import encode, histogram_of

    slices = [
        {
            "start_ns": i * 10**8,
            "end_ns": (i + 1) * 10**8,
            "requests": 100,
            "histogram": encode(histogram_of([100 + i] * 99 + [1000 + 10 * i])),
        }
        for i in range(10)
    ]
    e = repetition_estimate(_load(slices), "p99_us")
    assert e.method == "batch-means" and e.n == 5 and e.measured
    few = [dict(s, histogram=encode(histogram_of([100] * 10))) for s in slices]  # 20 responses per batch
    assert not repetition_estimate(_load(few), "p99_us").measured


def test_older_timelines_are_read_by_their_end_times():
    load = _load(
        [{"t": 0.5, "requests": 500, "errors": 0, "p99_us": 1}, {"t": 1.0, "requests": 500, "errors": 0, "p99_us": 1}]
    )
    assert [s.seconds for s in load.timeline] == [0.5, 0.5]
    assert load.timeline[0] == Slice(0.5, 500, None, None)


def test_run_schema_errors_name_the_place(doc):
    bad = copy.deepcopy(doc)
    del bad["config"]["scenarios"]["wait-work"]["metric"]
    with pytest.raises(RunFormatError, match="config/scenarios/wait-work: 'metric' is a required property"):
        Run.from_doc(bad)
    newer = copy.deepcopy(doc)  # fields a newer runner adds are carried along, not refused
    newer["config"]["scenarios"]["wait-work"]["cpu_placement"] = {"server": [0, 1]}
    newer["cells"][0]["load"]["timeline"][0]["something_new"] = 1
    assert Run.from_doc(newer).scenarios["wait-work"].metric == "p99_us"


def test_the_summary_says_what_to_pick_and_how_sure():
    from serverzoo.bench.report import summary_line

    won = decide("s", [c("select", 120), c("asyncio", 100)], "rps", True, 32, "c=32")
    assert summary_line(won, "Small files") == (
        "Small files: pick select, 20.0% ahead of asyncio at c=32 (95% intervals "
        "from 5 timeline batches of one repetition)."
    )
    tie = decide("s", [c("select", 103, 0.03), c("asyncio", 100, 0.03)], "rps", True, 32, "c=32")
    assert summary_line(tie, "Small files").startswith(
        "Small files: any of select, asyncio (within 3% at c=32): this run cannot separate them"
    )
    bound = decide("s", [c("select", 2_000, 0.02, "client-bound"), c("asyncio", 1_990)], "mb_per_s", True, 4, "c=4")
    assert summary_line(bound, "Large files").startswith(
        "Large files: the load generator was the limit; select, asyncio all reached 2,000.0 MB/s at c=4"
    )
    none = decide("s", [c("iterative", None, None, "failed")], "rps", True, 16, "c=16")
    assert summary_line(none, "Idle") == "Idle: no model served it cleanly at c=16."


def _load_with(unfinished: dict, slowest_us: int) -> dict:
    return {
        "requests": 100,
        "errors": {"total": 0},
        "rps": 100.0,
        "mb_per_s": 1.0,
        "latency_us": {"max": slowest_us},
        "unfinished": unfinished,
    }


# unfinished at the window's close, slowest response (us) -> requests counted as stalled
STALLS = [
    ("recorded by the generator", {"count": 8, "oldest_us": 900, "longer_than_max": 3, "stalled": 2}, 400, 2),
    (
        "a download in flight, a little older than the slowest: the tail, not a stall",
        {"count": 4, "oldest_us": 606_201, "median_age_us": 207_871, "longer_than_max": 1},
        561_275,
        0,
    ),
    (
        "an old run whose waiters were far older than the slowest",
        {"count": 32, "oldest_us": 98_528, "median_age_us": 98_346, "longer_than_max": 31},
        3_959,
        31,
    ),
    ("nothing owed", {"count": 0, "oldest_us": None, "longer_than_max": 0}, 1_000, 0),
]


@pytest.mark.parametrize("name, unfinished, slowest, stalled", STALLS, ids=[s[0] for s in STALLS])
def test_requests_left_waiting_count_as_stalled_only_well_beyond_the_slowest(name, unfinished, slowest, stalled):
    assert Load.from_doc(_load_with(unfinished, slowest)).left_waiting == stalled
