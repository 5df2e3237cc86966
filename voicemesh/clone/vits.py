"""The stock VITS voice the CPU fallback adapts: the shared TTS engine (``voicemesh.tts``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from voicemesh.errors import UnknownModel

_LOGGER = logging.getLogger(__name__)


class VitsBaseVoice:
    """A shared-engine synthesizer seen as a :class:`~voicemesh.clone.engines.BaseVoice`."""

    def __init__(self, synthesizer: Any) -> None:
        self.synthesizer = synthesizer
        self.sample_rate = int(synthesizer.sample_rate)

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        """Float32 mono samples at ``sample_rate``."""
        result = self.synthesizer.synthesize(text, speed=speed)
        audio: np.ndarray = np.asarray(result.audio, dtype=np.float32)
        return audio


def load_base_voice(name: str, num_threads: int = 2) -> VitsBaseVoice:
    """Load a voice of the shared TTS engine by name (the bundled Piper voice by default)."""
    from voicemesh.tts.engine import SherpaSynthesizer
    from voicemesh.tts.prepare import default_voice_files

    if name not in ("en_US-joe-medium", "joe"):
        raise UnknownModel(f"the CPU cloning engine knows the voice en_US-joe-medium, not {name!r}")
    files = default_voice_files()
    return VitsBaseVoice(SherpaSynthesizer(files, num_threads=num_threads))
