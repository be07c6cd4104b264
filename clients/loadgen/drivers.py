"""Drivers: one virtual client each, deciding when to send and over which connection.

A driver owns at most one connection at a time and opens a new one when it has none
(first request, server closed it, an error, or one connection per request in "new"
mode). A request that had to wait for a connection is timed from the start of the
connect, as the user of a real client would wait for it.

Closed loop: the next request (or pipelined batch) goes out when the previous response
is complete, after the optional think time.

Open loop: requests are due on a schedule (constant spacing or Poisson arrivals). A due
request goes out at once when the connection is free, timed from the moment it really
left; one that finds the connection busy waits in a queue and is timed from its
scheduled time, so a server stall is charged to the server (no coordinated omission),
while our own timer lateness is reported as schedule slip instead of server latency.
"""

from __future__ import annotations

import asyncio
import errno
import random
from collections import deque
from time import monotonic_ns

from .connection import CONNECT_ERROR, CONNECT_REFUSED, CONNECT_TIMEOUT, NO_LOCAL_PORT, READ_TIMEOUT, RESET

# uvloop's timers have millisecond resolution: a request may leave up to this much before its
# due time (it is then timed from when it really left, so no latency is hidden)
EARLY_NS = 1_000_000


class Driver:
    def __init__(self, run, index: int) -> None:
        self.run = run
        self.index = index
        self.loop = run.loop
        self.close_each = run.close_each
        self.conn = None
        self.connecting: asyncio.Task | None = None
        self.connect_started = 0
        self.connect_timed_out = False
        self.failures = 0  # consecutive failed connects, for backoff
        self.done = False
        self.handle: asyncio.TimerHandle | None = None

    # -- connections -------------------------------------------------------------------
    def connect(self) -> None:
        self.connect_started = monotonic_ns()
        self.connect_timed_out = False
        self.connecting = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        run = self.run
        conn = run.conn_class(self)
        try:
            await self.loop.create_connection(
                lambda: conn, run.address, run.port, local_addr=(run.sources.next(), 0) if run.sources else None
            )
        except asyncio.CancelledError:
            self.connecting = None
            if run.stopping or not self.connect_timed_out:
                return
            error = CONNECT_TIMEOUT
        except ConnectionRefusedError:
            error = CONNECT_REFUSED
        except TimeoutError:
            error = CONNECT_TIMEOUT
        except OSError as exc:
            error = NO_LOCAL_PORT if exc.errno == errno.EADDRNOTAVAIL else CONNECT_ERROR
        else:
            self.connecting = None
            if run.stopping:
                conn.abort()
                return
            if conn.ended:  # lost before the connect call even returned
                self.failures += 1
                self.on_connect_failed(RESET)
                return
            self.conn = conn
            self.failures = 0
            self.on_connected(conn)
            return
        self.connecting = None
        self.failures += 1
        self.on_connect_failed(error)

    def backoff(self) -> float:
        """Seconds to wait before connecting again after consecutive failures (none after the first)."""
        return 0.0 if self.failures <= 1 else min(0.001 * 2 ** (self.failures - 2), 0.1)

    def check_timeouts(self, now: int, read_timeout_ns: int, connect_timeout_ns: int) -> None:
        conn = self.conn
        if conn is not None and conn.inflight and now - conn.sent_ns > read_timeout_ns:
            conn.fail(READ_TIMEOUT)
        elif self.connecting is not None and now - self.connect_started > connect_timeout_ns:
            self.connect_timed_out = True
            self.connecting.cancel()

    def owed_since(self) -> list[int]:
        """Start times (ns) of the requests this driver took and has not finished: on the wire, or
        waiting for a connection or (open loop) for the connection to be free."""
        conn = self.conn
        return [conn.start_ns] * len(conn.inflight) if conn is not None and not conn.ended else []

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        if self.connecting is not None:
            self.connecting.cancel()
        if self.conn is not None:
            self.conn.abort()
            self.conn = None

    def budget_spent(self) -> None:
        """A request-count budget ran out (the open loop finishes idle drivers early)."""

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.run.driver_finished()

    def _drop(self, conn) -> None:
        conn.close()
        if self.conn is conn:
            self.conn = None

    def on_lost(self, conn) -> None:
        if conn is not self.conn:
            return  # not (or no longer) ours: a connection still being set up reports through _connect
        self.conn = None
        self._resume()

    def _resume(self) -> None:
        """Carry on without a connection (after it was lost, or a failed connect's backoff)."""
        raise NotImplementedError


