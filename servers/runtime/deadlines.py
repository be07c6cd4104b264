"""Deadlines for thousands of connections, checked in buckets rather than one timer each.

An event loop must notice when a connection's header, keep-alive or write deadline has
passed, but nearly every deadline is moved before it fires (each request pushes the
keep-alive deadline on), and nearly every connection closes before its deadline. So a
deadline is only a number on the connection, and the loop checks it when the
connection's bucket comes due: buckets are DEADLINE_STEP apart, a connection sits in
the bucket at or after its deadline, and moves only when its deadline moves earlier
(move). A bucket that comes due early for a connection (its deadline moved on) re-files
it, so pop_due hands back only connections whose deadline has passed.

What this saves over a timer entry per deadline: no heap entry per connection or per
request (the heap holds bucket times, plain floats the garbage collector never
visits); a closed connection leaves its bucket at once instead of lingering in a heap
until its old deadline; and a deadline that moves later costs nothing. The price: a
timeout fires up to DEADLINE_STEP late, never early.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

DEADLINE_STEP = 0.25  # seconds between buckets: how late a timeout may fire
INF = math.inf


def rounded_up(when: float) -> float:
    """The bucket time for a deadline: the next multiple of DEADLINE_STEP at or after it."""
    return math.ceil(when / DEADLINE_STEP) * DEADLINE_STEP


class Filed(Protocol):
    deadline: float  # when it times out (INF: no timeout now)
    armed_at: float  # the bucket it is in (INF: none)


F = TypeVar("F", bound=Filed)


class DeadlineBuckets(Generic[F]):
    """Connections filed by when their deadline must next be checked."""

    __slots__ = ("_due", "_times")

    def __init__(self) -> None:
        self._due: dict[float, set[F]] = {}  # bucket time -> connections in it
        self._times: list[float] = []  # heap of the bucket times in _due

    def file(self, item: F, deadline: float) -> None:
        """Check item at its deadline (rounded up); leaves the bucket it was in."""
        key = rounded_up(deadline)
        if item.armed_at == key:
            return
        if item.armed_at != INF:
            self._due[item.armed_at].discard(item)
        item.armed_at = key
        bucket = self._due.get(key)
        if bucket is None:
            bucket = self._due[key] = set()
            heapq.heappush(self._times, key)
        bucket.add(item)

    def move(self, item: F, deadline: float) -> None:
        """Set item's deadline; re-file it only if that is before its bucket (a later one
        is seen when the bucket comes due)."""
        item.deadline = deadline
        if deadline < item.armed_at:
            self.file(item, deadline)

    def remove(self, item: F) -> None:
        if item.armed_at != INF:
            bucket = self._due.get(item.armed_at)
            if bucket is not None:
                bucket.discard(item)
            item.armed_at = INF

    def next_time(self) -> float:
        """When the earliest bucket comes due (INF if none)."""
        return self._times[0] if self._times else INF

    def pop_due(self, now: float) -> list[F]:
        """Every item whose deadline has passed, taken out of its bucket (armed_at INF); the
        others in a bucket that came due are filed again at their deadline, if any."""
        out: list[F] = []
        times, due = self._times, self._due
        while times and times[0] <= now:
            for item in due.pop(heapq.heappop(times)):
                item.armed_at = INF
                if item.deadline <= now:
                    out.append(item)
                elif item.deadline != INF:  # moved on since it was filed: a later bucket
                    self.file(item, item.deadline)
        return out

    def __len__(self) -> int:
        return sum(len(b) for b in self._due.values())


class Swept(Filed, Protocol):
    def on_deadline(self) -> None: ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class SweptDeadlines(DeadlineBuckets[Swept]):
    """Buckets for a loop that runs callbacks (asyncio): one timer, set for the earliest
    bucket, calls on_deadline() of every item in a bucket that comes due. A connection
    then costs no timer of its own, and a moved deadline moves no timer."""

    __slots__ = ("_call_at", "_time", "_timer", "_timer_at")

    def __init__(self, call_at: Callable[[float, Callable[[], None]], Cancellable], time: Callable[[], float]) -> None:
        super().__init__()
        self._call_at = call_at  # the loop's call_at(when, callback)
        self._time = time  # the loop's clock
        self._timer: Cancellable | None = None
        self._timer_at = INF

    def file(self, item: Swept, deadline: float) -> None:
        """File item at deadline, and make sure the timer comes by then."""
        super().file(item, deadline)
        if item.armed_at < self._timer_at:
            self._set_timer(item.armed_at)

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._call_at(when, self._sweep)

    def _sweep(self) -> None:
        self._timer, self._timer_at = None, INF
        for item in self.pop_due(self._time()):
            item.on_deadline()
        if self.next_time() < self._timer_at:
            self._set_timer(self.next_time())


class Timers:
    """The few exact timers a loop that waits in poll() needs besides the buckets (select:
    the work endpoint's waits, the end of an accept pause, the end of the grace period):
    a heap of (when, sequence, callback, argument). The sequence keeps timers due at the
    same time in order and spares comparing callbacks; the argument spares a closure."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[Any], object], Any]] = []
        self._seq = itertools.count()

    def call_at(self, when: float, callback: Callable[[Any], object], arg: Any = None) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), callback, arg))

    def next_time(self) -> float:
        """When the earliest timer is due (INF if none)."""
        return self._heap[0][0] if self._heap else INF

    def pop_due(self, now: float) -> Iterator[tuple[Callable[[Any], object], Any]]:
        """(callback, argument) of each timer due by now, earliest first, taken out as the
        caller goes (a timer a callback sets for now is due in the same pass)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, callback, arg = heapq.heappop(heap)
            yield callback, arg
