"""Joining pieces of synthesized speech cut inside a sentence (numpy only).

Streaming speaks a long first sentence in two pieces, so that first audio comes
before the whole sentence is made (see :func:`voicemesh.tts.text.split_for_streaming`).
Each piece is a whole VITS utterance, with silence at both ends; at the cut that
silence is trimmed to a short pause, with short fades so the join has no click.
"""

from __future__ import annotations

import numpy as np

JOIN_PAUSE_S = 0.03
"""Silence kept at the end of a piece cut inside a sentence (a clause or a phrase).

VITS ends every utterance with 0.1-0.2 s of silence and begins it with 0.03-0.05 s;
at a cut inside a sentence that would be a pause no speaker makes, so the end before
the cut is trimmed to this much..."""
JOIN_LEAD_S = 0.01
"""...and the start after it to this much."""
_SILENCE = 0.01
"""Amplitude below which a sample counts as silence when trimming a join."""
_FADE_S = 0.005


def trim_join(
    audio: np.ndarray, rate: int, *, start_s: float | None = None, end_s: float | None = None
) -> np.ndarray:
    """``audio`` with its leading silence cut to ``start_s`` and its trailing silence to
    ``end_s`` (None: that end untouched), faded over 5 ms where it was cut.

    For the two sides of a cut inside a sentence: the next piece follows after a
    short pause, as in speech, and the fades keep the join free of clicks.
    """
    loud = np.flatnonzero(np.abs(audio) > _SILENCE)
    if len(loud) == 0:
        return audio
    begin = 0 if start_s is None else max(0, int(loud[0]) - round(start_s * rate))
    end = len(audio) if end_s is None else min(len(audio), int(loud[-1]) + 1 + round(end_s * rate))
    out = audio[begin:end].copy()
    fade = min(len(out), max(1, round(_FADE_S * rate)))
    if start_s is not None:
        out[:fade] *= np.linspace(0.0, 1.0, fade, dtype=np.float32)
    if end_s is not None:
        out[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out
