"""Deadline buckets of the event loops (servers/runtime/deadlines.py)."""

from __future__ import annotations

import math

import pytest

from serverzoo.servers.runtime.deadlines import DEADLINE_STEP, INF, DeadlineBuckets, Timers, rounded_up


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.deadline = INF
        self.armed_at = INF

    def __repr__(self) -> str:
        return self.name


@pytest.mark.parametrize("when", [0.0, 0.01, DEADLINE_STEP, DEADLINE_STEP + 1e-9, 10.7, 12345.678])
def test_rounding_is_up_to_a_step_never_down(when):
    r = rounded_up(when)
    assert when <= r < when + DEADLINE_STEP + 1e-9
    assert math.isclose(r / DEADLINE_STEP, round(r / DEADLINE_STEP))


def test_due_in_order_of_buckets_never_early():
    b = DeadlineBuckets()
    a, c, d = Conn("a"), Conn("c"), Conn("d")
    b.move(a, 10.1)
    b.move(c, 5.0)
    b.move(d, 10.2)
    assert b.next_time() == rounded_up(5.0)
    assert b.pop_due(4.99) == []
    assert b.pop_due(5.0) == [c] and c.armed_at == INF
    assert b.pop_due(10.1) == []  # a's bucket is at or after its deadline
    assert sorted(b.pop_due(rounded_up(10.2)), key=repr) == [a, d]
    assert b.next_time() == INF and len(b) == 0


def test_moving_earlier_refiles_and_removing_forgets():
    b = DeadlineBuckets()
    a, c = Conn("a"), Conn("c")
    b.move(a, 30.0)
    b.move(a, 5.0)  # earlier: leaves the 30 s bucket
    b.move(c, 7.0)
    b.remove(c)
    b.remove(c)  # twice is harmless
    assert len(b) == 1
    assert b.pop_due(100.0) == [a]


def test_a_connection_refiled_while_its_bucket_is_due_is_not_lost():
    b = DeadlineBuckets()
    a = Conn("a")
    b.move(a, 1.0)
    for item in b.pop_due(1.0):
        b.move(item, 3.0)  # its deadline moved on meanwhile
    assert b.pop_due(2.0) == [] and b.pop_due(3.0) == [a]


def test_a_deadline_moved_later_stays_in_its_bucket_and_is_refiled_when_that_comes_due():
    b = DeadlineBuckets()
    a = Conn("a")
    b.move(a, 1.0)
    b.move(a, 2.6)  # later: no re-file now
    assert a.armed_at == rounded_up(1.0)
    assert b.pop_due(1.0) == []  # not due yet: filed again at its deadline
    assert a.armed_at == rounded_up(2.6) and b.next_time() == rounded_up(2.6)
    assert b.pop_due(2.5) == [] and b.pop_due(rounded_up(2.6)) == [a]


def test_no_deadline_leaves_the_buckets_when_its_bucket_comes_due():
    b = DeadlineBuckets()
    a = Conn("a")
    b.move(a, 1.0)
    a.deadline = INF  # the work endpoint's wait: no timeout meanwhile
    assert b.pop_due(5.0) == [] and len(b) == 0 and a.armed_at == INF


def test_timers_come_due_in_time_order_with_their_argument():
    t = Timers()
    calls = []
    assert t.next_time() == INF
    t.call_at(2.0, calls.append, "b")
    t.call_at(1.0, calls.append, "a")
    t.call_at(2.0, calls.append, "c")  # the same time as b: after it
    assert t.next_time() == 1.0
    assert list(t.pop_due(0.5)) == []
    for callback, arg in t.pop_due(2.0):
        callback(arg)
    assert calls == ["a", "b", "c"] and t.next_time() == INF


def test_a_timer_set_for_now_by_a_due_one_runs_in_the_same_pass():
    t = Timers()
    seen = []
    t.call_at(1.0, lambda arg: t.call_at(1.0, seen.append, "again"))
    for callback, arg in t.pop_due(1.0):
        callback(arg)
    assert seen == ["again"]
