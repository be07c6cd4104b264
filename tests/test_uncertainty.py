"""Confidence intervals and the 'clearly ahead' rule, on tables of made-up samples."""

import math
import statistics

import pytest

from serverzoo.bench import uncertainty as u


@pytest.mark.parametrize(
    "df, expected", [(1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042), (40, 2.021), (120, 1.980), (10_000, 1.960)]
)
def test_t_quantiles_match_the_table_and_the_expansion(df, expected):
    assert u._t95(df) == pytest.approx(expected, abs=0.002)


def test_samples_give_a_student_t_interval_on_their_mean():
    e = u.from_samples([100.0, 104.0, 96.0])
    assert e.value == 100.0
    assert e.half_width == pytest.approx(4.303 * 4.0 / math.sqrt(3), rel=1e-3)
    assert (e.n, e.method) == (3, "repetitions")
    assert e.low < 100.0 < e.high


def test_one_sample_has_an_unmeasured_noise():
    e = u.from_samples([42.0])
    assert e.value == 42.0 and not e.measured and e.to_dict()["half_width"] is None
    assert e.relative_half_width == math.inf


def test_batch_means_value_is_the_overall_rate_and_noise_comes_from_batches():
    # ten 0.1 s slices, 1,000 requests each: a perfectly steady 10,000 req/s
    steady = u.batch_means([1000] * 10, [0.1] * 10)
    assert steady.value == pytest.approx(10_000)
    assert steady.half_width == pytest.approx(0.0, abs=1e-6)
    assert (steady.n, steady.method) == (5, "batch-means")
    # the same total with a slow second half: the overall rate is unchanged, the interval wide
    uneven = u.batch_means([1500] * 5 + [500] * 5, [0.1] * 10)
    assert uneven.value == pytest.approx(10_000)
    assert uneven.relative_half_width > 0.3


def test_batch_means_weights_slices_by_their_duration():
    e = u.batch_means([100, 100, 100], [0.1, 0.1, 0.2], batches=3)
    assert e.value == pytest.approx(300 / 0.4)


@pytest.mark.parametrize("amounts, durations", [([1, 2], [0.1, 0.1]), ([5], [1.0])])
def test_too_few_slices_leave_the_noise_unmeasured(amounts, durations):
    assert not u.batch_means(amounts, durations).measured


def test_batch_means_rejects_bad_input():
    with pytest.raises(ValueError):
        u.batch_means([1, 2], [0.1])
    with pytest.raises(ValueError):
        u.batch_means([1], [0.0])


def test_pooling_three_repetitions_uses_their_spread():
    reps = [u.Estimate(v, 1.0, 5, "batch-means") for v in (90.0, 100.0, 110.0)]
    pooled = u.pool(reps)
    assert pooled.method == "repetitions" and pooled.value == 100.0
    assert pooled.half_width == pytest.approx(u._t95(2) * 10.0 / math.sqrt(3), rel=1e-6)


def test_pooling_fewer_repetitions_keeps_the_larger_noise():
    tight_but_apart = u.pool([u.Estimate(90.0, 1.0, 5, "batch-means"), u.Estimate(110.0, 1.0, 5, "batch-means")])
    assert tight_but_apart.method == "pooled"
    assert tight_but_apart.half_width == pytest.approx(12.706 * statistics.stdev([90, 110]) / math.sqrt(2))
    agreeing_but_noisy = u.pool([u.Estimate(100.0, 20.0, 5, "batch-means"), u.Estimate(100.0, 20.0, 5, "batch-means")])
    # each repetition: se = 20 / t(4); the mean of two: se / sqrt(2) with Welch df = 8
    se = 20.0 / u._t95(4) / math.sqrt(2)
    assert agreeing_but_noisy.half_width == pytest.approx(u._t95(8) * se)
    assert agreeing_but_noisy.degrees_of_freedom == pytest.approx(8.0)
    assert agreeing_but_noisy.standard_error == pytest.approx(se)
    only = u.Estimate(5.0, 1.0, 5, "batch-means")
    assert u.pool([only]) is only


def test_a_pooled_interval_from_batches_keeps_its_degrees_of_freedom():
    # Two cells of two repetitions each; the repetitions agree, so each interval is its
    # batches' (se 1.02, df 8), not the repetitions' (df 1). The difference: se 1.44, Welch
    # df 16, about +-3.05. Read back with df 1, the standard errors came out 5.5 times too
    # small and the difference test then used t(1): about +-4.0, too wide for a 3.5% lead.
    a = u.pool([u.Estimate(103.5, 4.0, 5, "batch-means")] * 2)
    b = u.pool([u.Estimate(100.0, 4.0, 5, "batch-means")] * 2)
    assert (a.method, a.degrees_of_freedom) == ("pooled", pytest.approx(8.0))
    assert u.combined_half_width(a, b) == pytest.approx(u._t95(16) * math.hypot(a.standard_error, b.standard_error))
    assert u.clearly_ahead(a, b)
    assert not u.clearly_ahead(u.pool([u.Estimate(102.0, 4.0, 5, "batch-means")] * 2), b)


def test_repetitions_that_disagree_keep_one_degree_of_freedom():
    e = u.pool([u.Estimate(90.0, 1.0, 5, "batch-means"), u.Estimate(110.0, 1.0, 5, "batch-means")])
    assert e.degrees_of_freedom == 1.0
    assert e.standard_error == pytest.approx(statistics.stdev([90, 110]) / math.sqrt(2))


