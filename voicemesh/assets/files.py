"""Writing prepared model files safely: atomic writes, checksums, markers and a prepare lock.

A prepared model folder holds its files and a marker (:data:`MARKER_NAME`) that
records their checksum, size and source packages. Every file goes in through a
temp name and a rename, so a reader never sees half of one, and replicas that
start together prepare a model once under a lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK_BYTES = 4 * 1024 * 1024
"""Read and write size when streaming large model files."""
FILE_MODE = 0o644
"""mkstemp creates 0600 files; prepared models are read by services running as other users."""
MARKER_NAME = "voicemesh-model.json"
"""File beside a prepared model that records its checksum, size and source packages."""


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a prepared folder, or None when absent or unreadable."""
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(folder: Path, data: dict[str, Any]) -> None:
    """Write the marker atomically so a reader never sees half of it."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(folder / MARKER_NAME, text.encode("utf-8"))


def drop_marker(folder: Path) -> None:
    """Remove the marker first: a crash mid-way then reads as "not prepared", never as ready."""
    with contextlib.suppress(FileNotFoundError):
        (folder / MARKER_NAME).unlink()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` through a temp name beside ``target``, readable by everyone."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def copy_atomic(source: Path, target: Path) -> None:
    """Copy a file through a temp name so a reader never sees a partial copy."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def prepare_lock(root: Path, name: str) -> Iterator[None]:
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
