"""Latency histograms: bulk bucketing equals value-by-value recording; merging is exact; encoding lossless."""

from __future__ import annotations

import random
from array import array

from serverzoo.clients.loadgen import latency


def _values(seed: int, n: int) -> array:
    rng = random.Random(seed)
    # a realistic spread: mostly sub-millisecond, a tail to seconds, a few beyond the hour cap
    out = array("q", (int(rng.lognormvariate(5.5, 1.2)) for _ in range(n)))
    out.extend(rng.randrange(1_000_000, 5_000_000) for _ in range(n // 100))
    out.extend([0, 1, latency.HIGHEST_US + 12345])
    return out


def _counts(h) -> list[int]:
    return [h.get_count_at_index(i) for i in range(h.counts_len)]


def test_bulk_bucketing_equals_recording_one_by_one() -> None:
    values = _values(1, 20_000)
    one_by_one = latency.new_histogram()
    for v in values:
        one_by_one.record_value(min(v, latency.HIGHEST_US))
    assert _counts(latency.histogram_of(values)) == _counts(one_by_one)


def test_merging_two_histograms_equals_one_histogram_of_both() -> None:
    a, b = _values(2, 15_000), _values(3, 25_000)
    merged = latency.merge([latency.encode(latency.histogram_of(a)), latency.encode(latency.histogram_of(b))])
    both = latency.histogram_of(a + b)
    assert merged.get_total_count() == both.get_total_count() == len(a) + len(b)
    assert _counts(merged) == _counts(both)
    for p in (50, 90, 99, 99.9, 99.99, 100):
        assert merged.get_value_at_percentile(p) == both.get_value_at_percentile(p)
    assert merged.get_max_value() == both.get_max_value()


def test_encoding_is_lossless() -> None:
    h = latency.histogram_of(_values(4, 10_000))
    back = latency.decode(latency.encode(h))
    assert _counts(back) == _counts(h)
    assert back.get_total_count() == h.get_total_count()


def test_precision_is_three_significant_digits() -> None:
    h = latency.histogram_of(array("q", [123_456, 999, 1_000_001]))
    assert h.get_value_at_percentile(0.0001) == 999  # exact below 2048 us
    for v in (123_456, 1_000_001):
        assert h.values_are_equivalent(v, h.get_highest_equivalent_value(v))
        assert (h.get_highest_equivalent_value(v) - h.get_lowest_equivalent_value(v)) / v < 1e-3


def test_summary_never_reports_a_percentile_above_the_exact_max() -> None:
    values = array("q", [100] * 99 + [123_457])
    s = latency.summary(latency.histogram_of(values), latency.RawStats.of(values), extra=[75.0])
    assert s["max"] == 123_457 and s["p99.99"] == 123_457 and s["p50"] == 100 and s["p75"] == 100
    assert s["mean"] == round((99 * 100 + 123_457) / 100, 1)


def test_raw_stats_merge_exactly() -> None:
    a, b = _values(5, 1000), _values(6, 3000)
    total = latency.RawStats.of(a)
    total.add(latency.RawStats.of(b))
    both = latency.RawStats.of(a + b)
    assert total.to_dict() == both.to_dict()
