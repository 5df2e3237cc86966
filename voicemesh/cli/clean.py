"""``voicemesh clean``: remove the caches and logs under ``VOICEMESH_HOME``.

What goes: ``logs/`` (every process's log), ``clone-cache/`` (synthesized audio of
cloned voices, made again on demand) and the run files of a stopped mesh (``run/``).
What stays: the prepared models (``models/``, unless ``--models``), the cloned voices
(``voices/``) and the bundled Redis's data (``redis/``), which hold what users made.
A running mesh is never cleaned under its feet.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from voicemesh.mesh.plan import MeshPaths
from voicemesh.mesh.state import running_state
from voicemesh.settings import CommonSettings

CACHE_FOLDERS = ("logs", "clone-cache", "run")
"""Folders under the home that ``clean`` removes."""


def folder_size(path: Path) -> int:
    """Bytes of every file below ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def clean_targets(home: Path, *, models: Path | None = None) -> list[Path]:
    """The folders ``clean`` would remove that exist (the model cache too when given)."""
    targets = [home / name for name in CACHE_FOLDERS]
    if models is not None:
        targets.append(models)
    return [path for path in targets if path.exists()]


def _ask(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in {"y", "yes"}


def cmd_clean(*, yes: bool, models: bool = False, ask: Callable[[str], bool] = _ask) -> int:
    """Remove the caches and logs (asks first unless ``yes``); 0 done, 1 refused or declined."""
    common = CommonSettings()
    paths = MeshPaths.from_settings()
    if running_state(paths) is not None:
        print("voicemesh is running; stop it first (voicemesh stop), then clean", file=sys.stderr)
        return 1
    targets = clean_targets(paths.home, models=common.models_path if models else None)
    if not targets:
        print(f"nothing to clean under {paths.home}")
        return 0
    for path in targets:
        print(f"  {path}  ({folder_size(path) / 1e6:.1f} MB)")
    if not yes and not ask("remove these folders? [y/N] "):
        print("nothing removed")
        return 1
    for path in targets:
        shutil.rmtree(path)
        print(f"removed {path}")
    return 0
