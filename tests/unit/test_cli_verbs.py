"""The specification's service verbs of ``voicemesh``: ``version``, ``stop [--force]``,
``clean [-y]``, on a temporary ``VOICEMESH_HOME``."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import voicemesh
from voicemesh.cli import main
from voicemesh.mesh.plan import MeshPaths
from voicemesh.mesh.state import MeshState, pid_alive, write_atomic

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VOICEMESH_HOME", str(tmp_path))
    return tmp_path


def fill(home: Path) -> None:
    """A home as a stopped mesh leaves it: logs, caches, run files, models, voices, Redis."""
    for name, content in {
        "logs/gateway.log": "started\n",
        "logs/supervisor.log": "stopped\n",
        "clone-cache/0123abcd": "RIFF",
        "run/plan.json": "{}",
        "models/whisper-base/model.bin": "weights",
        "voices/abc.wav": "RIFF",
        "redis/dump.rdb": "REDIS",
    }.items():
        path = home / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"voicemesh {voicemesh.__version__}"


def test_clean_yes_removes_caches_and_logs_and_keeps_what_users_made(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(home)
    assert main(["clean", "-y"]) == 0
    remaining = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert remaining == ["models/whisper-base/model.bin", "redis/dump.rdb", "voices/abc.wav"]
    out = capsys.readouterr().out
    assert f"removed {home / 'logs'}" in out and f"removed {home / 'clone-cache'}" in out


def test_clean_models_also_removes_the_prepared_models(home: Path) -> None:
    fill(home)
    assert main(["clean", "--yes", "--models"]) == 0
    assert not (home / "models").exists() and (home / "voices" / "abc.wav").exists()


def test_clean_asks_first_and_a_no_removes_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(home)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert main(["clean"]) == 1
    assert (home / "logs" / "gateway.log").exists()
    assert "nothing removed" in capsys.readouterr().out


def test_clean_on_an_empty_home_says_so(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clean", "-y"]) == 0
    assert "nothing to clean" in capsys.readouterr().out


@pytest.fixture
def stubborn_supervisor(home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process recorded as the mesh's supervisor that ignores SIGTERM, in its own group."""
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(120)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, "voicemesh"], stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    paths = MeshPaths(home.resolve())
    state = MeshState(
        supervisor_pid=process.pid,
        started_at=time.time(),
        home=str(paths.home),
        logs_dir=str(paths.logs),
        redis_url="redis://127.0.0.1:1/0",
    )
    write_atomic(paths.state, state.model_dump_json())
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_clean_refuses_while_the_mesh_runs(
    home: Path, stubborn_supervisor: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    fill(home)
    assert main(["clean", "-y"]) == 1
    assert "voicemesh is running" in capsys.readouterr().err
    assert (home / "logs" / "gateway.log").exists()


def test_stop_force_kills_at_once_what_ignores_a_graceful_stop(
    home: Path, stubborn_supervisor: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    assert main(["stop", "--force", "--timeout", "30"]) == 0
    stubborn_supervisor.wait(timeout=5)
    # A graceful stop would have waited the 30 s timeout for the SIGTERM first.
    assert time.monotonic() - started < 10
    assert not pid_alive(stubborn_supervisor.pid)
    out = capsys.readouterr().out
    assert f"killed supervisor (pid {stubborn_supervisor.pid})" in out
    assert not MeshPaths(home.resolve()).state.exists()


@pytest.mark.parametrize("verb", ["stop", "down"])
def test_stop_is_down_and_both_are_idempotent(
    verb: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([verb]) == 0
    assert main([verb, "--force"]) == 0
    assert capsys.readouterr().out.count("voicemesh is not running") == 2