class ClosedLoopDriver(Driver):
    """Send, wait for the whole response (or batch), think, send again."""

    def __init__(self, run, index: int) -> None:
        super().__init__(run, index)
        self.depth = run.depth
        self.think = run.think_s
        self.pending: list | None = None  # requests waiting for a connection
        self.pending_phase = None  # the phase they were taken in
        self.reconnect_after = run.reconnect_after  # None, or responses per connection before a new one
        self.served = 0  # responses on the current connection (counted only with reconnect_after)
        self.leaving = False  # the current connection has served its share: close it after this response

    def start(self) -> None:
        self.next()

    def next(self) -> None:
        self.handle = None
        run = self.run
        if run.stopping or self.done:
            return
        if self.depth == 1:
            target = run.take()
            if target is None:
                self.finish()
                return
            conn = self.conn
            if conn is None:
                self.pending, self.pending_phase = [target], run.phase
                self.connect()
                return
            now = monotonic_ns()
            conn.send(target, now, now, run.phase)
            return
        targets = run.take_many(self.depth)
        if not targets:
            self.finish()
            return
        if self.conn is None:
            self.pending, self.pending_phase = targets, run.phase
            self.connect()
            return
        self.conn.send_batch(targets, monotonic_ns(), run.phase)

    def owed_since(self) -> list[int]:
        return super().owed_since() + [self.connect_started] * len(self.pending or ())

    def on_connected(self, conn) -> None:
        self.served = 0
        targets, self.pending = self.pending, None
        if len(targets) == 1:
            conn.send(targets[0], self.connect_started, self.connect_started, self.pending_phase)
        else:
            conn.send_batch(targets, self.connect_started, self.pending_phase)

    def on_connect_failed(self, error: str) -> None:
        phase = self.pending_phase if self.run.by_send else self.run.phase
        phase.error(error, len(self.pending or ()))
        self.pending = None
        self._again(self.backoff())

    def on_response(self, conn, now: int) -> bool:
        if conn.inflight:
            return True  # the rest of a pipelined batch
        if (
            conn.server_closes
            or self.close_each
            or self.think
            or self.depth != 1
            or (self.reconnect_after and self._count_response())
        ):
            return self._after_response(conn)
        # the hot path (keep-alive, one request at a time): send the next one right here
        run = self.run
        target = run.single if run.budget is None else None
        if target is None:
            target = run.take()
            if target is None:
                self.finish()
                return True
        if run.stopping:
            return False
        conn.inflight.append(target)
        conn.start_ns = conn.sent_ns = now
        conn.phase = run.phase
        conn.transport.write(target.request)
        return True

    def _count_response(self) -> bool:
        """With reconnect_after: count a response; True when the connection has served its share."""
        self.served += 1
        self.leaving = self.served >= self.reconnect_after
        return self.leaving

    def _after_response(self, conn) -> bool:
        keep = True
        if conn.server_closes or self.close_each or self.leaving:
            self.leaving = False
            self._drop(conn)
            keep = False
        if self.think:
            self._again(self.think)
        else:
            self.next()
        return keep

    def _resume(self) -> None:
        if self.handle is None and not self.run.stopping:
            self.next()  # an idle connection the server closed is simply replaced when needed

    def _again(self, delay: float) -> None:
        if delay:
            self.handle = self.loop.call_later(delay, self.next)
        else:
            self.next()


