"""Latency histograms: raw values recorded cheaply, bucketed in bulk, saved lossless and mergeable.

During a run a connection only appends integer microseconds to an array('q') (about
0.16 us, against 1.4 us for HdrHistogram.record_value). After the run the values are
counted with collections.Counter (C speed) and each distinct value enters the histogram
once with its count. The histogram is HdrHistogram (microseconds, 1 us to 1 hour,
3 significant digits); its encoded form (V2, compressed, base64) is what results carry,
and adding two decoded histograms is exact at that precision, so runs and worker
processes merge without loss.
"""

from __future__ import annotations

from array import array
from collections import Counter
from typing import Iterable

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour; longer values are clamped to it
SIGNIFICANT_DIGITS = 3
FORMAT = "HdrHistogram V2 compressed, base64; microseconds, 1 us..1 h, 3 significant digits"

# A request still owed when the window closed is a stall, not the tail of the distribution,
# once it has waited this many times as long as the slowest response that came back: a
# download in flight at the end is naturally a little older than the slowest finished one.
STALLED_BEYOND_SLOWEST = 2

# the percentiles every summary carries, and their keys
STANDARD_PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def histogram_of(values: Iterable[int]) -> HdrHistogram:
    """Bucket raw microsecond values in bulk (one record per distinct value)."""
    hist = new_histogram()
    for value, count in Counter(values).items():
        hist.record_value(min(max(value, 0), HIGHEST_US), count)
    return hist


def encode(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


def decode(encoded: str) -> HdrHistogram:
    return HdrHistogram.decode(encoded.encode("ascii"))


def merge(encoded: Iterable[str]) -> HdrHistogram:
    """One histogram holding every value of the encoded ones (exact at the histogram's precision)."""
    total = new_histogram()
    for text in encoded:
        total.add(decode(text))
    return total


def percentile_key(p: float) -> str:
    """50.0 -> 'p50', 99.9 -> 'p99.9'."""
    return "p" + (f"{p:.6f}".rstrip("0").rstrip("."))


class RawStats:
    """Exact count, sum, min and max beside the histogram (the histogram rounds to 3 digits)."""

    __slots__ = ("count", "total", "low", "high")

    def __init__(self, count: int = 0, total: int = 0, low: int | None = None, high: int = 0) -> None:
        self.count, self.total, self.low, self.high = count, total, low, high

    @classmethod
    def of(cls, values: array) -> "RawStats":
        if not values:
            return cls()
        return cls(len(values), sum(values), min(values), max(values))

    def add(self, other: "RawStats") -> None:
        self.count += other.count
        self.total += other.total
        if other.low is not None:
            self.low = other.low if self.low is None else min(self.low, other.low)
        self.high = max(self.high, other.high)

    def to_dict(self) -> dict:
        return {"count": self.count, "sum_us": self.total, "min_us": self.low, "max_us": self.high}

    @classmethod
    def from_dict(cls, d: dict) -> "RawStats":
        return cls(d["count"], d["sum_us"], d["min_us"], d["max_us"])


def summary(hist: HdrHistogram, raw: RawStats, extra: Iterable[float] = ()) -> dict:
    """mean/max exact from the raw values, percentiles from the histogram (upper bucket edge)."""
    wanted = sorted(set(STANDARD_PERCENTILES) | set(extra))
    out: dict[str, float | int | None] = {"mean": round(raw.total / raw.count, 1) if raw.count else None}
    values = hist.get_percentile_to_value_dict(wanted) if raw.count else {}
    for p in wanted:
        # never report a percentile above the exact maximum (the bucket edge can exceed it)
        out[percentile_key(p)] = min(values[p], raw.high) if raw.count else None
    out["max"] = raw.high if raw.count else None
    out["min"] = raw.low
    out["count"] = raw.count
    return out
