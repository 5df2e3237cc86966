"""How a streaming session is tuned, and the pure rules it applies to each decode.

Which words of a partial are stable, whether a decode heard speech at all, and
whether a final is doubtful enough to hold: small functions of a result and the
:class:`StreamingConfig`, unit-tested without a model
(:mod:`voicemesh.stt.streaming` is the session that applies them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from voicemesh.stt.types import TranscriptionResult
from voicemesh.stt.vad import EndpointerConfig


@dataclass
class StreamingConfig:
    """Tuning of one streaming session (times in seconds)."""

    language: str | None = None
    partial_interval_s: float = 0.8
    """New audio between two partial decodes."""
    first_partial_s: float = 0.25
    """Speech needed before the first partial decode."""
    preroll_s: float = 0.5
    """Audio kept from before the detected speech start."""
    idle_keep_s: float = 1.0
    """Audio kept while no one speaks, beyond ``preroll_s``: the VAD fires speech_start
    some windows (and up to a frame) after speech began, and the preroll is counted
    back from where it began, not from when it fired."""
    max_utterance_s: float = 24.0
    """An utterance longer than this is cut at its quietest point and finalized."""
    min_speech_s: float = 0.2
    """Less detected speech than this in an utterance gives no final."""
    use_prefix: bool = False
    """Force partial decodes to continue the stable text (steadier partials)."""
    final_prefix: bool = False
    """Force finals to continue the stable text too (locks in early mistakes)."""
    final_beam_size: int = 5
    """Beam width of finals; partials are greedy."""
    context_s: float = 30.0
    """Finals that ended within this many seconds are given to Whisper as context."""
    no_speech_threshold: float = 0.6
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    hold_s: float = 0.5
    """Extra silence, past the endpoint, that a doubtful final waits for more speech (0: off)."""
    hold_logprob: float = -0.5
    """A final decode scoring below this average log-probability is doubtful."""
    prompt: str | None = None
    """The client's text to guide every decode, before the recent finals."""
    endpointer: EndpointerConfig = field(default_factory=EndpointerConfig)

    def tune(
        self,
        *,
        prompt: str | None = None,
        vad_threshold: float | None = None,
        min_silence_s: float | None = None,
        preroll_s: float | None = None,
    ) -> None:
        """Apply what a client asked for its session (None: keep the service's own)."""
        ends = self.endpointer
        if prompt is not None:
            self.prompt = prompt.strip() or None
        if vad_threshold is not None:
            # Keep the hysteresis: silence is some way below the speech threshold.
            ends.neg_threshold = max(0.01, vad_threshold - (ends.threshold - ends.neg_threshold))
            ends.threshold = vad_threshold
        if min_silence_s is not None:
            ends.min_silence_s = min_silence_s
            ends.silence_onset_s = min(ends.silence_onset_s, min_silence_s / 2)
        if preroll_s is not None:
            self.preroll_s = preroll_s


@dataclass
class EngineLabel:
    """What a final says served it."""

    engine: str
    device: str
    model: str
    backend: str | None = None


_WORD_RE = re.compile(r"[\w']+", re.UNICODE)


def _norm(word: str) -> str:
    return "".join(_WORD_RE.findall(word.lower()))


def stable_prefix(previous: str, current: str, *, margin: int = 1) -> str:
    """Words of ``current`` that ``previous`` agrees with, minus ``margin`` trailing ones.

    The margin holds back the last agreed word when it ends ``current``: it may be a
    word cut off by the end of the audio decoded so far.
    """
    prev_words = previous.split()
    cur_words = current.split()
    n = 0
    for a, b in zip(prev_words, cur_words, strict=False):
        if _norm(a) != _norm(b) or not _norm(a):
            break
        n += 1
    if n == len(cur_words):
        n = max(0, n - margin)
    return " ".join(cur_words[:n])


def looks_like_speech(result: TranscriptionResult, config: StreamingConfig) -> bool:
    """Whisper's own test: reject silent or noise-only blocks and empty text."""
    if not _WORD_RE.search(result.text):
        return False
    if result.compression_ratio > config.compression_ratio_threshold:
        return False
    return not (
        result.no_speech_prob > config.no_speech_threshold
        and result.avg_logprob < config.logprob_threshold
    )


def doubtful(result: TranscriptionResult, config: StreamingConfig) -> bool:
    """A final worth holding: the fast decode looked broken, or Whisper was unsure of it."""
    return result.retried or result.avg_logprob < config.hold_logprob
