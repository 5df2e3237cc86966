"""Word error rate of a transcript against its reference, as the tests and benchmarks score it.

Both texts are normalised the same way (:func:`normalize_words`: lower case, no
punctuation, a few spelled-out abbreviations; Chinese text one token per character)
and compared by word-level edit distance: substitutions, deletions and insertions
over the reference's length, the same figure as ``jiwer.wer``. It lives in the shared
package because the gateway's benchmark service scores live transcripts with it.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}
_PUNCT = re.compile(r"[^\w\s']|_", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff]")


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation; CJK text becomes one token per character."""
    text = text.lower().replace("-", " ")
    text = _PUNCT.sub(" ", text)
    words = [_ABBREVIATIONS.get(w.strip("'"), w.strip("'")) for w in text.split()]
    words = [w for w in words if w]
    if any(_CJK.search(w) for w in words):
        return [ch for ch in "".join(words) if not ch.isspace()]
    return words


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Fewest substitutions, deletions and insertions turning ``reference`` into ``hypothesis``."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(
                min(
                    previous[j] + 1,  # deletion
                    current[j - 1] + 1,  # insertion
                    previous[j - 1] + (ref_word != hyp_word),  # substitution or match
                )
            )
        previous = current
    return previous[-1]


def error_rate(reference: str, hypothesis: str) -> float:
    """WER (or CER for Chinese) of ``hypothesis`` in percent; may pass 100 with insertions."""
    ref = normalize_words(reference)
    hyp = normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 100.0
    return 100.0 * edit_distance(ref, hyp) / len(ref)
