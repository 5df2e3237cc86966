"""``voicemesh models list | prepare | verify``: the bundled models as the user sees them."""

from __future__ import annotations

import sys
from pathlib import Path

from voicemesh.assets import (
    BundledModel,
    list_models,
    model_status,
    models_dir,
    prepare_model,
    select_models,
    verify_model,
)
from voicemesh.errors import ModelAssetError, UnknownModel


def _selected(command: str, names: list[str]) -> list[BundledModel] | None:
    """The models named on the command line, or None after saying which name is unknown."""
    try:
        return select_models(names)
    except UnknownModel as exc:
        print(f"voicemesh models {command}: {exc.message}", file=sys.stderr)
        return None


def cli_list() -> int:
    """``voicemesh models list``: one line per bundled model; exit 0."""
    root = models_dir()
    statuses = list_models(root)
    print(f"model cache: {root}")
    width = max(len(s.name) for s in statuses)
    for status in statuses:
        state = "ready" if status.ok else ("not prepared" if status.installed else "missing")
        print(f"{status.name:<{width}}  {status.kind:<19}  {state:<12}  {status.path or '-'}")
        print(f"{'':<{width}}  from {', '.join(status.packages)}: {status.detail}")
    _print_tts_catalogue(root)
    return 0


def _print_tts_catalogue(root: Path) -> None:
    """The TTS catalogue's models and whether their files are in the model cache."""
    from voicemesh.tts.catalogue import VoiceCatalogue, model_folder

    catalogue = VoiceCatalogue.load(root)
    print("text-to-speech models (voicemesh/tts/voices.json):")
    for model, missing in catalogue.model_status():
        voices = len(catalogue.filter(model=model.id))
        state = "installed" if not missing else f"not installed ({len(missing)} files missing)"
        print(
            f"  {model.id:<30}  {model.family:<7}  {voices:>3} voices  {state}  "
            f"{model_folder(model, root)}"
        )


def cli_prepare(names: list[str], force: bool) -> int:
    """``voicemesh models prepare``: 0 when all are ready, 1 if one failed, 2 on a bad name."""
    models = _selected("prepare", names)
    if models is None:
        return 2
    root = models_dir()
    failed = 0
    for model in models:
        try:
            path = prepare_model(model.name, models_dir=root, force=force)
        except ModelAssetError as exc:
            failed += 1
            print(f"{model.name}: FAILED: {exc.message}", file=sys.stderr)
            continue
        status = model_status(model, root, full=False)
        print(f"{model.name}: ready at {path} ({status.detail})")
    return 1 if failed else 0


def cli_verify(names: list[str]) -> int:
    """``voicemesh models verify``: 0 when every model checks out, 1 if not, 2 on a bad name."""
    models = _selected("verify", names)
    if models is None:
        return 2
    root = models_dir()
    failed = 0
    for model in models:
        status = verify_model(model.name, models_dir=root)
        if status.ok:
            print(f"{model.name}: OK {status.path} ({status.detail})")
        else:
            failed += 1
            print(f"{model.name}: FAILED: {status.detail}")
    return 1 if failed else 0
