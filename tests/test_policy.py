"""The event loops' shared decisions (servers/runtime/policy.py), as tables: state in, decision out."""

from __future__ import annotations

import pytest

from serverzoo.protocol import Docroot, FileApp, FileSlice, HttpConnection, Limits, ResponsePlan, WorkOrder
from serverzoo.servers.runtime.deadlines import INF, DeadlineBuckets, rounded_up
from serverzoo.servers.runtime.outbox import STEP_NAMES, Outbox
from serverzoo.servers.runtime.policy import (
    AT_EOF,
    CLOSE_IDLE,
    DROP,
    KEEP_SENDING,
    QUEUED,
    READ_MORE,
    SEND_408,
    ConnectionPolicy,
)

LIMITS = Limits(header_timeout=10.0, keepalive_timeout=30.0, write_timeout=20.0)
NOW = 100.0


class Conn:
    def __init__(self, http: HttpConnection, deadline: float = INF) -> None:
        self.http = http
        self.box: Outbox | None = None
        self.deadline = deadline
        self.armed_at = INF


@pytest.fixture
def conn(tmp_path) -> Conn:
    (tmp_path / "f").write_bytes(b"x" * 10)
    return Conn(HttpConnection(FileApp(Docroot(str(tmp_path))), "t", lambda: b"Mon, 30 Nov 2026 00:00:00 GMT"))


def make_policy() -> ConnectionPolicy:
    return ConnectionPolicy(LIMITS, False, DeadlineBuckets())


def small(close: bool = False) -> ResponsePlan:
    return ResponsePlan(200, b"HEAD", b"body", close=close)


# after_read: (what the core holds before, plans of the read, was_partial) -> (answer, deadline)
AFTER_READ = {
    "nothing read, idle": (b"", [], False, READ_MORE, NOW + LIMITS.keepalive_timeout),
    "a head begins": (b"GET /f HT", [], False, READ_MORE, NOW + LIMITS.header_timeout),
    "a head goes on: its deadline stays": (b"GET /f HT", [], True, READ_MORE, 55.0),
    "one small response": (b"", [small()], False, b"HEADbody", 55.0),
    "one head without a body": (b"", [ResponsePlan(200, b"HEAD")], False, b"HEAD", 55.0),
    "two responses": (b"", [small(), small()], False, QUEUED, 55.0),
    "a file": (b"", [ResponsePlan(200, b"H", file=FileSlice("/nonexistent", 0, 1))], False, QUEUED, 55.0),
    "work": (b"", [ResponsePlan(200, b"H", work=WorkOrder(0, 0.1))], False, QUEUED, 55.0),
}


@pytest.mark.parametrize("name", list(AFTER_READ))
def test_after_read(conn, name):
    fed, plans, was_partial, expected, deadline = AFTER_READ[name]
    if fed:
        assert conn.http.receive(fed) == []
    conn.deadline = 55.0
    policy = make_policy()
    got = policy.after_read(conn, plans, was_partial, NOW)
    assert got == expected
    assert conn.deadline == deadline
    if got == QUEUED:
        assert conn.box is not None and conn.box.busy
    else:
        assert conn.box is None  # one write, or nothing: no outbox made


def test_after_read_at_eof(conn):
    assert conn.http.receive(b"") == []
    assert make_policy().after_read(conn, [], False, NOW) == AT_EOF


def test_a_small_response_behind_queued_ones_is_queued_too(conn):
    policy = make_policy()
    assert policy.after_read(conn, [small(), small()], False, NOW) == QUEUED
    assert policy.after_read(conn, [small()], False, NOW) == QUEUED  # not written before the first two
    names = []
    while (name := STEP_NAMES[conn.box.step()]) != "DONE":
        names.append(name)
    assert names == ["SEND", "SEND", "SEND"]


# after_reply: (partial head held, stopping) -> (go on, deadline)
AFTER_REPLY = {
    "idle": (False, False, True, NOW + LIMITS.keepalive_timeout),
    "a pipelined head begun": (True, False, True, NOW + LIMITS.header_timeout),
    "idle, server draining": (False, True, False, 55.0),
    "a head begun, server draining": (True, True, True, NOW + LIMITS.header_timeout),
}


