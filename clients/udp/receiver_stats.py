"""What a receiver can say about a datagram stream: counts, loss, duplicates, reordering, jitter.

Pure bookkeeping (no sockets), so the arithmetic is unit-tested on synthetic sequences.

- loss is counted net of reordering: a datagram that arrives late still arrived, so
  lost = expected - unique datagrams received, where expected is the sender's count
  (from its report request) or, without it, highest sequence number + 1.
- a duplicate is a sequence number seen before (a bitmap, exact, bounded by MAX_SEQ).
- a datagram is reordered when it arrives after one with a higher sequence number.
- jitter is RFC 3550 section 6.4.1: for consecutive arrivals i-1, i (arrival order),
  D = (R_i - R_{i-1}) - (S_i - S_{i-1}) and J += (|D| - J) / 16. Only differences of
  the two clocks are used, so sender and receiver clocks need not agree.
"""

from __future__ import annotations

# 2**26 datagrams (an 8 MiB bitmap): 11 minutes at 100k datagrams/s
MAX_SEQ = 1 << 26


class ReceiverStats:
    def __init__(self, max_seq: int = MAX_SEQ) -> None:
        self.max_seq = max_seq
        self.received = 0  # unique datagrams
        self.bytes = 0  # payload bytes of unique datagrams
        self.duplicates = 0
        self.reordered = 0
        self.reorder_max_distance = 0
        self.out_of_range = 0  # sequence numbers >= max_seq: not tracked
        self.highest_seq = -1
        self.first_arrival_ns: int | None = None
        self.last_arrival_ns: int | None = None
        self.first_size = 0
        self.jitter_ns = 0.0
        self._prev_transit: int | None = None
        self._seen = bytearray()

    def record(self, seq: int, sent_ns: int, arrival_ns: int, size: int) -> None:
        """One datagram arrived (in arrival order)."""
        if seq < 0 or seq >= self.max_seq:
            self.out_of_range += 1
            return
        byte, bit = seq >> 3, 1 << (seq & 7)
        if byte >= len(self._seen):
            # grow geometrically, never past the bitmap for max_seq
            want = min(max(byte + 1, 2 * len(self._seen), 1024), (self.max_seq + 7) >> 3)
            self._seen.extend(bytes(want - len(self._seen)))
        if self._seen[byte] & bit:
            self.duplicates += 1
            return
        self._seen[byte] |= bit
        self.received += 1
        self.bytes += size
        if seq < self.highest_seq:
            self.reordered += 1
            self.reorder_max_distance = max(self.reorder_max_distance, self.highest_seq - seq)
        else:
            self.highest_seq = seq
        if self.first_arrival_ns is None:
            self.first_arrival_ns = arrival_ns
            self.first_size = size
        self.last_arrival_ns = arrival_ns
        transit = arrival_ns - sent_ns
        if self._prev_transit is not None:
            self.jitter_ns += (abs(transit - self._prev_transit) - self.jitter_ns) / 16.0
        self._prev_transit = transit

    def expected(self, sent: int | None = None) -> int:
        return sent if sent is not None else self.highest_seq + 1

    def lost(self, sent: int | None = None) -> int:
        return max(self.expected(sent) - self.received, 0)

    def throughput_bps(self) -> float | None:
        """Payload bit rate over the receiver's own span, first to last arrival.

        n datagrams arriving at a steady rate span n - 1 gaps, so the first datagram's
        bytes are left out of the numerator (else a short run reads high)."""
        if self.first_arrival_ns is None or self.last_arrival_ns is None or self.received < 2:
            return None
        span = self.last_arrival_ns - self.first_arrival_ns
        return (self.bytes - self.first_size) * 8e9 / span if span > 0 else None

    def summary(self, sent: int | None = None) -> dict:
        expected = self.expected(sent)
        lost = self.lost(sent)
        span = (self.last_arrival_ns - self.first_arrival_ns) if self.first_arrival_ns is not None else 0
        return {
            "expected": expected,
            "received": self.received,
            "bytes": self.bytes,
            "lost": lost,
            "loss_percent": 100.0 * lost / expected if expected else 0.0,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "reorder_max_distance": self.reorder_max_distance,
            "out_of_range": self.out_of_range,
            "jitter_ms": self.jitter_ns / 1e6,
            "span_s": span / 1e9,
            "throughput_bps": self.throughput_bps(),
        }
