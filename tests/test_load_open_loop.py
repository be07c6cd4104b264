"""Open loop: a server stall shows in the corrected latency, not in the uncorrected one."""

from __future__ import annotations

import os

import pytest

from serverzoo.clients.loadgen import LoadOptions, run_load
from serverzoo.clients.loadgen.corpus import write_corpus

from .load_helpers import MisbehavingServer


@pytest.fixture(scope="module")
def body(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = str(tmp_path_factory.mktemp("open-loop"))
    write_corpus(root, ["1KiB"])
    return root, os.path.join(root, "1KiB.bin")


def test_one_second_stall_shows_in_corrected_p99_only(body) -> None:
    root, path = body
    # 1000 req/s over 4 connections for 2 s; the whole server stops for 1 s after 300 responses
    with MisbehavingServer("stall", path, n=300) as srv:
        doc = run_load(
            LoadOptions(url=srv.url + "1KiB.bin", corpus=root, connections=4, rate=1000, duration=2.0, workers=1)
        )
    assert doc["mode"] == "open" and doc["errors"]["total"] == 0
    corrected, uncorrected = doc["latency_us"], doc["latency_uncorrected_us"]
    # about half of the requests came due during the stall: the corrected view sees it...
    assert corrected["p99"] >= 700_000, corrected
    assert corrected["p90"] >= 300_000, corrected
    # ...while only the 4 requests caught in flight waited, which the uncorrected p99 hides
    assert uncorrected["p99"] < 100_000, uncorrected
    assert uncorrected["max"] >= 900_000, uncorrected
    # the schedule was kept: what was due during the stall went out afterwards
    assert doc["achieved_rate"] == pytest.approx(1000, rel=0.1)
    assert doc["schedule"]["queued_sends"] > 500
    # a slice without responses (a sliver at the window's end, or one a stall covers whole) has no p99 (None)
    assert max(s["p99_us"] or 0 for s in doc["timeline"]) >= 700_000


def test_open_loop_rate_and_request_count(body) -> None:
    root, path = body
    with MisbehavingServer("ok", path) as srv:
        doc = run_load(
            LoadOptions(
                url=srv.url + "1KiB.bin",
                corpus=root,
                connections=4,
                rate=400,
                requests=200,
                arrivals="poisson",
                workers=2,
            )
        )
        seen = srv.stop()
    assert doc["requests"] == 200 and doc["errors"]["total"] == 0 and seen == 200
    # 200 requests at 400/s take about half a second
    assert 0.3 < doc["elapsed_s"] < 1.5
    assert doc["target_rate"] == 400