@pytest.mark.parametrize("name", list(AFTER_REPLY))
def test_after_reply(conn, name):
    partial, stopping, goes_on, deadline = AFTER_REPLY[name]
    if partial:
        conn.http.receive(b"GET /")
    conn.deadline = 55.0
    assert make_policy().after_reply(conn, NOW, stopping) is goes_on
    assert conn.deadline == deadline


def test_deadlines_are_filed_only_when_they_move_earlier(conn):
    policy = make_policy()
    policy.expect_progress(conn, NOW)
    assert conn.deadline == NOW + LIMITS.write_timeout and conn.armed_at == rounded_up(conn.deadline)
    policy.after_reply(conn, NOW + 1, False)  # later: stays in its bucket
    assert conn.deadline == NOW + 1 + LIMITS.keepalive_timeout and conn.armed_at == rounded_up(NOW + 20.0)
    policy.after_read(conn, [], False, NOW + 1)  # the same deadline: nothing moves
    conn.http.receive(b"GET")
    policy.after_read(conn, [], False, NOW + 2)  # a head begins: earlier, re-filed
    assert conn.deadline == NOW + 2 + LIMITS.header_timeout and conn.armed_at == rounded_up(conn.deadline)


# read_timeout: what the core holds -> (a 408 queued, what the outbox then does)
READ_TIMEOUT = {
    "idle: close quietly": (b"", False, None),
    "a head cut off: 408, then close": (b"GET /f HTTP/1.1\r\nHo", True, ["SEND", "CLOSE"]),
}


@pytest.mark.parametrize("name", list(READ_TIMEOUT))
def test_read_timeout(conn, name):
    fed, queued, steps = READ_TIMEOUT[name]
    if fed:
        conn.http.receive(fed)
    assert make_policy().read_timeout(conn) is queued
    if steps is None:
        assert conn.box is None
        return
    box = conn.box
    got = [STEP_NAMES[box.step()]]
    assert box.data.startswith(b"HTTP/1.1 408 ")
    got.append(STEP_NAMES[box.step()])
    assert got == steps


# drain: (partial head held, plans in the outbox) -> close now
DRAIN = {
    "idle": (False, False, True),
    "a head begun": (True, False, False),
    "a response queued": (False, True, False),
}


@pytest.mark.parametrize("name", list(DRAIN))
def test_drain(conn, name):
    partial, queued, closes = DRAIN[name]
    policy = make_policy()
    if partial:
        conn.http.receive(b"GET /")
    if queued:
        policy.outbox(conn).add([small()])
    assert policy.drain(conn) is closes
    assert conn.http.draining  # every later response says Connection: close


# on_deadline: (what the core holds, sending, progressed) -> (decision, a 408 queued)
ON_DEADLINE = {
    "sending, the client took bytes: wait on": (b"", True, True, KEEP_SENDING, False),
    "sending, no progress: drop": (b"", True, False, DROP, False),
    "sending with a head cut off behind: still drop": (b"GET /f HT", True, False, DROP, False),
    "reading, idle: close quietly": (b"", False, False, CLOSE_IDLE, False),
    "reading, a head cut off: 408": (b"GET /f HTTP/1.1\r\nHo", False, False, SEND_408, True),
}


@pytest.mark.parametrize("name", list(ON_DEADLINE))
def test_on_deadline(conn, name):
    fed, sending, progressed, expected, queued = ON_DEADLINE[name]
    if fed:
        conn.http.receive(fed)
    assert make_policy().on_deadline(conn, sending, progressed) == expected
    assert (conn.box is not None and conn.box.busy) is queued


def test_closed_closes_the_file_and_forgets_the_deadline(conn, tmp_path):
    policy = make_policy()
    policy.outbox(conn).add([ResponsePlan(200, b"H", file=FileSlice(str(tmp_path / "f"), 0, 10))])
    policy.expect_progress(conn, NOW)
    assert conn.box.step() is not None and conn.box.file is not None
    policy.closed(conn)
    assert conn.box.file is None and not conn.box.busy
    assert conn.armed_at == INF and len(policy.deadlines) == 0
    policy.closed(conn)  # twice is harmless
