"""Do two runs' verdicts agree? On tables of made-up verdicts, and in the report and `compare`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from serverzoo.bench import agreement
from serverzoo.bench import uncertainty as u
from serverzoo.bench.results import Run
from serverzoo.bench.verdicts import Contender, decide, run_verdicts

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "bench_run_fixture.json")


def verdict(*figures: tuple[str, float], rel: float = 0.02, flags: dict[str, tuple[str, ...]] | None = None):
    cs = [
        Contender(s, u.Estimate(v, v * rel, 5, "batch-means"), (flags or {}).get(s, ()), (), 10_000) for s, v in figures
    ]
    return decide("s", cs, "rps", True, 32, "c=32")


WIN_SELECT = verdict(("select", 130), ("asyncio", 100))
WIN_ASYNCIO = verdict(("asyncio", 130), ("select", 100))
TIE_SELECT_ASYNCIO = verdict(("select", 101), ("asyncio", 100), ("threading", 50))
TIE_GEVENT_TRIO = verdict(("gevent", 101), ("trio", 100), ("select", 50))
CEILING = verdict(
    ("select", 38_000), ("prefork", 38_100), flags={"select": ("client-bound",), "prefork": ("client-bound",)}
)
NONE = decide("s", [Contender("iterative", None, ("failed",), ("did not start",), 0)], "rps", True, 32, "c=32")

# before, after -> status
CASES = [
    ("the same winner", WIN_SELECT, WIN_SELECT, agreement.SAME),
    ("the same tie", TIE_SELECT_ASYNCIO, TIE_SELECT_ASYNCIO, agreement.SAME),
    ("a winner inside the other run's tie", WIN_SELECT, TIE_SELECT_ASYNCIO, agreement.CONSISTENT),
    ("a tie that later separated", TIE_SELECT_ASYNCIO, WIN_ASYNCIO, agreement.CONSISTENT),
    ("two winners", WIN_SELECT, WIN_ASYNCIO, agreement.DIFFERENT),
    ("ties with nobody in common", TIE_SELECT_ASYNCIO, TIE_GEVENT_TRIO, agreement.DIFFERENT),
    ("a generator ceiling overlapping a winner", CEILING, WIN_SELECT, agreement.CONSISTENT),
    ("nobody served it, twice", NONE, NONE, agreement.SAME),
    ("nobody served it, then someone did", NONE, WIN_SELECT, agreement.DIFFERENT),
]


@pytest.mark.parametrize("name, before, after, status", CASES, ids=[c[0] for c in CASES])
def test_agreement_table(name, before, after, status):
    assert agreement.agreement(before, after) == status
    assert agreement.agreement(after, before) == status  # symmetric


def test_compare_follows_the_later_run_and_skips_unshared_scenarios():
    other = decide("t", [Contender("select", u.Estimate(1.0, 0.1, 5, "x"), (), (), 10)], "rps", True, 1, "c=1")
    rows = agreement.compare([WIN_SELECT], [other, WIN_ASYNCIO])
    assert [(r.scenario, r.status) for r in rows] == [("s", agreement.DIFFERENT)]
    assert agreement.summary(rows).startswith("Verdicts: 0 of 1 the same, 0 consistent")
    assert agreement.label(TIE_SELECT_ASYNCIO) == "tie: select, asyncio"
    assert agreement.label(CEILING).startswith("generator-limited: ")


def _changed_winner(tmp_path) -> tuple[str, str, str]:
    """The fixture run, and a copy whose stored verdict names another model in one scenario."""
    doc = json.load(open(FIXTURE))
    doc["verdicts"] = run_verdicts(doc)
    first = doc["verdicts"][0]
    runner_up = next(r["server"] for r in first["ranking"] if r["server"] != first["winner"])
    later = json.loads(json.dumps(doc))
    later["run_id"] = "fixture-run-2"
    later["verdicts"][0] |= {"winner": runner_up, "kind": "winner", "tie": []}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(doc))
    b.write_text(json.dumps(later))
    return str(a), str(b), first["scenario"]


def test_report_and_compare_say_whether_the_verdicts_reproduce(tmp_path):
    a, b, scenario = _changed_winner(tmp_path)
    from serverzoo.bench.report import build_report, render

    report = build_report(
        [Run.from_doc(json.load(open(a)), check=False), Run.from_doc(json.load(open(b)), check=False)], plots=False
    )
    table = report.delta_tables[0]
    assert [r.status for r in table.verdicts if r.scenario == scenario] == [agreement.DIFFERENT]
    md = render(report, "report.md.j2")
    assert table.verdict_summary in md and "**different**" in md
    proc = subprocess.run(
        [sys.executable, "-m", "serverzoo", "compare", a, b], capture_output=True, text=True, timeout=60
    )
    assert "1 different." in proc.stdout and f"  {scenario}: " in proc.stdout, proc.stdout + proc.stderr
