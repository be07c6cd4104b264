"""The load generator against real servers: exact counts, verified bodies, errors by class."""

from __future__ import annotations

import os

import pytest

from serverzoo.clients.loadgen import LoadOptions, run_load
from serverzoo.clients.loadgen.corpus import write_corpus
from serverzoo.servers.launch import ServerProcess

from .load_helpers import MisbehavingServer, refused_port


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("load-corpus"))
    write_corpus(root, ["1KiB", "64KiB", "2MiB"], seed=7)
    return root


@pytest.fixture(scope="module")
def threading_server(corpus: str):
    with ServerProcess("threading", corpus) as srv:
        yield srv


def load(url: str, **kw) -> dict:
    kw.setdefault("workers", 1)
    return run_load(LoadOptions(url=url, **kw))


@pytest.mark.parametrize("conn_mode", ["keepalive", "new", "pipeline"])
def test_request_count_is_exact(corpus: str, conn_mode: str) -> None:
    body = os.path.join(corpus, "1KiB.bin")
    with MisbehavingServer("ok", body) as srv:
        doc = load(srv.url + "1KiB.bin", corpus=corpus, connections=4, requests=301, conn_mode=conn_mode)
        seen = srv.stop()
    assert doc["requests"] == 301
    assert doc["errors"] == {"total": 0}
    assert seen == 301, "the server must receive exactly the requests asked for, no more"
    assert doc["body_bytes"] == 301 * 1024
    assert doc["latency_us"]["count"] == 301


def test_timed_run_counts_agree_with_the_server(corpus: str) -> None:
    with MisbehavingServer("ok", os.path.join(corpus, "1KiB.bin")) as srv:
        doc = load(srv.url + "1KiB.bin", corpus=corpus, connections=6, duration=1.0, workers=2)
        seen = srv.stop()
    # the server saw every measured request, plus at most one in flight per connection at the end
    assert seen - 6 <= doc["requests"] <= seen
    assert 0.95 < doc["elapsed_s"] < 1.2


def test_warm_up_requests_are_counted_apart(corpus: str) -> None:
    with MisbehavingServer("ok", os.path.join(corpus, "1KiB.bin")) as srv:
        doc = load(srv.url + "1KiB.bin", corpus=corpus, connections=3, requests=200, warmup_s=0.3, workers=2)
        seen = srv.stop()
    assert doc["requests"] == 200 and doc["errors"]["total"] == 0
    assert doc["warmup"]["requests"] > 0 and doc["warmup"]["errors"]["total"] == 0
    assert seen == 200 + doc["warmup"]["requests"]


def test_request_count_split_over_two_workers_merges_exactly(threading_server, corpus: str) -> None:
    doc = load(threading_server.url + "1KiB.bin", corpus=corpus, connections=4, requests=1001, workers=2)
    assert doc["requests"] == 1001 and doc["errors"]["total"] == 0
    assert sum(t["requests"] for t in doc["timeline"]) == 1001
    assert [w["worker"] for w in doc["client"]["workers"]] == [0, 1]
    from serverzoo.clients.loadgen.latency import decode

    assert decode(doc["histogram"]).get_total_count() == 1001


def test_streamed_and_mixed_bodies_verify(threading_server, corpus: str) -> None:
    doc = load(threading_server.url, corpus=corpus, zipf=1.0, connections=3, requests=60)
    assert doc["errors"]["total"] == 0 and doc["requests"] == 60
    sent = {t["path"]: t["sent"] for t in doc["targets"]}
    assert sum(sent.values()) == 60 and sent["/1KiB.bin"] > sent["/2MiB.bin"]


def test_mix_file_weights_targets(threading_server, corpus: str, tmp_path) -> None:
    mix = tmp_path / "mix.txt"
    mix.write_text(f"# weight path\n3 1KiB.bin\n1 /64KiB.bin   # absolute\n1 {threading_server.url}_/work?cpu=1\n")
    doc = load(threading_server.url, corpus=corpus, mix_file=str(mix), connections=4, requests=1000)
    assert doc["requests"] == 1000 and doc["errors"]["total"] == 0
    sent = {t["path"]: t["sent"] for t in doc["targets"]}
    assert sum(sent.values()) == 1000
    assert 550 <= sent["/1KiB.bin"] <= 650 and 150 <= sent["/64KiB.bin"] <= 250
    assert 150 <= sent["/_/work?cpu=1"] <= 250
    assert [t["weight"] for t in doc["targets"]] == [0.6, 0.2, 0.2]


def test_work_endpoint_body_is_verified(threading_server) -> None:
    doc = load(threading_server.url, work="cpu=1,wait=2", connections=2, requests=20)
    assert doc["requests"] == 20 and doc["errors"]["total"] == 0
    assert doc["targets"][0]["path"] == "/_/work?cpu=1&wait=2"
    assert doc["latency_us"]["p50"] >= 2000  # the 2 ms wait is in every response