def test_estimates_round_trip_through_json_and_old_runs_read_as_n_minus_one():
    e = u.pool([u.Estimate(100.0, 20.0, 5, "batch-means")] * 2)
    assert u.Estimate.from_dict(e.to_dict()) == e
    old = u.Estimate.from_dict({"value": 1.0, "half_width": 0.1, "n": 5, "method": "batch-means"})
    assert old.degrees_of_freedom == 4.0
    assert not u.Estimate.from_dict({"value": 1.0, "half_width": None}).measured


# a, b, higher_is_better, clearly ahead?
AHEAD = [
    (u.Estimate(110, 3, 5, "x"), u.Estimate(100, 3, 5, "x"), True, True),  # 10 > 3.52
    (u.Estimate(104, 4, 5, "x"), u.Estimate(100, 4, 5, "x"), True, False),  # 4 < 4.70: a tie
    (u.Estimate(100, 3, 5, "x"), u.Estimate(110, 3, 5, "x"), True, False),  # behind
    (u.Estimate(5.0, 0.2, 5, "x"), u.Estimate(6.0, 0.2, 5, "x"), False, True),  # lower latency wins
    (u.single(200), u.Estimate(100, 1, 5, "x"), True, False),  # one sample decides nothing
]


@pytest.mark.parametrize("a, b, higher, expected", AHEAD)
def test_clearly_ahead_needs_a_lead_beyond_the_combined_noise(a, b, higher, expected):
    assert u.clearly_ahead(a, b, higher) is expected


def test_the_difference_interval_is_welchs():
    a, b = u.from_samples([100.0, 104.0, 96.0]), u.from_samples([90.0, 91.0, 89.0, 90.0])
    se_a, se_b = 4.0 / math.sqrt(3), statistics.stdev([90, 91, 89, 90]) / math.sqrt(4)
    df = (se_a**2 + se_b**2) ** 2 / (se_a**4 / 2 + se_b**4 / 3)
    assert u.combined_half_width(a, b) == pytest.approx(u._t95(math.floor(df)) * math.hypot(se_a, se_b))
    # with few samples on both sides, tighter than the two intervals in quadrature (each with only its own df)
    c = u.from_samples([90.0, 94.0, 86.0])
    assert u.combined_half_width(a, c) == pytest.approx(u._t95(4) * math.hypot(*[4.0 / math.sqrt(3)] * 2))
    assert u.combined_half_width(a, c) < math.hypot(a.half_width, c.half_width)
    assert u.combined_half_width(a, u.single(90.0)) == math.inf


def test_lead_is_relative_and_signed_by_direction():
    assert u.lead(u.single(110), u.single(100)) == pytest.approx(0.10)
    assert u.lead(u.single(90), u.single(100), higher_is_better=False) == pytest.approx(0.10)
    assert u.lead(u.single(1), u.single(0)) == math.inf


def test_batches_are_contiguous_and_nearly_equal():
    assert u.batch_ranges(10) == [range(2), range(2, 4), range(4, 6), range(6, 8), range(8, 10)]
    assert [len(r) for r in u.batch_ranges(7, 3)] == [2, 2, 3]
    assert u.batch_ranges(2) == [range(1), range(1, 2)]


def test_batch_figures_that_are_not_rates_give_an_interval_around_the_whole():
    e = u.from_batches(1000.0, [950.0, 1000.0, 1050.0])
    assert (e.value, e.n, e.method) == (1000.0, 3, "batch-means")
    assert e.half_width == pytest.approx(u._t95(2) * 50 / math.sqrt(3))
    assert not u.from_batches(1000.0, [990.0, 1010.0]).measured


def test_scaled_keeps_the_relative_noise():
    e = u.scaled(u.Estimate(100.0, 5.0, 5, "batch-means"), 200.0)
    assert (e.value, e.half_width, e.n, e.method) == (200.0, 10.0, 5, "batch-means")
    assert not u.scaled(u.single(100.0), 50.0).measured


@pytest.mark.parametrize("a, b, higher, expected", AHEAD)
def test_the_p_value_agrees_with_the_interval(a, b, higher, expected):
    """p < 0.05 exactly when the difference lies outside its 95% interval (the one clearly_ahead uses)."""
    p = u.difference_p_value(a, b)
    beyond = abs(a.value - b.value) > u.combined_half_width(a, b)
    assert (p < 0.05) is beyond
    assert u.difference_p_value(b, a) == p


def test_the_p_value_at_the_edge_of_the_interval_is_five_percent():
    a, b = u.Estimate(100.0, 3.0, 5, "x"), u.Estimate(100.0, 3.0, 5, "x")
    edge = u.combined_half_width(a, b)
    p = u.difference_p_value(u.Estimate(100.0 + edge, 3.0, 5, "x"), b)
    assert p == pytest.approx(0.05, abs=5e-4)  # the table's t quantiles carry three decimals


def test_p_values_of_brackets_and_unmeasured_figures():
    assert u.difference_p_value(u.bracket(110, 120), u.bracket(100, 105)) == 0.0  # one held what the other failed
    assert u.difference_p_value(u.bracket(105, 115), u.bracket(100, 110)) == 1.0
    assert u.difference_p_value(u.single(200), u.Estimate(100, 1, 5, "x")) == 1.0
