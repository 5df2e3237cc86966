"""The confidence that ``POST /v1/asr/transcribe`` reports, as docs/api.md defines it."""

from __future__ import annotations

import math

import pytest

from gateway.asr import confidence, segment_confidence

pytestmark = pytest.mark.unit


def test_segment_confidence_is_exp_of_its_avg_logprob() -> None:
    assert segment_confidence(-0.25) == pytest.approx(math.exp(-0.25), abs=1e-4)
    assert segment_confidence(0.0) == 1.0
    assert segment_confidence(None) is None


def test_confidence_weighs_each_segment_by_its_duration() -> None:
    segments = [
        {"start": 0.0, "end": 9.0, "avg_logprob": -0.1},
        {"start": 9.0, "end": 10.0, "avg_logprob": -2.0},
    ]
    expected = math.exp((9 * -0.1 + 1 * -2.0) / 10)
    assert confidence(segments) == pytest.approx(expected, abs=1e-4)
    # Not the plain mean of the segments, nor the mean of their confidences.
    assert confidence(segments) != pytest.approx(math.exp((-0.1 - 2.0) / 2), abs=1e-3)
    assert confidence(segments) != pytest.approx((math.exp(-0.1) + math.exp(-2.0)) / 2, abs=1e-3)


def test_segments_without_a_logprob_are_left_out_and_none_gives_none() -> None:
    segments = [
        {"start": 0.0, "end": 1.0, "avg_logprob": -0.5},
        {"start": 1.0, "end": 5.0, "avg_logprob": None},
    ]
    assert confidence(segments) == pytest.approx(math.exp(-0.5), abs=1e-4)
    assert confidence([{"start": 0.0, "end": 1.0, "avg_logprob": None}]) is None
    assert confidence([]) is None


def test_a_zero_length_segment_still_counts() -> None:
    segments = [
        {"start": 2.0, "end": 2.0, "avg_logprob": -1.0},
        {"start": 2.0, "end": 2.0, "avg_logprob": -3.0},
    ]
    assert confidence(segments) == pytest.approx(math.exp(-2.0), abs=1e-4)
