"""Choosing and building a speech-to-text engine from a model reference and the host.

The engines themselves are :mod:`voicemesh.stt.faster_whisper_engine` and
:mod:`voicemesh.stt.openai_engine`; their interface is :mod:`voicemesh.stt.types`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Literal, cast

from voicemesh.errors import BadRequest
from voicemesh.stt.faster_whisper_engine import FasterWhisperTranscriber
from voicemesh.stt.openai_engine import OpenAIWhisperTranscriber
from voicemesh.stt.types import Device, EngineName, Transcriber

_LOGGER = logging.getLogger(__name__)


def cuda_available() -> bool:
    """True when CTranslate2 sees at least one CUDA device."""
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()) > 0
    except Exception:
        return False


def resolve_device(device: Device) -> Literal["cpu", "cuda"]:
    """Turn ``auto`` into ``cuda`` when a CUDA device is present, else ``cpu``."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def guess_engine(model: str, preferred: EngineName | None = None) -> EngineName:
    """Pick the engine for a model reference from its form and what is installed.

    A ``.pt`` checkpoint is an openai-whisper model; everything else (a CTranslate2
    folder, a bundled name, a hub name) is faster-whisper. An explicit preference
    wins when its library is installed.
    """
    if preferred is not None:
        module = "whisper" if preferred == "openai-whisper" else "faster_whisper"
        if importlib.util.find_spec(module) is None:
            raise BadRequest(
                f"engine {preferred!r} needs the python package "
                f"{'openai-whisper' if module == 'whisper' else 'faster-whisper'}",
                code="engine_not_installed",
            )
        return preferred
    if model.endswith((".pt", ".pth")):
        return "openai-whisper"
    return "faster-whisper"


def load_transcriber(
    model: str,
    *,
    engine: EngineName | None = None,
    device: Device = "cpu",
    compute_type: str | None = None,
    cpu_threads: int = 0,
    workers: int = 1,
    beam_size: int = 1,
    models_dir: Path | None = None,
) -> Transcriber:
    """Build the engine for ``model``: a bundled name, a local path, a hub name or a .pt file.

    ``workers``: decodes the engine runs at once. CTranslate2 runs one call at a time
    per model replica, so threads calling one replica take turns; it needs as many
    replicas (``num_workers``) as the scheduler has decode threads.
    """
    chosen = guess_engine(model, engine)
    if chosen == "openai-whisper":
        return OpenAIWhisperTranscriber(model, device=device, beam_size=beam_size)
    from voicemesh.assets import resolve_whisper_model

    model_path = resolve_whisper_model(model, models_dir=models_dir)
    resolved = resolve_device(device)
    _LOGGER.info("loading faster-whisper model %s from %s", model, model_path)
    # cast: the class narrows ``device`` to Literal["cpu", "cuda"], which the Protocol's
    # mutable ``device: str`` attribute does not accept as a structural match.
    return cast(
        Transcriber,
        FasterWhisperTranscriber(
            model_path,
            model_name=model,
            device=resolved,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=workers,
            beam_size=beam_size,
        ),
    )
