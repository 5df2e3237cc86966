"""The A/B compare recommendation: a pure function of the candidates' measurements."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

Metric = Literal["rtf", "latency_ms", "duration_seconds"]
LENGTH_TOLERANCE = 0.25
METRIC_WORDS: dict[str, str] = {
    "rtf": "real-time factor (synthesis time / audio duration)",
    "latency_ms": "latency (ms from the start of the synthesis to its audio)",
    "duration_seconds": "audio duration (s)",
}


def recommendation_rule(metric: Metric = "rtf") -> str:
    """The rule :func:`recommend` applies for ``metric``, in words."""
    return (
        f"lowest {METRIC_WORDS[metric]} among the candidates whose speed-normalised duration "
        "(duration x speed) is within 25% of the median of all candidates (an outlier length "
        "suggests a misread or cut text); ties go to the earlier candidate"
    )


RECOMMENDATION_RULE = recommendation_rule("rtf")
"""The rule, as the compare response states it (by real-time factor)."""


@dataclass(frozen=True)
class CandidateMeasure:
    """What the rule looks at for one candidate."""

    duration_s: float
    speed: float
    rtf: float
    latency_ms: float = 0.0

    def value(self, metric: Metric) -> float:
        """The candidate's measure of ``metric``."""
        if metric == "latency_ms":
            return self.latency_ms
        if metric == "duration_seconds":
            return self.duration_s
        return self.rtf


def eligible(candidates: list[CandidateMeasure]) -> tuple[list[int], float]:
    """Indexes of the candidates of plausible length (all when none is), and the median."""
    lengths = [c.duration_s * c.speed for c in candidates]
    median = statistics.median(lengths)
    within = [
        i
        for i, length in enumerate(lengths)
        if median <= 0 or abs(length - median) <= LENGTH_TOLERANCE * median
    ]
    return within or list(range(len(candidates))), median


def recommend(candidates: list[CandidateMeasure], metric: Metric = "rtf") -> int | None:
    """Index of the recommended candidate by :func:`recommendation_rule`; None when empty."""
    if not candidates:
        return None
    pool, _ = eligible(candidates)
    return min(pool, key=lambda i: (candidates[i].value(metric), i))


def recommendation_reason(
    candidates: list[CandidateMeasure], labels: list[str], metric: Metric = "rtf"
) -> str:
    """Why :func:`recommend` chose as it did: the rule and the numbers it compared.

    ``labels`` name the candidates (one per candidate, e.g. their voice ids).
    """
    best = recommend(candidates, metric)
    if best is None:
        return "no candidate to recommend"
    pool, median = eligible(candidates)
    parts = []
    for i, (candidate, label) in enumerate(zip(candidates, labels, strict=True)):
        length = candidate.duration_s * candidate.speed
        note = "" if i in pool else ", left out: length off the median"
        parts.append(
            f"#{i} {label}: {metric} {candidate.value(metric):.4g} (length {length:.2f} s{note})"
        )
    return (
        f"#{best} {labels[best]} has the lowest {metric} ({candidates[best].value(metric):.4g}) "
        f"of the candidates within 25% of the median length {median:.2f} s. Rule: "
        f"{recommendation_rule(metric)}. Measured: {'; '.join(parts)}."
    )
