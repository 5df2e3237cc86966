"""Preparing the bundled Piper voice for sherpa-onnx: metadata, idempotence, checks, CLI."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

from voicemesh import assets
from voicemesh.errors import ModelAssetError
from voicemesh.tts.prepare import JOE_FOLDER, default_voice_files, piper_voice_problem

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model cache holding the prepared Joe voice (once per module)."""
    root = tmp_path_factory.mktemp("models")
    folder = assets.prepare_model("en_US-joe-medium", models_dir=root, progress=False)
    assert folder == root / JOE_FOLDER
    return root


def test_prepared_model_carries_the_metadata_sherpa_onnx_reads(prepared: Path) -> None:
    model = onnx.load(str(prepared / JOE_FOLDER / "model.onnx"), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["model_type"] == "vits"
    assert meta["comment"] == "piper"
    assert meta["sample_rate"] == "22050"
    assert meta["n_speakers"] == "1"
    assert meta["voice"] == "en-us"
    assert meta["has_espeak"] == "1"
    tokens = (prepared / JOE_FOLDER / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert "_ 0" in tokens and "^ 1" in tokens and "  3" in tokens  # pad, BOS, space
    assert len(tokens) > 100


def test_prepare_is_idempotent_and_verify_hashes(prepared: Path) -> None:
    model = prepared / JOE_FOLDER / "model.onnx"
    before = model.stat().st_mtime_ns
    assets.prepare_model("joe", models_dir=prepared, progress=False)
    assert model.stat().st_mtime_ns == before  # nothing rewritten
    status = assets.verify_model("en_US-joe-medium", models_dir=prepared)
    assert status.ok and status.sha256 and status.size == model.stat().st_size
    listed = {s.name: s for s in assets.list_models(prepared)}
    assert listed["en_US-joe-medium"].ok


def test_a_damaged_model_is_found_and_prepare_repairs_it(tmp_path: Path, prepared: Path) -> None:
    folder = tmp_path / JOE_FOLDER
    folder.mkdir()
    for name in os.listdir(prepared / JOE_FOLDER):
        (folder / name).write_bytes((prepared / JOE_FOLDER / name).read_bytes())
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[1000] ^= 0xFF  # same size, different bytes
    model.write_bytes(bytes(data))
    status = assets.verify_model("en_US-joe-medium", models_dir=tmp_path)
    assert not status.ok and "sha256" in status.detail
    with model.open("r+b") as handle:
        handle.truncate(1000)
    assert "truncated" in (piper_voice_problem(tmp_path, assets.PackageLookup(), full=False) or "")
    assets.prepare_model("en_US-joe-medium", models_dir=tmp_path, progress=False)
    assert assets.verify_model("en_US-joe-medium", models_dir=tmp_path).ok


def test_missing_packages_are_named(tmp_path: Path) -> None:
    real = assets.PackageLookup()
    no_piper = assets.PackageLookup(
        find_module=lambda m: None if m == "piper" else real.find_module(m),
        find_version=real.find_version,
    )
    with pytest.raises(ModelAssetError, match="piper-tts"):
        assets.prepare_model("en_US-joe-medium", models_dir=tmp_path, packages=no_piper)
    status = {s.name: s for s in assets.list_models(tmp_path, packages=no_piper)}
    assert not status["en_US-joe-medium"].installed
    assert "piper-tts" in status["en_US-joe-medium"].detail


def test_default_voice_files_point_at_the_prepared_folder(prepared: Path) -> None:
    files = default_voice_files(prepared, prepare=False)
    assert files.family == "piper"
    assert files.model == prepared / JOE_FOLDER / "model.onnx"
    assert files.espeak_voice == "en-us"
    assert files.data_dir is not None and (files.data_dir / "phontab").is_file()
    assert files.missing() == []
    with pytest.raises(ModelAssetError, match="voicemesh models prepare"):
        default_voice_files(prepared / "elsewhere", prepare=False)
