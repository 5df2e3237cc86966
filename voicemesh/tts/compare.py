"""The A/B compare recommendation: a pure function of the candidates' measurements."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

LENGTH_TOLERANCE = 0.25
RECOMMENDATION_RULE = (
    "lowest real-time factor (synthesis time / audio duration) among the candidates whose "
    "speed-normalised duration (duration x speed) is within 25% of the median of all "
    "candidates (an outlier length suggests a misread or cut text); ties go to the earlier "
    "candidate"
)
"""The rule, as the compare response states it."""


@dataclass(frozen=True)
class CandidateMeasure:
    """What the rule looks at for one candidate."""

    duration_s: float
    speed: float
    rtf: float


def recommend(candidates: list[CandidateMeasure]) -> int | None:
    """Index of the recommended candidate by :data:`RECOMMENDATION_RULE`; None when empty."""
    if not candidates:
        return None
    lengths = [c.duration_s * c.speed for c in candidates]
    median = statistics.median(lengths)
    eligible = [
        i
        for i, length in enumerate(lengths)
        if median <= 0 or abs(length - median) <= LENGTH_TOLERANCE * median
    ]
    pool = eligible or list(range(len(candidates)))
    return min(pool, key=lambda i: (candidates[i].rtf, i))
