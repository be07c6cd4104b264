"""Rate stages: an open loop whose target rate steps (-R 1000,2000 --stage 10s) or ramps (-R 1000..8000 --ramp 30s).

The measured window is cut into stages, each reported apart (target, achieved rate,
latency, errors), so one run shows where latency starts to climb with the offered load.
Steps hold each rate for one stage. A ramp changes the rate linearly over the window;
the workers follow it in small steps (RAMP_STEP_S, each at the ramp's rate at its middle,
so a stretch's mean target is the line's), and the ramp is reported in segments of
--stage (default a tenth of the ramp). Warm-up runs at the first rate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .options import OptionError

RAMP_STEP_S = 0.1  # the workers' rate changes this often along a ramp (or 20 times in a shorter one)
RAMP_SEGMENTS = 10  # a ramp without --stage is reported in this many segments
MIN_STAGE_S = 0.05  # shorter stages would hold a handful of requests and one timer's jitter

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_RAMP = re.compile(rf"^\s*{_NUMBER}\s*\.\.\s*{_NUMBER}\s*$")


@dataclass(frozen=True)
class RateSchedule:
    """The target rate over the measured window: steps (ramp_s None) or a linear ramp.

    rates: each step's rate, or a ramp's first and last rate; stage_s: each step's length,
    or the length of a ramp's reported segments.
    """

    rates: tuple[float, ...]
    stage_s: float
    ramp_s: float | None = None

    @property
    def duration_s(self) -> float:
        return self.ramp_s if self.ramp_s is not None else len(self.rates) * self.stage_s

    @property
    def lowest(self) -> float:
        return min(self.rates)

    @property
    def mean(self) -> float:
        """The mean target over the whole window."""
        return sum(self.rates) / len(self.rates)

    def rate_at(self, t: float) -> float:
        """The target rate t seconds into the measured window (clamped to the window)."""
        if self.ramp_s is not None:
            start, end = self.rates
            return start + (end - start) * min(max(t / self.ramp_s, 0.0), 1.0)
        return self.rates[min(max(int(t // self.stage_s), 0), len(self.rates) - 1)]

    def stages(self) -> list[tuple[float, float, float]]:
        """(start s, end s, mean target rate) of each reported stage."""
        if self.ramp_s is None:
            return [(i * self.stage_s, (i + 1) * self.stage_s, r) for i, r in enumerate(self.rates)]
        n = max(1, math.ceil(self.ramp_s / self.stage_s - 1e-9))
        out = []
        for i in range(n):
            start, end = i * self.stage_s, min((i + 1) * self.stage_s, self.ramp_s)
            out.append((start, end, self.rate_at((start + end) / 2)))  # linear: the middle's rate is the mean
        return out

    def changes(self) -> list[tuple[float, float]]:
        """(seconds into the window, new total rate): when the workers change their rate, after the first."""
        if self.ramp_s is None:
            return [(i * self.stage_s, r) for i, r in enumerate(self.rates)][1:]
        step = min(RAMP_STEP_S, self.ramp_s / 20)
        n = math.ceil(self.ramp_s / step - 1e-9)
        return [(k * step, self.rate_at((k + 0.5) * step)) for k in range(1, n)]

    def first_rate(self) -> float:
        """The rate the window (and the warm-up before it) starts at."""
        if self.ramp_s is None:
            return self.rates[0]
        return self.rate_at(min(RAMP_STEP_S, self.ramp_s / 20) / 2)


def parse_rate(text: str, stage_s: float | None, ramp_s: float | None) -> tuple[float, RateSchedule | None]:
    """-R's text with --stage and --ramp -> (the first rate, the schedule or None). OptionError when malformed.

    '2000' is one rate; '1000,2000,4000' needs --stage (each stage's length); '1000..8000'
    needs --ramp (its length) and takes --stage as the length of its reported segments.
    """
    ramp = _RAMP.match(text)
    if ramp:
        if ramp_s is None:
            raise OptionError(f"-R {text}: a ramp needs --ramp DURATION (e.g. -R 1000..8000 --ramp 30s)")
        start, end = float(ramp.group(1)), float(ramp.group(2))
        _positive(text, (start, end))
        _check_length("--ramp", ramp_s)
        segment = stage_s if stage_s is not None else ramp_s / RAMP_SEGMENTS
        _check_length("--stage", segment)
        if segment > ramp_s:
            raise OptionError(f"--stage {segment:g}s is longer than --ramp {ramp_s:g}s")
        schedule = RateSchedule((start, end), segment, ramp_s)
        return schedule.first_rate(), schedule
    parts = text.split(",")
    try:
        rates = tuple(float(p) for p in parts)
    except ValueError:
        raise OptionError(
            f"-R {text}: not a rate (examples: 2000, 1000,2000,4000 with --stage, 1000..8000 with --ramp)"
        ) from None
    if not all(math.isfinite(r) for r in rates):
        raise OptionError(f"-R {text}: rates are finite numbers")
    _positive(text, rates)
    if ramp_s is not None:
        raise OptionError(f"--ramp needs a range of rates: -R FROM..TO (got -R {text})")
    if len(rates) == 1:
        if stage_s is not None:
            raise OptionError(f"--stage needs several rates (-R 1000,2000,4000) or a ramp (got -R {text})")
        return rates[0], None
    if stage_s is None:
        raise OptionError(f"-R {text}: several rates need --stage DURATION, each one's length (e.g. --stage 10s)")
    _check_length("--stage", stage_s)
    return rates[0], RateSchedule(rates, stage_s)


def _positive(text: str, rates: tuple[float, ...]) -> None:
    if any(r <= 0 for r in rates):
        raise OptionError(f"-R {text}: rates must be positive")


def _check_length(name: str, seconds: float) -> None:
    if seconds < MIN_STAGE_S:
        raise OptionError(f"{name} must be at least {MIN_STAGE_S:g} s (got {seconds:g} s)")
