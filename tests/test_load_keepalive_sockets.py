"""Keep-alive on raw sockets (keepalive_sockets.py): exact counts, verified bodies and errors by class,
as on the asyncio path, small bodies and large; a head that changes is framed afresh; the runs it does
not carry go to drivers.py."""

from __future__ import annotations

import os

import pytest

from serverzoo.clients.loadgen import LoadOptions, run_load
from serverzoo.clients.loadgen.corpus import write_corpus
from serverzoo.clients.loadgen.keepalive_sockets import suits
from serverzoo.clients.loadgen.targets import build_plan
from serverzoo.servers.launch import ServerProcess

from .load_helpers import MisbehavingServer

REQUESTS = 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("keepalive-corpus"))
    write_corpus(root, ["1KiB", "16KiB", "64KiB"], seed=5)
    return root


@pytest.fixture(scope="module")
def large_corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("keepalive-large-corpus"))
    write_corpus(root, ["1KiB", "64KiB", "1MiB"], seed=6)
    return root


def load(url: str, **kw) -> dict:
    kw.setdefault("workers", 1)
    return run_load(LoadOptions(url=url, **kw))


@pytest.mark.parametrize(
    "behaviour, file, n, errors",
    [
        ("ok", "1KiB.bin", 10, {"total": 0}),
        ("ok", "16KiB.bin", 10, {"total": 0}),
        ("vary", "1KiB.bin", 7, {"total": 0}),  # a new head every 7th response: framed and learned again
        ("vary", "16KiB.bin", 1, {"total": 0}),  # a new head every time: never the fast path
        ("corrupt", "1KiB.bin", 10, {"total": 6, "corrupt_body": 6}),  # one bad byte among known responses
        ("corrupt", "1KiB.bin", 1, {"total": REQUESTS, "corrupt_body": REQUESTS}),  # nothing good to learn
        ("chunked", "16KiB.bin", 10, {"total": 0}),
        ("http10", "16KiB.bin", 10, {"total": 0}),  # close-delimited: a new connection per response
        ("close", "1KiB.bin", 10, {"total": 0}),
        ("short", "16KiB.bin", 10, {"total": REQUESTS, "short_body": REQUESTS}),
        ("reset", "1KiB.bin", 10, {"total": REQUESTS, "reset": REQUESTS}),
    ],
)
def test_keepalive_frames_verifies_and_classifies(corpus: str, behaviour: str, file: str, n: int, errors: dict) -> None:
    path = os.path.join(corpus, file)
    with MisbehavingServer(behaviour, path, n=n) as srv:
        doc = load(srv.url + file, corpus=corpus, connections=3, requests=REQUESTS)
        seen = srv.stop()
    assert doc["errors"] == errors
    assert doc["requests"] == REQUESTS - errors["total"]
    assert doc["latency_us"]["count"] == doc["requests"]
    assert doc["body_bytes"] == doc["requests"] * os.path.getsize(path)
    assert seen == REQUESTS, "every request sent once, and only the requests asked for"


@pytest.mark.parametrize(
    "behaviour, n, errors",
    [
        ("ok", 10, {"total": 0}),
        # the flipped byte is in the middle of the body: past the first read, in a connection's own buffer
        ("corrupt", 10, {"total": 6, "corrupt_body": 6}),
        ("chunked", 10, {"total": 0}),
        ("short", 10, {"total": REQUESTS, "short_body": REQUESTS}),
        ("http10", 10, {"total": 0}),
    ],
)
def test_large_bodies_are_verified_where_they_land(large_corpus: str, behaviour: str, n: int, errors: dict) -> None:
    path = os.path.join(large_corpus, "1MiB.bin")
    with MisbehavingServer(behaviour, path, n=n) as srv:
        doc = load(srv.url + "1MiB.bin", corpus=large_corpus, connections=3, requests=REQUESTS)
        seen = srv.stop()
    assert doc["errors"] == errors
    assert doc["requests"] == REQUESTS - errors["total"]
    assert doc["body_bytes"] == doc["requests"] * os.path.getsize(path)
    assert seen == REQUESTS


@pytest.mark.parametrize(
    "corpus_fixture, zipf, requests",
    [
        # each target has its own known response; a slot whose next target differs uses that one's
        ("corpus", 0.5, 2000),
        # small responses on the fast path, large ones in their connection's buffer, on the same connections
        ("large_corpus", 1.5, 600),
    ],
)
def test_a_mix_is_counted_and_verified_per_target(
    request: pytest.FixtureRequest, corpus_fixture: str, zipf: float, requests: int
) -> None:
    root = request.getfixturevalue(corpus_fixture)
    with ServerProcess("select", root) as srv:
        doc = load(srv.url, corpus=root, zipf=zipf, connections=4, requests=requests)
    assert doc["errors"] == {"total": 0} and doc["requests"] == requests
    sent = {t["path"]: t["sent"] for t in doc["targets"]}
    assert sum(sent.values()) == requests and min(sent.values()) > 0
    assert doc["body_bytes"] == sum(t["sent"] * t["expect_length"] for t in doc["targets"])


@pytest.mark.parametrize(
    "changes, carried",
    [
        ({}, True),
        ({"loopback_sources": 4}, True),
        ({"rate": 100.0}, False),  # open loop: drivers.py schedules the sends
        ({"think_s": 0.01}, False),
        ({"conn_mode": "pipeline"}, False),
        ({"conn_mode": "new"}, False),  # fresh_connections.py
        ({"reconnect_after": 10}, False),
        ({"url": "http://127.0.0.1:1/64KiB.bin"}, True),  # read into each connection's own buffer
    ],
)
def test_which_runs_take_the_raw_socket_path(corpus: str, changes: dict, carried: bool) -> None:
    opts = LoadOptions(**({"url": "http://127.0.0.1:1/16KiB.bin", "corpus": corpus, "requests": 10} | changes))
    opts.validate()
    assert suits(opts, build_plan(opts)) is carried
