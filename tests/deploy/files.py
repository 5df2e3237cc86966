"""Readers for the deployment files: compose as docker-compose resolves it, Dockerfiles,
``.dockerignore`` matching as Docker does it, and the tools that check them."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_SCHEMA = REPO / ".deploy-tools/node_modules/dclint/schemas/compose.schema.json"
"""The current Compose Specification schema (scripts/setup-deploy fetches it)."""
ENV_EXAMPLE = REPO / ".env.example"
K8S = REPO / "deploy" / "k8s"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A checker installed by the setup scripts: the venv's own first, then PATH."""
    local = VENV_BIN / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    assert found, f"{name} is not installed: scripts/setup-deploy and the [deploycheck] extra"
    return found


def docker_compose(
    *args: str, env_file: Path = ENV_EXAMPLE, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``docker-compose`` (1.29, no engine needed for ``config``) on the repo's compose file."""
    return subprocess.run(
        [
            tool("docker-compose"),
            "--project-directory",
            str(REPO),
            "--env-file",
            str(env_file),
            "-f",
            str(COMPOSE_FILE),
            *args,
        ],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        cwd=REPO,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
    )


@functools.lru_cache(maxsize=2)
def resolved_compose(profile: str | None = None) -> dict[str, Any]:
    """The compose model after interpolation, anchors and merges, as compose sees it."""
    args = ["--profile", profile] if profile else []
    out = docker_compose(*args, "config").stdout
    return dict(yaml.safe_load(out))


def env_example() -> dict[str, str]:
    """The variables of ``.env.example``."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


_VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _substitute(text: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = values.get(name)
        if operator and operator.endswith("-"):
            return value if value else argument
        if operator and operator.endswith("?") and not value:
            raise ValueError(f"{name}: {argument}")
        return value or ""

    return _VARIABLE.sub(replace, text)


def interpolate(document: Any, values: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` on every parsed string
    (after YAML parsing, as Compose does: a value that looks like a list stays a string)."""
    if isinstance(document, str):
        return _substitute(document, values)
    if isinstance(document, list):
        return [interpolate(item, values) for item in document]
    if isinstance(document, dict):
        return {key: interpolate(item, values) for key, item in document.items()}
    return document


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str
    line: int


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Every instruction of a Dockerfile, in order."""
    out: list[Instruction] = []
    buffer = ""
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    return out


def copy_sources(instruction: Instruction) -> list[str]:
    """Context paths a COPY reads (none for ``COPY --from``)."""
    parts = [p for p in instruction.args.split() if not p.startswith("--")]
    if any(p.startswith("--from") for p in instruction.args.split()):
        return []
    if instruction.args.lstrip().startswith("["):
        parts = json.loads(instruction.args)
    return parts[:-1]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of a CMD/ENTRYPOINT in exec form."""
    value = json.loads(instruction.args)
    assert isinstance(value, list)
    return [str(item) for item in value]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
            continue
        if pattern.startswith("**", index):
            out += ".*"
            index += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        index += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """``.dockerignore`` rules as Docker applies them: the last matching rule wins, and a
    rule matches a path when it matches the path or any folder above it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rules: list[tuple[bool, re.Pattern[str], str]] = []
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line[1:] if include else line
            pattern = pattern.strip("/")
            self.rules.append((include, _pattern_regex(pattern), line))

    @property
    def denies_all_first(self) -> bool:
        """The first rule excludes everything."""
        return bool(self.rules) and self.rules[0][2] in ("*", "**")

    def included(self, relative: str) -> bool:
        """True when the file at ``relative`` (POSIX, from the context) is sent."""
        parts = relative.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        verdict = True
        for include, regex, _ in self.rules:
            if any(regex.match(prefix) for prefix in prefixes):
                verdict = include
        return verdict


def tracked_files(under: Path) -> list[str]:
    """Files git tracks (or would add) under ``under``, relative to it."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=under,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in listing.splitlines() if line and (under / line).is_file()]


def k8s_render(folder: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` output of a kustomization folder, one dict per object."""
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
