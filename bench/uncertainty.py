"""How sure a figure is: confidence intervals for benchmark cells, and when one cell is clearly ahead.

Pure arithmetic on lists of numbers (no I/O, no clock), shared by the runner (is this cell
measured tightly enough yet?), the verdicts (is the leader's lead larger than the noise?) and
`compare` (is this change larger than the noise?).

Where the samples come from:

- **Repetitions.** Each repetition of a cell starts a fresh server, so repetitions are
  independent samples of the cell's figure; with three or more, their spread is the
  uncertainty (a Student-t interval on their mean).
- **Slices of one repetition.** A load generator's per-interval timeline is a series of
  short, autocorrelated samples (a GC pause or a descheduled core spans neighbours). Batch
  means group the series into a few contiguous batches, long enough to be nearly
  independent, and treat each batch's rate as one sample; so even a single repetition says
  how steady it was. It cannot see what changes between server starts (memory layout, which
  core was busy), which is why repetitions are preferred when there are enough of them.

- **A search's bracket.** A capacity search (`serverzoo load --find-capacity`) ends with
  the highest rate that held and the lowest that failed; the capacity lies between them,
  and nothing finer is known. Such a figure is an interval without a distribution: two
  capacities are told apart only when one model held at a rate the other failed at.

"Clearly ahead" means the difference of two estimates is larger than its own uncertainty:
the lead exceeds the 95% half-width of the difference of two independent means (Welch's
interval: the two standard errors in quadrature, times the t quantile of the
Welch-Satterthwaite degrees of freedom). With few samples this is tighter than adding the
two intervals' own half-widths in quadrature, whose t quantiles each carry only one side's
degrees of freedom, and it is the interval a two-sample t test at 5% uses.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95
MIN_BATCHES = 3  # fewer batches than this give an interval too wide to mean anything
DEFAULT_BATCHES = 5

# Two-sided 95% Student-t quantiles by degrees of freedom (1-30); beyond 30 the expansion
# in _t95 is within 0.1% of the exact value.
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def _t95(df: int) -> float:
    if df < 1:
        raise ValueError("a t quantile needs at least one degree of freedom")
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% confidence interval and what the interval rests on.

    `df` is the degrees of freedom of the interval's t quantile. It is n - 1 for a plain
    Student-t interval (the default, left as None), but not for a pooled figure, whose
    interval may come from its repetitions' timeline batches: turning such a half-width back
    into a standard error with n - 1 would shrink it several times over (t(1) = 12.7 against
    t(8) = 2.3) and make a difference look significant when it is not.
    """

    value: float
    half_width: float  # math.inf when nothing measured the noise (a single sample)
    n: int  # independent samples behind it (repetitions, or batches of one repetition)
    method: str  # "repetitions", "batch-means", "pooled", "bracket" or "single"
    df: float | None = None  # degrees of freedom behind half_width; None means n - 1

    @property
    def degrees_of_freedom(self) -> float:
        return self.df if self.df is not None else float(self.n - 1)

    @property
    def standard_error(self) -> float:
        """The half-width divided by its own t quantile (inf when the noise is unmeasured)."""
        if not self.measured or self.degrees_of_freedom < 1:
            return math.inf
        return self.half_width / _t95(math.floor(self.degrees_of_freedom))

    @property
    def low(self) -> float:
        return self.value - self.half_width

    @property
    def high(self) -> float:
        return self.value + self.half_width

    @property
    def relative_half_width(self) -> float:
        """Half-width as a fraction of the value (inf for a zero value or an unmeasured noise)."""
        return self.half_width / abs(self.value) if self.value else math.inf

    @property
    def measured(self) -> bool:
        """Whether anything measured the noise (a single sample did not)."""
        return math.isfinite(self.half_width)

    def to_dict(self) -> dict[str, object]:
        return {
            "value": self.value,
            "half_width": self.half_width if self.measured else None,
            "n": self.n,
            "method": self.method,
            "df": self.df,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        """The inverse of to_dict; runs stored before `df` was recorded get n - 1."""
        hw, df = d.get("half_width"), d.get("df")
        return cls(
            float(d["value"]),
            math.inf if hw is None else float(hw),
            int(d.get("n", 1)),
            str(d.get("method", "single")),
            None if df is None else float(df),
        )


def single(value: float) -> Estimate:
    """One sample: its value, and no idea of its noise."""
    return Estimate(float(value), math.inf, 1, "single")


def bracket(held: float, failed: float) -> Estimate:
    """A capacity known to lie between the highest rate that held and the lowest that failed: the
    middle of the two, and half their distance (the interval is the bracket itself)."""
    if not held < failed:
        raise ValueError(f"not a bracket: held {held:g}, failed {failed:g}")
    return Estimate((held + failed) / 2, (failed - held) / 2, 1, "bracket")


def from_samples(samples: Sequence[float], method: str = "repetitions") -> Estimate:
    """Mean and Student-t interval of independent samples (two or more)."""
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("no samples")
    if len(values) == 1:
        return single(values[0])
    mean = statistics.fmean(values)
    sd = statistics.stdev(values, mean)
    return Estimate(mean, _t95(len(values) - 1) * sd / math.sqrt(len(values)), len(values), method)


def batch_means(amounts: Sequence[float], durations: Sequence[float], batches: int = DEFAULT_BATCHES) -> Estimate:
    """The rate of a series of slices (amount per second), with an interval from batch means.

    `amounts[i]` happened during `durations[i]` seconds (requests, or bytes). The slices are
    grouped, in order, into `batches` batches of (nearly) equal slice counts; each batch's
    rate is sum(amounts) / sum(durations). The value is the overall rate, so it agrees with
    the cell's own figure; the interval comes from the spread of the batch rates. With fewer
    than MIN_BATCHES slices the noise is unmeasured (an infinite half-width).
    """
    if len(amounts) != len(durations):
        raise ValueError("amounts and durations differ in length")
    total_time = sum(durations)
    if total_time <= 0:
        raise ValueError("no measured time")
    rates = []
    for r in batch_ranges(len(amounts), batches):
        t = sum(durations[i] for i in r)
        if t > 0:
            rates.append(sum(amounts[i] for i in r) / t)
    return from_batches(sum(amounts) / total_time, rates)


def batch_ranges(n: int, batches: int = DEFAULT_BATCHES) -> list[range]:
    """Indexes of n slices split, in order, into min(batches, n) contiguous batches of nearly equal size."""
    k = min(batches, n)
    return [range(b * n // k, (b + 1) * n // k) for b in range(k)]


def from_batches(overall: float, batch_values: Sequence[float]) -> Estimate:
    """A figure of the whole window, with the interval the spread of its batches' own figures gives.

    For figures that are not rates (a p99 of each batch's merged latencies, say) the caller
    computes each batch's figure; fewer than MIN_BATCHES leave the noise unmeasured.
    """
    if len(batch_values) < MIN_BATCHES:
        return Estimate(float(overall), math.inf, 1, "single")
    spread = from_samples(batch_values)
    return Estimate(float(overall), spread.half_width, len(batch_values), "batch-means")


def scaled(estimate: Estimate, value: float) -> Estimate:
    """The same relative uncertainty around another value (a cell's own figure, when its batches' total differs
    slightly, e.g. by requests completed at the window's edge)."""
    if not estimate.measured:
        return Estimate(float(value), math.inf, estimate.n, estimate.method, estimate.df)
    return Estimate(float(value), estimate.relative_half_width * abs(value), estimate.n, estimate.method, estimate.df)


def pool(estimates: Sequence[Estimate], min_repetitions: int = 3) -> Estimate:
    """One cell's figure from its repetitions' estimates.

    With `min_repetitions` or more, the repetitions themselves are the samples (they see the
    noise between server starts). With fewer, the value is their mean and the interval the
    wider of two: what the few repetitions disagree by (a t interval with k - 1 degrees of
    freedom), and what their own intervals say of the mean (standard errors in quadrature,
    Welch-Satterthwaite degrees of freedom). The result keeps the degrees of freedom of the
    interval it took, so a later difference test uses the right t quantile.
    """
    if not estimates:
        raise ValueError("no estimates")
    values = [e.value for e in estimates]
    if any(e.method == "bracket" for e in estimates):
        # repeated capacity searches: what they disagree by, but never finer than a search resolves
        spread = from_samples(values).half_width if len(values) > 1 else 0.0
        return Estimate(
            statistics.fmean(values), max(spread, *(e.half_width for e in estimates)), len(estimates), "bracket"
        )
    if len(estimates) >= min_repetitions:
        return from_samples(values)
    if len(estimates) == 1:
        return estimates[0]
    k = len(estimates)
    mean = statistics.fmean(values)
    between = from_samples(values)
    parts = [e.standard_error / k for e in estimates]
    if not all(math.isfinite(p) for p in parts):
        return Estimate(mean, between.half_width, k, "pooled", between.degrees_of_freedom)
    se_within = math.sqrt(sum(p * p for p in parts))
    df_within = _welch_df(parts, [e.degrees_of_freedom for e in estimates])
    within = se_within * _t95(max(1, math.floor(min(df_within, 1e9)))) if se_within else 0.0
    if within > between.half_width:
        return Estimate(mean, within, k, "pooled", df_within)
    return Estimate(mean, between.half_width, k, "pooled", between.degrees_of_freedom)


def _welch_df(standard_errors: Sequence[float], dfs: Sequence[float]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of independent terms (inf when all are exact)."""
    total = sum(se * se for se in standard_errors)
    denominator = sum(se**4 / df for se, df in zip(standard_errors, dfs))
    return total * total / denominator if denominator else math.inf


def lead(a: Estimate, b: Estimate, higher_is_better: bool = True) -> float:
    """How far a is ahead of b, as a fraction of b (negative when behind)."""
    if not b.value:
        return math.inf if (a.value > 0) == higher_is_better else -math.inf
    diff = (a.value - b.value) / abs(b.value)
    return diff if higher_is_better else -diff


def combined_half_width(a: Estimate, b: Estimate) -> float:
    """The 95% half-width of the difference a - b (Welch's interval): inf when either noise is unmeasured."""
    if not (a.measured and b.measured) or a.degrees_of_freedom < 1 or b.degrees_of_freedom < 1:
        return math.inf
    se_a, se_b = a.standard_error, b.standard_error
    se = math.hypot(se_a, se_b)
    if se == 0:
        return 0.0
    df = _welch_df([se_a, se_b], [a.degrees_of_freedom, b.degrees_of_freedom])
    return _t95(max(1, math.floor(min(df, 1e9)))) * se


def difference_p_value(a: Estimate, b: Estimate) -> float:
    """The two-sided p-value of Welch's test that a and b measure the same thing (1.0 when either
    noise is unmeasured).

    It agrees with combined_half_width: p < 0.05 exactly when |a - b| exceeds the 95% half-width
    (both use the Welch-Satterthwaite degrees of freedom rounded down). A search's bracket has no
    distribution: 0.0 when the two intervals are disjoint (one held a rate the other failed at),
    else 1.0.
    """
    if not (a.measured and b.measured):
        return 1.0
    if "bracket" in (a.method, b.method):
        return 0.0 if a.low >= b.high or b.low >= a.high else 1.0
    if a.degrees_of_freedom < 1 or b.degrees_of_freedom < 1:
        return 1.0
    se_a, se_b = a.standard_error, b.standard_error
    se = math.hypot(se_a, se_b)
    diff = abs(a.value - b.value)
    if se == 0:
        return 0.0 if diff else 1.0
    from scipy.stats import t  # imported here: only comparisons of two runs need it, and it is slow to load

    df = max(1, math.floor(min(_welch_df([se_a, se_b], [a.degrees_of_freedom, b.degrees_of_freedom]), 1e9)))
    return float(2 * t.sf(diff / se, df))


def clearly_ahead(a: Estimate, b: Estimate, higher_is_better: bool = True) -> bool:
    """Whether a's lead over b is larger than the uncertainty of their difference.

    Never true when either noise is unmeasured: one sample cannot separate two models. A search's
    bracket has no distribution to combine: a is ahead only when its interval lies wholly beyond
    b's (with brackets: a held at a rate b failed at).
    """
    if not (a.measured and b.measured):
        return False
    if "bracket" in (a.method, b.method):
        return a.low >= b.high if higher_is_better else a.high <= b.low
    diff = a.value - b.value if higher_is_better else b.value - a.value
    return diff > combined_half_width(a, b)
