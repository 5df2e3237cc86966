"""What every bundled model is: its catalogue entry plus its own prepare and status steps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from voicemesh.assets.packages import ModelPackage, PackageLookup, import_packages


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


@dataclass(frozen=True)
class BundledModel(ABC):
    """A model of the catalogue: name, aliases, kind, source packages, and how to ready it.

    Each model kind is a subclass that knows its own files: :meth:`prepare` makes the
    model loadable (idempotent, no download) and :meth:`status` says whether it is.
    Both raise :class:`~voicemesh.errors.ModelAssetError` when a package is missing.
    """

    name: str
    kind: str
    description: str
    packages: tuple[ModelPackage, ...]
    aliases: tuple[str, ...] = ()

    def answers_to(self, name: str) -> bool:
        """True when ``name`` is this model's name or one of its aliases."""
        return name == self.name or name in self.aliases

    def import_packages(self, lookup: PackageLookup) -> list[ModuleType]:
        """This model's package modules; raises naming the pip packages if one is absent."""
        return import_packages(self.description, self.packages, lookup)

    def blank_status(self) -> ModelStatus:
        """A status that says nothing is known yet (not installed, not prepared)."""
        return ModelStatus(
            name=self.name,
            kind=self.kind,
            packages=tuple(p.distribution for p in self.packages),
            installed=False,
            prepared=False,
        )

    @abstractmethod
    def prepare(self, root: Path, lookup: PackageLookup, *, force: bool, progress: bool) -> Path:
        """Make the model ready to load from the cache ``root``; returns its path."""

    @abstractmethod
    def status(self, root: Path, lookup: PackageLookup, *, full: bool) -> ModelStatus:
        """Whether the model is ready; ``full`` hashes prepared files, not trusting markers."""
