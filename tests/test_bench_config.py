"""`serverzoo bench` configuration: the scenarios file, presets, and one-line errors before anything runs."""

from __future__ import annotations

import os
import resource

import pytest
from click.testing import CliRunner

from serverzoo.bench.plan import CELL_OVERHEAD_S, FIXED_OVERHEAD_S, BenchPlan, build_plan, implemented
from serverzoo.bench.scenarios import DEFAULT_FILE, ConfigError, load_suite
from serverzoo.cli import main
from serverzoo.servers import MODELS

REQUIRED_SCENARIO_KINDS = 8


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("serverzoo bench: "), lines[0]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output + result.stderr


def test_default_file_has_every_scenario_kind():
    suite = load_suite()
    quick = suite.scenarios("quick")
    assert len(quick) >= REQUIRED_SCENARIO_KINDS
    by_feature = {
        "keep-alive small files": [
            s
            for s in quick.values()
            if s.connection == "keep-alive" and s.paths == ("/1KiB.bin",) and not s.idle and not s.slow_readers
        ],
        "new connection per request": [s for s in quick.values() if s.connection == "close"],
        "large file MB/s": [s for s in quick.values() if s.metric == "mb_per_s"],
        "zipf": [s for s in quick.values() if s.zipf],
        "cpu work": [s for s in quick.values() if any("cpu=" in p for p in s.paths)],
        "wait work": [s for s in quick.values() if any("wait=" in p for p in s.paths)],
        "idle connections": [s for s in quick.values() if s.idle],
        "slow readers": [s for s in quick.values() if s.slow_readers],
        "open loop": [s for s in quick.values() if s.mode == "open"],
    }
    assert all(by_feature.values()), {k: len(v) for k, v in by_feature.items()}


def test_quick_preset_covers_every_model_and_scenario_within_five_minutes():
    suite = load_suite()
    plan = build_plan(suite, "quick", nginx_available=True)
    models = {s.model for s in plan.servers.values()}
    assert {m for m in MODELS if implemented(m)} <= models
    assert set(plan.scenarios) == set(suite.scenarios("quick"))
    # the arithmetic printed before starting, counting every registered model (implemented yet or not) and nginx:
    # the first pass fits well inside the budget, which leaves time for extra repetitions of close races
    per_server = sum(len(s.levels) * (s.warmup + s.duration + CELL_OVERHEAD_S) for s in plan.scenarios.values())
    per_nginx = sum(
        len(s.levels) * (s.warmup + s.duration + CELL_OVERHEAD_S) for s in plan.scenarios.values() if s.reference
    )
    first_pass = per_server * len(MODELS) + per_nginx + FIXED_OVERHEAD_S
    assert plan.adaptive.budget is not None and plan.adaptive.budget <= 300
    assert first_pass <= 0.75 * plan.adaptive.budget
    assert plan.adaptive.max_repeat >= 3  # a close race can be measured across server starts
    assert plan.estimate_seconds() + plan.extension_seconds() + FIXED_OVERHEAD_S <= plan.adaptive.budget


def test_full_preset_is_wider_and_repeated():
    suite = load_suite()
    quick, full = build_plan(suite, "quick"), build_plan(suite, "full")
    assert full.repeat >= 3
    for name, sc in full.scenarios.items():
        if name not in quick.scenarios:  # a full-only scenario (quick = false)
            continue
        assert len(sc.levels) >= len(quick.scenarios[name].levels)
        assert sc.duration >= quick.scenarios[name].duration


def test_plan_round_trips_through_the_run_file():
    plan = build_plan(
        load_suite(),
        "quick",
        models=["iterative", "threading"],
        scenarios=["small-keepalive"],
        concurrency=[2, 8],
        repeat=2,
    )
    again = BenchPlan.from_config(plan.to_config())
    assert [c.id for c in again.cells()] == [c.id for c in plan.cells()]
    assert again.cells()[0].id.startswith("iterative/small-keepalive/c2/r1")