def test_corrupted_byte_is_caught(corpus: str) -> None:
    body = os.path.join(corpus, "1KiB.bin")
    with MisbehavingServer("corrupt", body, n=10) as srv:
        doc = load(srv.url + "1KiB.bin", corpus=corpus, connections=1, requests=100)
    assert doc["errors"] == {"total": 10, "corrupt_body": 10}
    assert doc["requests"] == 90


def test_corruption_of_a_streamed_body_is_caught(corpus: str) -> None:
    body = os.path.join(corpus, "2MiB.bin")
    with MisbehavingServer("corrupt", body, n=3) as srv:
        doc = load(srv.url + "2MiB.bin", corpus=corpus, connections=1, requests=9)
    assert doc["errors"] == {"total": 3, "corrupt_body": 3}


def test_sampled_verification_checks_fewer_bodies(corpus: str) -> None:
    body = os.path.join(corpus, "1KiB.bin")
    with MisbehavingServer("corrupt", body, n=1) as srv:  # every body is bad
        doc = load(srv.url + "1KiB.bin", corpus=corpus, connections=2, requests=40, verify_every=4)
    # one body in four is checked (and caught); the others pass unchecked, as asked
    assert doc["errors"] == {"total": 10, "corrupt_body": 10}
    assert doc["requests"] == 30


def test_refused_port_is_classified() -> None:
    doc = load(f"http://127.0.0.1:{refused_port()}/x", connections=2, requests=10)
    assert doc["requests"] == 0
    assert doc["errors"] == {"total": 10, "connect_refused": 10}


def test_reset_is_classified(corpus: str) -> None:
    with MisbehavingServer("reset", os.path.join(corpus, "1KiB.bin")) as srv:
        doc = load(srv.url + "1KiB.bin", corpus=corpus, connections=2, requests=20)
    assert doc["errors"] == {"total": 20, "reset": 20}


def test_short_body_is_classified(corpus: str) -> None:
    with MisbehavingServer("short", os.path.join(corpus, "64KiB.bin")) as srv:
        doc = load(srv.url + "64KiB.bin", corpus=corpus, connections=2, requests=20)
    assert doc["errors"] == {"total": 20, "short_body": 20}


def test_wrong_status_and_wrong_length_are_classified(threading_server, corpus: str) -> None:
    doc = load(threading_server.url + "missing.bin", connections=1, requests=5)
    assert doc["errors"] == {"total": 5, "bad_status": 5}
    manifest = os.path.join(corpus, "manifest.json")
    text = open(manifest).read()
    fake = os.path.join(os.path.dirname(corpus), "fake-manifest")
    os.makedirs(fake, exist_ok=True)
    with open(os.path.join(fake, "manifest.json"), "w") as f:
        f.write(text.replace('"size": 1024', '"size": 1000'))
    doc = load(threading_server.url + "1KiB.bin", corpus=fake, connections=1, requests=5)
    assert doc["errors"] == {"total": 5, "bad_length": 5}


@pytest.mark.parametrize("behaviour", ["chunked", "http10", "close"])
def test_other_framings_are_read_and_verified(corpus: str, behaviour: str) -> None:
    with MisbehavingServer(behaviour, os.path.join(corpus, "64KiB.bin")) as srv:
        doc = load(srv.url + "64KiB.bin", corpus=corpus, connections=2, requests=20)
    assert doc["errors"] == {"total": 0} and doc["requests"] == 20
    assert doc["body_bytes"] == 20 * 65536


def test_read_timeout_is_classified(corpus: str) -> None:
    with MisbehavingServer("silent", os.path.join(corpus, "1KiB.bin")) as srv:
        doc = load(srv.url + "1KiB.bin", connections=2, requests=4, timeout_s=0.3)
    assert doc["errors"] == {"total": 4, "read_timeout": 4}


def test_connect_timeout_is_classified() -> None:
    """A listener that never accepts, its queue full: the kernel drops further SYNs."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(listener.getsockname())
            fillers.append(c)
        port = listener.getsockname()[1]
        doc = load(f"http://127.0.0.1:{port}/x", connections=2, requests=2, connect_timeout_s=0.3)
    finally:
        for c in fillers:
            c.close()
        listener.close()
    assert doc["errors"] == {"total": 2, "connect_timeout": 2}


def test_stdlib_event_loop_gives_the_same_counts(threading_server, corpus: str) -> None:
    doc = load(
        threading_server.url, corpus=corpus, zipf=1.0, connections=3, requests=90, loop="asyncio", conn_mode="pipeline"
    )
    assert doc["requests"] == 90 and doc["errors"]["total"] == 0
    assert doc["client"]["workers"][0]["loop"] == "asyncio"
