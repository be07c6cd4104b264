"""Rate stages (-R 200,400 --stage, -R 100..900 --ramp) against a real server, and their bad spellings."""

from __future__ import annotations

import json

import pytest

from serverzoo.clients.loadgen.options import OptionError
from serverzoo.clients.loadgen.stages import RateSchedule, parse_rate

from .load_helpers import one_kib_server, run_cli


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory):
    with one_kib_server(str(tmp_path_factory.mktemp("stages-corpus"))) as file_url:
        yield file_url


def _run(url: str, *args: str) -> tuple[dict, str]:
    res = run_cli("load", url, "-c", "4", "-w", "2", "--json", "-", *args)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout), res.stderr


def test_steps_are_reported_apart(url: str) -> None:
    doc, text = _run(url, "-R", "200,400,800", "--stage", "0.5s")
    stages = doc["stages"]
    assert [s["target_rate"] for s in stages] == [200, 400, 800]
    assert [(s["start_s"], s["end_s"]) for s in stages] == [(0, 0.5), (0.5, 1.0), (1.0, 1.5)]
    assert doc["options"]["duration_resolved"] == 1.5
    # every measured response, and every request that came due, is in exactly one stage
    assert sum(s["requests"] for s in stages) == doc["requests"]
    assert sum(s["scheduled"] for s in stages) == doc["schedule"]["scheduled"]
    for s in stages:
        assert s["errors"]["total"] == 0
        # a few hundred requests a second is far below what the server and the generator can do: each
        # stage's own rate is achieved, not the run's average (bounds wide enough for late timers)
        assert s["achieved_rate"] == pytest.approx(s["target_rate"], rel=0.35), s
        assert s["latency_us"]["count"] == s["requests"] and s["latency_us"]["p99"] is not None
        assert s["latency_uncorrected_us"]["p99"] is not None
    assert doc["target_rate"] == pytest.approx(1400 / 3, abs=0.01)
    assert "3 stages of 0.5s at 200, 400, 800 req/s" in text
    rows = [line.split() for line in text.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]
    assert [r[2] for r in rows] == ["200", "400", "800"], text


def test_a_ramp_is_reported_in_segments(url: str) -> None:
    doc, text = _run(url, "-R", "100..900", "--ramp", "2s", "--stage", "0.5s")
    stages = doc["stages"]
    assert [s["target_rate"] for s in stages] == [200, 400, 600, 800]  # the line's mean over each quarter
    assert sum(s["requests"] for s in stages) == doc["requests"]
    assert sum(s["scheduled"] for s in stages) == doc["schedule"]["scheduled"]
    rates = [s["achieved_rate"] for s in stages]
    assert rates == sorted(rates), stages  # the offered load climbs segment by segment
    for s in stages:
        assert s["achieved_rate"] == pytest.approx(s["target_rate"], rel=0.35), stages
    assert "a ramp from 100 to 900 req/s over 2s" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["-R", "fast"], "not a rate"),
        (["-R", "1000,2000"], "several rates need --stage"),
        (["-R", "1000..2000"], "a ramp needs --ramp"),
        (["-R", "1000", "--stage", "1s"], "--stage needs several rates"),
        (["-R", "1000,2000", "--ramp", "1s"], "--ramp needs a range"),
        (["-R", "1000,0", "--stage", "1s"], "rates must be positive"),
        (["-R", "1000,2000", "--stage", "0s"], "--stage must be at least"),
        (["-R", "100..200", "--ramp", "1s", "--stage", "2s"], "longer than --ramp"),
        (["--stage", "1s"], "give -R too"),
        (["-R", "1000,2000", "--stage", "1s", "-d", "5s"], "drop --duration"),
        (["-R", "1000,2000", "--stage", "1s", "-n", "500"], "drop --duration and --requests"),
    ],
)
def test_malformed_stages_are_a_one_line_usage_error(args: list[str], message: str) -> None:
    res = run_cli("load", "http://127.0.0.1:9/x", *args)
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("serverzoo load: ") and message in lines[0], res.stderr


def test_schedules() -> None:
    steps = RateSchedule((1000, 2000, 4000), 10)
    assert steps.duration_s == 30 and steps.mean == pytest.approx(7000 / 3)
    assert steps.changes() == [(10, 2000), (20, 4000)]
    assert [steps.rate_at(t) for t in (0, 9.99, 10, 29.9, 31)] == [1000, 1000, 2000, 4000, 4000]
    ramp = RateSchedule((1000, 3000), 5, 10)
    assert [s[2] for s in ramp.stages()] == [1500, 2500]
    changes = ramp.changes()
    assert len(changes) == 99 and changes[0] == pytest.approx((0.1, 1030)) and changes[-1][1] == pytest.approx(2990)
    assert ramp.first_rate() == pytest.approx(1010)
    assert parse_rate("2000", None, None) == (2000, None)
    assert parse_rate("1000..8000", None, 30)[1] == RateSchedule((1000, 8000), 3, 30)
    with pytest.raises(OptionError):
        parse_rate("1000..", None, 30)
