"""The bundled Piper voice ``en_US-joe-medium`` as the TTS engine's model files.

Preparing the voice for sherpa-onnx (metadata, ``tokens.txt``, checksums) is the
bundled model's own step, :class:`voicemesh.assets.piper.PiperVoice`; this module
turns a prepared folder into :class:`~voicemesh.tts.engine.TtsModelFiles`. It
imports :mod:`voicemesh.assets`, never the other way round.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from voicemesh.assets import cache_root
from voicemesh.assets.packages import INSTALLED, PackageLookup
from voicemesh.assets.piper import JOE_FOLDER, PIPER_JOE, sherpa_metadata, tokens_text
from voicemesh.tts.engine import TtsModelFiles

__all__ = [
    "JOE_FOLDER",
    "default_voice_files",
    "espeak_data_dir",
    "piper_model_files",
    "piper_voice_problem",
    "prepare_piper_voice",
    "sherpa_metadata",
    "tokens_text",
]


def espeak_data_dir(packages: PackageLookup | None = None) -> Path:
    """The espeak-ng data folder that piper-tts ships."""
    return PIPER_JOE.sources(packages or INSTALLED).espeak_data


def prepare_piper_voice(
    root: Path, packages: PackageLookup, *, force: bool = False, progress: bool = False
) -> Path:
    """Prepare the Joe voice in ``root/vits-piper-en_US-joe-medium`` unless already there."""
    return PIPER_JOE.prepare(root, packages, force=force, progress=progress)


def piper_voice_problem(root: Path, packages: PackageLookup, *, full: bool) -> str | None:
    """Why the prepared Joe voice is not usable (None when it is); raises when not installed."""
    return PIPER_JOE.problem(root, packages, full=full)


def piper_model_files(folder: Path, espeak_data: Path) -> TtsModelFiles:
    """The engine's view of a prepared Piper folder (model.onnx, tokens.txt, voice.json)."""
    config = json.loads((folder / "voice.json").read_text(encoding="utf-8"))
    inference = config.get("inference", {})
    return TtsModelFiles(
        family="piper",
        model=folder / "model.onnx",
        tokens=folder / "tokens.txt",
        espeak_voice=str(config["espeak"]["voice"]),
        data_dir=espeak_data,
        noise_scale=float(inference.get("noise_scale", 0.667)),
        noise_scale_w=float(inference.get("noise_w", 0.8)),
        length_scale=float(inference.get("length_scale", 1.0)),
    )


def default_voice_files(
    models_dir: Path | None = None, *, prepare: bool = True, packages: PackageLookup | None = None
) -> TtsModelFiles:
    """The bundled Joe voice, prepared into the model cache when needed, as engine files."""
    lookup = packages or INSTALLED
    root = cache_root(models_dir)
    if prepare:
        folder = PIPER_JOE.prepare(root, lookup, force=False, progress=sys.stderr.isatty())
    else:
        folder = PIPER_JOE.ready_folder(root, lookup)
    return piper_model_files(folder, espeak_data_dir(lookup))
