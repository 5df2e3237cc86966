"""The speech clips the package bundles (``voicemesh/assets/speech``), with their transcripts.

The gateway's benchmark service streams them through the mesh and scores what comes
back against ``text``. Their sources and licences are in that folder's README.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import json
import wave
from dataclasses import dataclass

from voicemesh.errors import ModelAssetError
from voicemesh.protocol import SAMPLE_RATE

CLIP_FOLDER = "speech"
"""The clips' folder inside :mod:`voicemesh.assets`."""


@dataclass(frozen=True)
class SpeechClip:
    """One bundled recording: 16 kHz mono PCM16 and the reference transcript."""

    name: str
    """The file name without ``.wav``."""
    text: str
    language: str
    duration_s: float
    pcm: bytes
    """The samples, 16-bit little-endian at :data:`~voicemesh.protocol.SAMPLE_RATE`."""


def _read_pcm(name: str, data: bytes) -> bytes:
    with wave.open(io.BytesIO(data)) as wav:
        shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        if shape != (SAMPLE_RATE, 1, 2):
            raise ModelAssetError(f"bundled clip {name} is not 16 kHz mono 16-bit: {shape}")
        pcm: bytes = wav.readframes(wav.getnframes())
        return pcm


@functools.cache
def bundled_clips() -> tuple[SpeechClip, ...]:
    """Every bundled clip, in the manifest's order (read once)."""
    folder = importlib.resources.files("voicemesh.assets") / CLIP_FOLDER
    clips = []
    for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        name = str(item["file"]).removesuffix(".wav")
        pcm = _read_pcm(name, (folder / item["file"]).read_bytes())
        clips.append(
            SpeechClip(
                name, str(item["text"]), str(item["language"]), float(item["duration_s"]), pcm
            )
        )
    return tuple(clips)
