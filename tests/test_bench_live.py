"""serverzoo bench's progress: the running cell's live figures, read from the generator each second."""

from __future__ import annotations

import os

import pytest

from serverzoo.bench.corpus import ensure_corpus
from serverzoo.bench.matrix import live_text
from serverzoo.bench.runner import CellRunner
from serverzoo.bench.scenarios import Scenario, ServerSpec

from .support import one_scenario_plan


@pytest.mark.timeout(60)
def test_a_running_cell_reports_its_live_figures(tmp_path) -> None:
    sc = Scenario(
        "small", "small", "", "closed", ("/1KiB.bin",), None, "keep-alive", "rps", False, (), (2,), 0, 2.2, 0.3
    )
    plan = one_scenario_plan(sc, {"asyncio": ServerSpec("asyncio", "asyncio")})
    root = ensure_corpus(os.path.join(str(tmp_path), "corpus"), plan.corpus)
    runner = CellRunner(plan, root)
    seen: list[dict] = []
    runner.on_live = seen.append
    (cell,) = plan.cells()
    record = runner.run(cell)
    assert record["status"] == "ok", record["error"]
    assert "--progress-fd" not in record["generator"]["argv"]  # the command to reproduce the cell stays clean
    measured = [f for f in seen if f["phase"] == "measure"]
    assert len(measured) >= 2, seen
    # requests/s only: the workers send no latency histograms to a progress pipe (they would cost CPU)
    assert all(f["rps"] > 0 and f["p99_us"] is None for f in measured), measured
    assert measured[-1]["completed"] <= record["load"]["requests"]
    assert live_text(measured[-1]).startswith(f"measuring {measured[-1]['t']:.0f}s: ")
