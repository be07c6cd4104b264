"""When each packet leaves the userspace delay line: the scheduling, with no I/O and no clock.

One `Direction` per direction of the link, fed arrival times by its caller:
- loss: each packet is dropped at random with the profile's probability (a seeded generator,
  so a run can be repeated), before it is queued, as netem does;
- rate: the packet is serialized at the rate behind the packets before it (start = max(arrival,
  wire free), wire free = start + bits / rate), counting an Ethernet header per packet as tbf
  does on the veth path; a packet that would wait longer than queue_ms for the wire is dropped
  at the tail, as a router's queue does;
- delay: it then leaves after the one-way delay (plus a uniform jitter draw in +-jitter, as
  netem's default), but never before the packet ahead of it: departure = max(ready + delay,
  previous departure), so order is kept (a jittered path that reorders is not emulated).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from .profiles import LinkProfile

LIMIT_PACKETS = 10000  # packets a direction may hold, as the netem path's limit
ETHERNET_HEADER = 14  # counted per packet against the rate, as tbf counts it on a veth


@dataclass(frozen=True)
class LineSettings:
    delay_s: float = 0.0
    jitter_s: float = 0.0
    rate_bps: float | None = None  # bits per second per direction; None: no cap
    queue_s: float = 0.05  # longest wait for the wire before a tail drop (with a rate)
    loss: float = 0.0  # probability, 0..1
    limit_packets: int = LIMIT_PACKETS

    @classmethod
    def from_profile(cls, profile: LinkProfile) -> LineSettings:
        return cls(
            delay_s=profile.delay_ms / 1e3,
            jitter_s=profile.jitter_ms / 1e3,
            rate_bps=profile.rate_mbit * 1e6 if profile.rate_mbit else None,
            queue_s=profile.queue_ms / 1e3,
            loss=profile.loss_percent / 100,
        )

    def to_dict(self) -> dict:
        return asdict(self)


class Direction:
    """One direction's FIFO: offer() packets as they arrive, take them back with due()."""

    def __init__(self, settings: LineSettings, rng: random.Random) -> None:
        self.settings = settings
        self.rng = rng
        self.queue: deque[tuple[float, Any]] = deque()  # (departure, packet), departures non-decreasing
        self.wire_free = float("-inf")
        self.last_departure = float("-inf")
        self.offered = self.lost = self.queue_drops = self.limit_drops = 0
        self.sent = self.sent_bytes = self.max_queued = 0

    def offer(self, now: float, packet: Any, size: int) -> float | None:
        """Queue a packet of `size` bytes that arrived at `now`: its departure time, or None if dropped."""
        s = self.settings
        self.offered += 1
        if s.loss and self.rng.random() < s.loss:
            self.lost += 1
            return None
        if len(self.queue) >= s.limit_packets:
            self.limit_drops += 1
            return None
        ready = now
        if s.rate_bps:
            start = max(now, self.wire_free)
            if start - now > s.queue_s:
                self.queue_drops += 1
                return None
            self.wire_free = ready = start + (size + ETHERNET_HEADER) * 8 / s.rate_bps
        delay = s.delay_s + (self.rng.uniform(-s.jitter_s, s.jitter_s) if s.jitter_s else 0.0)
        departure = max(ready + max(delay, 0.0), self.last_departure)
        self.last_departure = departure
        self.queue.append((departure, packet))
        self.max_queued = max(self.max_queued, len(self.queue))
        return departure

    def next_departure(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def due(self, now: float) -> Iterator[tuple[float, Any]]:
        """Pop the packets whose departure time has come, in order: (departure, packet)."""
        queue = self.queue
        while queue and queue[0][0] <= now:
            yield queue.popleft()

    def counters(self) -> dict:
        return {
            "offered": self.offered,
            "sent": self.sent,
            "sent_bytes": self.sent_bytes,
            "lost": self.lost,
            "queue_drops": self.queue_drops,
            "limit_drops": self.limit_drops,
            "queued": len(self.queue),
            "max_queued": self.max_queued,
        }


class Lateness:
    """How late packets left compared with their departure time: a histogram in microseconds,
    1 us steps below 1 ms, 100 us steps above (percentiles to within a step)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.max_us = 0

    def record(self, seconds: float) -> None:
        us = int(seconds * 1e6)
        key = us if us < 1000 else us - us % 100
        self.counts[key] = self.counts.get(key, 0) + 1
        self.count += 1
        self.max_us = max(self.max_us, us)

    def percentile(self, p: float) -> int | None:
        if not self.count:
            return None
        rank = max(1, -(-p * self.count // 100))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return key
        return self.max_us

    def summary(self) -> dict:
        return {
            "count": self.count,
            "p50_us": self.percentile(50),
            "p99_us": self.percentile(99),
            "max_us": self.max_us if self.count else None,
        }