def test_narrowing_options_apply():
    plan = build_plan(
        load_suite(),
        "quick",
        models=["threading"],
        scenarios=["wait-work", "cpu-work"],
        concurrency=[3],
        rates=[50, 70],
        duration=0.5,
        warmup=0.0,
        reference=False,
    )
    assert plan.scenarios["cpu-work"].levels == (3,)
    assert plan.scenarios["wait-work"].levels == (50, 70)
    assert all(s.duration == 0.5 and s.warmup == 0.0 for s in plan.scenarios.values())
    assert [c.id for c in plan.cells()] == [
        "threading/wait-work/r50/r1",
        "threading/wait-work/r70/r1",
        "threading/cpu-work/c3/r1",
    ]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--models", "iterative,nosuch"], "unknown model 'nosuch'"),
        (["--scenarios", "nosuch"], "unknown scenario 'nosuch'"),
        (["--preset", "medium"], "unknown preset 'medium'"),
        (["--concurrency", "1,x"], "--concurrency takes positive integers"),
        (["--concurrency", "0"], "--concurrency takes positive integers"),
        (["--duration", "0"], "--duration must be > 0"),
        (["--repeat", "0"], "--repeat must be at least 1"),
        (["--server-cpus", "999"], "--server-cpus 999"),
        (["--corpus", "/nonexistent/corpus"], "corpus /nonexistent/corpus does not exist"),
        (["--scenarios-file", "/nonexistent.toml"], "cannot read scenarios file"),
        (["--resume", "/nonexistent/run.json"], "no such file"),
    ],
)
def test_bad_configuration_fails_at_once_with_one_line(tmp_path, args, fragment):
    out = tmp_path / "out"
    result = run_cli("bench", "--out", str(out), *args)
    assert_one_line_error(result, fragment)
    assert not out.exists() or not any(out.iterdir()), "nothing may be written before the configuration is good"


def test_concurrency_above_the_open_file_limit_is_refused(tmp_path):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-file limit on this machine")
    result = run_cli(
        "bench", "--out", str(tmp_path / "out"), "--scenarios", "small-keepalive", "--concurrency", str(hard + 10)
    )
    assert_one_line_error(result, "open files")


def test_resume_refuses_matrix_options_and_non_runs(tmp_path):
    bogus = tmp_path / "run.json"
    bogus.write_text('{"schema": "something/else"}')
    assert_one_line_error(run_cli("bench", "--resume", str(bogus)), "not a serverzoo bench run")
    bogus.write_text("{not json")
    assert_one_line_error(run_cli("bench", "--resume", str(bogus)), "not JSON")
    assert_one_line_error(run_cli("bench", "--resume", str(bogus), "--models", "iterative"), "drop --models")


def _edited_copy(tmp_path, old: str, new: str) -> str:
    with open(DEFAULT_FILE) as f:
        text = f.read()
    assert old in text
    path = tmp_path / "mine.toml"
    path.write_text(text.replace(old, new, 1))
    return str(path)


@pytest.mark.parametrize(
    "old, new, fragment",
    [
        ('mode = "closed"', 'mode = "closd"', "mode must be one of closed, open"),
        ('metric = "rps"', 'metirc = "rps"', "unknown key 'metirc'"),
        ("quick = { concurrency = [32]", "quick = { concurrency = []", "non-empty list"),
        ('paths = ["/1KiB.bin"]', 'paths = ["/nosuch.bin"]', "/nosuch.bin is not a file of the [corpus]"),
        ("[scenarios.small-keepalive]", "[scenarios.small-keepalive", "scenarios file"),
    ],
)
def test_a_bad_scenarios_file_is_named_in_one_line(tmp_path, old, new, fragment):
    path = _edited_copy(tmp_path, old, new)
    result = run_cli("bench", "--scenarios-file", path, "--out", str(tmp_path / "out"), "--dry-run")
    assert_one_line_error(result, fragment)


def test_an_edited_copy_runs_and_the_dry_run_lists_its_cells(tmp_path):
    path = _edited_copy(tmp_path, "quick = { concurrency = [32]", "quick = { concurrency = [2, 3, 5]")
    result = run_cli(
        "bench",
        "--scenarios-file",
        path,
        "--models",
        "iterative",
        "--scenarios",
        "small-keepalive",
        "--no-reference",
        "--out",
        str(tmp_path / "out"),
        "--dry-run",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [f"iterative/small-keepalive/c{n}/r1" for n in (2, 3, 5)]
    assert "3 cells" in result.stderr and "estimated" in result.stderr
    assert not os.path.exists(tmp_path / "out" / "corpus-20261122"), "a dry run writes no corpus"


def test_config_error_is_raised_for_unknown_preset_in_api():
    with pytest.raises(ConfigError, match="unknown preset"):
        build_plan(load_suite(), "nope")
