"""The repository stands on its own: no tracked file names a path outside the checkout.

A clone in any folder must run every README command and the whole suite, so code,
tests and docs may not reach for a folder beside the checkout (``../shared``), a
particular machine's folders (``/work/...``, a home directory) or the old shared test
data. System paths that a deployment file names on purpose (``/usr/sbin/nginx``,
``/etc/nginx``, ``/var/cache``) are fine.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import PurePosixPath

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.unit

_MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(?:work|home|root)/")
"""An absolute path into one machine's work folder or a home directory (not a URL path)."""
_SHARED_TESTDATA = re.compile(r"shared/testdata")
_PARENT_RUN = re.compile(r"(?<![\w./-])((?:\.\./)+)")
"""A relative path that starts by going up: how many levels is the match's ``../`` count."""
_CONTAINER_FILES = re.compile(r"(^|/)(Dockerfile[^/]*|docker-compose[^/]*\.ya?ml)$|^deploy/")
"""Files that describe paths inside an image, where a home directory is the image's own."""


def outside_paths(path: str, text: str) -> list[str]:
    """``line: match`` for each path in ``text`` (the file at ``path``) that leaves the repo."""
    found = []
    depth = len(PurePosixPath(path).parent.parts)
    in_container = bool(_CONTAINER_FILES.search(path))
    for number, line in enumerate(text.splitlines(), 1):
        hits = [m.group(0) for m in _SHARED_TESTDATA.finditer(line)]
        if not in_container:
            hits += [m.group(0) for m in _MACHINE_PATH.finditer(line)]
        hits += [m.group(1) for m in _PARENT_RUN.finditer(line) if m.group(1).count("../") > depth]
        found += [f"{path}:{number}: {hit!r} in {line.strip()[:100]!r}" for hit in hits]
    return found


def tracked_text_files() -> list[tuple[str, str]]:
    """(path, text) of every tracked file that is text (UTF-8, no NUL byte)."""
    listed = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    files = []
    for name in filter(None, listed):
        try:
            data = (REPO / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue  # deleted in the work tree, or a submodule
        if b"\0" in data:
            continue
        try:
            files.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return files


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("README.md", ".venv/bin/voicemesh-client stream ../shared/testdata/speech/x.wav"),
        ("README.md", "see [the clips](../clips/README.md)"),
        ("tests/unit/test_x.py", 'JFK = Path("/work/shared/testdata/speech/whisper-jfk.wav")'),
        ("tests/unit/test_x.py", 'CLIPS = "../../../speech"'),
        ("client/cli.py", 'base = Path.home() / "shared" / "testdata"; "shared/testdata"'),
        ("docs/deploy.md", "copy it from /home/alice/models first"),
        ("scripts/setup", "cp -r /root/.cache/voicemesh ."),
        ("Dockerfile", "COPY ../secrets /app"),
    ],
)
def test_outside_paths_are_found(path: str, line: str) -> None:
    assert outside_paths(path, line), line


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("voicemesh/nginx.py", 'return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)'),
        ("nginx/nginx.conf", "include /etc/nginx/mime.types; client_body_temp_path /var/cache/x;"),
        ("deploy/k8s/overlays/gpu/kustomization.yaml", "  - ../../base"),
        ("docs/deploy.md", "[compose](../docker-compose.yml)"),
        ("tts_vits/Dockerfile", "RUN useradd --create-home --home-dir /home/voicemesh voicemesh"),
        ("README.md", "https://github.com/home/work/root/x and https://example.org/work/"),
        ("tests/unit/test_x.py", 'Path(__file__).parent / "data" / "speech"'),
    ],
)
def test_legitimate_paths_are_not_flagged(path: str, line: str) -> None:
    assert outside_paths(path, line) == []


def test_no_tracked_file_names_a_path_outside_the_repository() -> None:
    files = tracked_text_files()
    assert len(files) > 100  # the listing worked
    this_file = "tests/unit/test_repository.py"  # its examples name such paths on purpose
    found = [hit for path, text in files if path != this_file for hit in outside_paths(path, text)]
    assert not found, "\n".join(found)
