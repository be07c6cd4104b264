"""What the model cards say each model does in a scenario, checked on small, bounded runs.

The cards (the servers' docstrings, rendered in the report) name failure modes: a client
holding a thread, a process or the only loop of a server starves the others. Each claim is
checked here the way the benchmark scenario would show it, scaled down: the same load
generator, the idle set or the slow readers connected before the active clients, active
keep-alive clients that reconnect now and then, and a server capped low (a pool of 4
instead of 32) so a handful of connections is enough. A stall shows as no response at all
within the run and every active request timing out; serving shows as responses and no
error. Speed claims (processes against threads on CPU-bound work) are the benchmark's to
check, not a test's.
"""

from __future__ import annotations

import pytest

from serverzoo.clients.loadgen import LoadOptions, run_load

# A keep-alive client stays as long as it likes: idle ones are never dropped within a run.
PATIENT = ["--keepalive-timeout", "60", "--header-timeout", "60"]
RUN = {"duration": 0.6, "timeout_s": 0.3, "workers": 1, "reconnect_after": 20}

# model -> server arguments capping its concurrency below the idle set (8 connections)
STALLED_BY_IDLE = {
    "iterative": [],  # "One slow or idle client stalls everyone behind it"
    "threadpool": ["--pool", "4"],  # "`idle-connections` fills the pool outright"
    "prefork": ["--workers", "2"],  # "`idle-connections` stalls the server outright"
    "forking": ["--max-children", "4"],  # "Each keep-alive client holds a process, so past the cap clients wait"
}
# "Good at: many idle or slow clients" (select, asyncio, gevent); threading and trio hold one thread or task each
SERVE_DESPITE_IDLE = ["select", "asyncio", "gevent", "threading", "trio"]


def _load(corpus_root: str, model: str, args: list[str], **kw) -> dict:
    opts = LoadOptions(
        url="/page.txt",
        serve=model,
        root=corpus_root,
        server_args=PATIENT + args,
        connections=kw.pop("connections", 2),
        **(RUN | kw),
    )
    return run_load(opts)


def _stalled(doc: dict) -> bool:
    return doc["requests"] == 0 and doc["errors"]["total"] > 0


def _served(doc: dict) -> bool:
    return doc["requests"] > 0 and doc["errors"]["total"] == 0


@pytest.mark.parametrize("model", sorted(STALLED_BY_IDLE))
def test_idle_connections_that_arrived_first_stall_a_capped_server(corpus_root, model):
    doc = _load(corpus_root, model, STALLED_BY_IDLE[model], idle=8)
    assert doc["adversaries"]["idle"]["connects"] == 8
    assert _stalled(doc), (doc["requests"], doc["errors"])


@pytest.mark.parametrize("model", SERVE_DESPITE_IDLE)
def test_idle_connections_cost_a_connection_each_elsewhere(corpus_root, model):
    doc = _load(corpus_root, model, [], idle=8)
    assert _served(doc), (doc["requests"], doc["errors"])


def test_slow_readers_stall_the_iterative_server_and_not_an_event_loop(corpus_root):
    slow = {"slow_readers": 1, "slow_read_rate": 4096.0, "slow_read_path": "/big.bin"}
    assert _stalled(_load(corpus_root, "iterative", [], **slow))
    assert _served(_load(corpus_root, "select", [], **slow))


# "with more keep-alive clients than threads (workers, children) the extra ones starve until a holder leaves"
@pytest.mark.parametrize(
    "model,args",
    [("threadpool", ["--pool", "2"]), ("prefork", ["--workers", "2"]), ("forking", ["--max-children", "2"])],
)
def test_more_keepalive_clients_than_the_cap_starve_the_extra_ones(corpus_root, model, args):
    kept = _load(corpus_root, model, args, connections=4, reconnect_after=None)
    assert kept["requests"] > 0 and kept["errors"].get("read_timeout", 0) > 0, (kept["requests"], kept["errors"])


def test_clients_that_reconnect_take_turns_on_the_iterative_server(corpus_root):
    """A keep-alive client holds the iterative server; one that reconnects now and then lets the next one in."""
    held = _load(corpus_root, "iterative", [], reconnect_after=None)
    assert held["requests"] > 0 and held["errors"].get("read_timeout", 0) > 0
    turns = _load(corpus_root, "iterative", [], reconnect_after=5)
    assert _served(turns), (turns["requests"], turns["errors"])
