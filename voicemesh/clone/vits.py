"""The stock VITS voice the CPU fallback adapts: the shared TTS engine (``voicemesh.tts``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from voicemesh.errors import UnknownModel

if TYPE_CHECKING:
    from voicemesh.tts.engine import Synthesizer

_LOGGER = logging.getLogger(__name__)

BUNDLED_VOICE = "en_US-joe-medium"


class VitsBaseVoice:
    """A shared-engine synthesizer seen as a :class:`~voicemesh.clone.engines.BaseVoice`."""

    def __init__(self, synthesizer: Synthesizer) -> None:
        self.synthesizer = synthesizer
        self.sample_rate = int(synthesizer.sample_rate)

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        """Float32 mono samples at ``sample_rate``."""
        result = self.synthesizer.synthesize(text, speed=speed)
        audio: np.ndarray = np.asarray(result.audio, dtype=np.float32)
        return audio

    def pieces(self, text: str, speed: float = 1.0) -> Iterator[np.ndarray]:
        """The same speech piece by piece, as ``tts_vits`` streams it (short first piece)."""
        for chunk in self.synthesizer.synthesize_chunks(text, speed=speed):
            yield np.asarray(chunk.audio, dtype=np.float32)


def load_base_voice(
    name: str, num_threads: int = 2, duration_noise: float = 0.0, voice_noise: float = 0.0
) -> VitsBaseVoice:
    """Load the bundled Piper voice of the shared TTS engine (prepared into the model cache).

    ``duration_noise`` (VITS noise_w) is 0 by default as in ``tts_vits``: steady timing is
    easier to understand and keeps one sentence's length the same from run to run.
    ``voice_noise`` (VITS noise_scale) is 0 too: WORLD re-analyses the audio, and the
    noiseless draw gives it the cleanest input (the round trip through WORLD measured
    about 8-11% WER with the voice's own 0.667, 7.3-7.9% at 0); the output is the same
    for the same text every time, which the result cache and the tests also like.
    """
    import dataclasses

    from voicemesh.tts.piper_runtime import load_synthesizer
    from voicemesh.tts.prepare import default_voice_files

    if name not in (BUNDLED_VOICE, "joe"):
        raise UnknownModel(f"the CPU cloning engine adapts the voice {BUNDLED_VOICE}, not {name!r}")
    files = dataclasses.replace(
        default_voice_files(), noise_scale_w=duration_noise, noise_scale=voice_noise
    )
    synthesizer = load_synthesizer(files, num_threads=num_threads)
    _LOGGER.info("CPU cloning engine adapts %s (%d Hz)", name, synthesizer.sample_rate)
    return VitsBaseVoice(synthesizer)
