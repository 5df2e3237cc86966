"""The clips the package bundles for the benchmark service, and the WER that scores them."""

from __future__ import annotations

import hashlib

import jiwer
import pytest

from tests.harness import REPO, SPEECH_DIR, load_manifest
from voicemesh.assets.speech_clips import bundled_clips
from voicemesh.protocol import SAMPLE_RATE
from voicemesh.scoring import error_rate, normalize_words

pytestmark = pytest.mark.unit


def test_bundled_clips_are_the_test_clips_with_their_transcripts() -> None:
    clips = bundled_clips()
    assert 1 <= len(clips) <= 3
    references = {c.file.removesuffix(".wav"): c for c in load_manifest(SPEECH_DIR)}
    for clip in clips:
        same = references[clip.name]
        assert clip.text == same.text
        assert clip.duration_s == same.duration_s
        assert len(clip.pcm) / 2 / SAMPLE_RATE == pytest.approx(clip.duration_s, abs=0.01)
        bundled = REPO / "voicemesh" / "assets" / "speech" / same.file
        digest = hashlib.sha256(bundled.read_bytes()).hexdigest()
        assert digest == hashlib.sha256((SPEECH_DIR / same.file).read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("reference", "hypothesis"),
    [
        ("he was not an ill disposed young man", "he was not an ill-disposed young man"),
        ("he was not an ill disposed young man", "he was an ill disposed old man too"),
        ("Mr. Smith went home.", "mister smith home"),
        ("four queen of clubs", ""),
        ("go", "go forward ten meters"),
    ],
)
def test_error_rate_is_jiwers_word_error_rate_after_normalising(
    reference: str, hypothesis: str
) -> None:
    expected = 100 * jiwer.wer(
        " ".join(normalize_words(reference)), " ".join(normalize_words(hypothesis)) or ""
    )
    assert error_rate(reference, hypothesis) == pytest.approx(expected)


def test_error_rate_counts_every_kind_of_edit() -> None:
    assert error_rate("a b c d", "a b c d") == 0.0
    assert error_rate("a b c d", "a x c d") == 25.0  # one substitution
    assert error_rate("a b c d", "a c d") == 25.0  # one deletion
    assert error_rate("a b c d", "a b c d e f") == 50.0  # two insertions
