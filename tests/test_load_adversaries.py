"""Adversarial clients held during a run: idle connections, slow readers, slow senders."""

from __future__ import annotations

import pytest

from serverzoo.clients.loadgen import LoadOptions, run_load
from serverzoo.clients.loadgen.corpus import write_corpus
from serverzoo.servers.launch import ServerProcess


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("adversary-corpus"))
    write_corpus(root, ["1KiB", "4MiB"])
    return root


def test_adversaries_are_held_and_reported(corpus: str) -> None:
    with ServerProcess("threading", corpus, "--header-timeout", "0.5", "--keepalive-timeout", "5") as srv:
        doc = run_load(
            LoadOptions(
                url=srv.url + "1KiB.bin",
                corpus=corpus,
                connections=2,
                duration=1.5,
                workers=1,
                idle=3,
                slow_readers=2,
                slow_read_rate=100_000,
                slow_read_path="/4MiB.bin",
                slow_senders=2,
                slow_send_interval_s=0.1,
            )
        )
    assert doc["errors"]["total"] == 0 and doc["requests"] > 0  # the well-behaved clients were served
    adv = doc["adversaries"]
    idle, readers, senders = adv["idle"], adv["slow_readers"], adv["slow_senders"]
    assert idle["connections"] == 3 and idle["connects"] >= 3
    # idle connections never send a head: the server's 0.5 s header timeout closes them
    assert idle["closed_by_server"] >= 3
    assert readers["connections"] == 2 and readers["bytes"] > 0
    # two readers at 100 kB/s for about 1.6 s cannot have read much more than 320 kB
    # (plus what the socket buffers held before the first pause)
    assert readers["bytes"] < 2 * 100_000 * 2.0 + 2 * 300_000
    assert readers["responses"] == 0  # a 4 MiB file at 100 kB/s takes 40 s
    # a head of ~60 bytes at one byte per 0.1 s takes 6 s: the header timeout cuts every one off
    assert senders["heads_completed"] == 0
    assert senders["closed_by_server"] >= 2
    assert senders["statuses"].get("408", 0) >= 1