class OpenLoopDriver(Driver):
    """Requests due on a schedule; late ones queue behind a busy connection."""

    def __init__(self, run, index: int, rate: float, phase_fraction: float, poisson: bool, seed: int) -> None:
        super().__init__(run, index)
        self.interval_ns = 1e9 / rate
        self.phase_fraction = phase_fraction  # spreads constant schedules of all drivers evenly
        self.rng = random.Random(seed) if poisson else None
        self.rate = rate
        self.due = 0.0
        self.queue: deque = deque()  # (scheduled ns, target) waiting for the connection
        self.busy = False  # a request in flight or a connect in progress
        self.pending = None  # (target, start ns) waiting for a connection
        self.exhausted = False

    def start(self) -> None:
        now = monotonic_ns()
        first = self.rng.expovariate(self.rate) * 1e9 if self.rng else self.interval_ns * self.phase_fraction
        self.due = now + first
        self._arm(now)

    def _arm(self, now: int) -> None:
        self.handle = self.loop.call_later(max(self.due - now, 0) / 1e9, self.tick)

    def set_rate(self, rate: float) -> None:
        """A new target (rate stages): the next request is due one new interval after the previous one
        (Poisson arrivals: a fresh draw from now, as they have no memory)."""
        old = self.interval_ns
        self.rate, self.interval_ns = rate, 1e9 / rate
        if self.handle is None or self.done or self.exhausted:
            return  # not started yet (start() uses the new rate), or finished
        now = monotonic_ns()
        due = now + self.rng.expovariate(rate) * 1e9 if self.rng else self.due - old + self.interval_ns
        earlier = due < self.due
        self.due = due
        if earlier:  # a later due time needs nothing: the timer, firing early, re-arms itself
            self.handle.cancel()
            self._arm(now)

    def tick(self) -> None:
        now = monotonic_ns()
        if self.run.stopping:
            return
        if now < self.due - EARLY_NS:  # fired well before the due time: wait again
            self._arm(now)
            return
        run = self.run
        sched = int(self.due)
        target = run.take()
        if target is None:
            self.exhausted = True
            self.handle = None
            if not self.busy and not self.queue:
                self.finish()
            return
        self.due += self.rng.expovariate(self.rate) * 1e9 if self.rng else self.interval_ns
        self._arm(now)
        measuring = run.phase.name == "measure"
        run.scheduled += measuring
        if self.busy:
            self.queue.append((sched, target, run.phase))
            return
        if measuring:
            run.slip.append(max(now - sched, 0) // 1000)
        self._send(target, now, run.phase)

    def _send(self, target, start_ns: int, phase) -> None:
        self.busy = True
        conn = self.conn
        if conn is None:
            self.pending = (target, start_ns, phase)
            self.connect()
            return
        conn.send(target, start_ns, monotonic_ns(), phase)

    def arrivals_before(self, end_ns: int) -> int:
        """How many more requests this schedule holds up to end_ns (a Poisson schedule is played
        forward on a copy of its generator, so the count is exact, not an estimate)."""
        if self.exhausted or self.run.stopping or self.due > end_ns:
            return 0
        if self.rng is None:
            return int((end_ns - self.due) // self.interval_ns) + 1
        rng = random.Random()
        rng.setstate(self.rng.getstate())
        due, n = self.due, 0
        while due <= end_ns:
            n += 1
            due += rng.expovariate(self.rate) * 1e9
        return n

    def owed_since(self) -> list[int]:
        waiting = [self.pending[1]] if self.pending else []
        return super().owed_since() + waiting + [sched for sched, _target, _phase in self.queue]

    def on_connected(self, conn) -> None:
        (target, start, phase), self.pending = self.pending, None
        conn.send(target, start, self.connect_started, phase)

    def on_connect_failed(self, error: str) -> None:
        phase = self.pending[2] if self.run.by_send and self.pending else self.run.phase
        self.pending = None
        self.busy = False
        phase.error(error)
        delay = self.backoff()
        if delay:
            self.busy = True  # hold queued requests back during the backoff
            self.loop.call_later(delay, self._resume)
        else:
            self._resume()

    def _resume(self) -> None:
        self.busy = False
        self._drain()

    def on_response(self, conn, now: int) -> bool:
        keep = True
        if conn.server_closes or self.close_each:
            self._drop(conn)
            keep = False
        self.busy = False
        self._drain()
        return keep

    def budget_spent(self) -> None:
        """Nothing more will come due: finish now if idle instead of at the next tick."""
        if not self.busy and not self.queue and not self.done:
            self.exhausted = True
            if self.handle is not None:
                self.handle.cancel()
                self.handle = None
            self.finish()

    def _drain(self) -> None:
        if self.run.stopping:
            return
        if self.queue:
            sched, target, phase = self.queue.popleft()
            self.run.queued_sends += phase.name == "measure"
            self._send(target, sched, phase)  # timed from when it was due: the wait is the server's doing
        elif self.exhausted:
            self.finish()
