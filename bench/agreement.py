"""Do two runs' verdicts agree? The check a reader makes before trusting a verdict: run it again.

A verdict names either one model (a winner) or a set that could not be separated (a tie,
or every model that reached the load generator's ceiling). Two verdicts on the same
scenario are:

- **same**: the same winner, or the same set;
- **consistent**: the sets overlap, a winner in one lying inside the other's tie: one
  run separated what the other could not, and neither contradicts the other;
- **different**: no model in common: the runs disagree about what to pick.

A scenario with no clean model in either run counts as "same" only when neither had one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .verdicts import Verdict

SAME, CONSISTENT, DIFFERENT = "same", "consistent", "different"


def picks(v: Verdict) -> frozenset[str]:
    """The models a verdict says to pick from: its winner, or its tie."""
    return frozenset((v.winner,)) if v.winner else frozenset(v.tie)


def agreement(before: Verdict, after: Verdict) -> str:
    a, b = picks(before), picks(after)
    if a == b:
        return SAME
    return CONSISTENT if a & b else DIFFERENT


@dataclass(frozen=True)
class Agreement:
    scenario: str
    before: Verdict
    after: Verdict
    status: str  # SAME, CONSISTENT or DIFFERENT


def compare(before: Sequence[Verdict], after: Sequence[Verdict]) -> list[Agreement]:
    """Scenario by scenario, in the later run's order, for the scenarios both runs judged."""
    earlier = {v.scenario: v for v in before}
    return [
        Agreement(v.scenario, earlier[v.scenario], v, agreement(earlier[v.scenario], v))
        for v in after
        if v.scenario in earlier
    ]


def summary(rows: Sequence[Agreement]) -> str:
    """'Verdicts: 6 of 8 the same, 2 consistent, 0 different.'"""
    count = {s: sum(r.status == s for r in rows) for s in (SAME, CONSISTENT, DIFFERENT)}
    return (
        f"Verdicts: {count[SAME]} of {len(rows)} the same, {count[CONSISTENT]} consistent "
        f"(one run separated what the other tied), {count[DIFFERENT]} different."
    )


def label(v: Verdict) -> str:
    """A verdict in a few words: 'select', 'tie: select, asyncio', 'none'."""
    if v.winner:
        return v.winner
    if v.tie:
        return ("generator-limited: " if v.kind == "generator-limited" else "tie: ") + ", ".join(v.tie)
    return "none"
