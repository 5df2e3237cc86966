"""``voicemesh up`` protects the engines with no user action: one random internal token per
home, readable by its owner alone, handed to every service as a file (never in the plan)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.unit.test_mesh_plan import EXTERNAL_REDIS, spec
from voicemesh.mesh.control import ensure_internal_token
from voicemesh.mesh.plan import MeshPaths, MeshPlan, free_port, plan_mesh
from voicemesh.settings import CommonSettings

pytestmark = pytest.mark.unit


def plan_for(home: Path) -> tuple[MeshPaths, MeshPlan]:
    paths = MeshPaths(home)
    plan, _ = plan_mesh(
        [spec("engine"), spec("gateway", scalable=False)],
        paths=paths,
        host="127.0.0.1",
        port=free_port(),
        redis_url=EXTERNAL_REDIS,
        scale={"engine": 2},
        no_gpu=True,
    )
    return paths, plan


def test_every_service_gets_the_token_file_and_the_plan_holds_no_token(tmp_path: Path) -> None:
    paths, plan = plan_for(tmp_path)
    assert plan.internal_token_file == str(paths.internal_token)
    services = plan.services
    assert len(services) == 3
    for item in services:
        assert item.env["VOICEMESH_INTERNAL_TOKEN_FILE"] == str(paths.internal_token)
        assert "VOICEMESH_INTERNAL_TOKEN" not in item.env
    assert ensure_internal_token(paths.internal_token) is True
    token = paths.internal_token.read_text().strip()
    assert token not in plan.model_dump_json()


def test_the_token_is_random_owner_only_and_kept_across_runs(tmp_path: Path) -> None:
    path = MeshPaths(tmp_path).internal_token
    assert ensure_internal_token(path) is True
    first = path.read_text().strip()
    assert len(first) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # A second `up` keeps it (services still running must agree with restarted ones),
    # and tightens a mode someone loosened.
    path.chmod(0o644)
    assert ensure_internal_token(path) is False
    assert path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Another home gets another token; deleting the file rotates it.
    other = MeshPaths(tmp_path / "other").internal_token
    ensure_internal_token(other)
    assert other.read_text().strip() != first
    path.unlink()
    assert ensure_internal_token(path) is True
    assert path.read_text().strip() != first


def test_a_placeholder_in_the_file_is_replaced(tmp_path: Path) -> None:
    path = MeshPaths(tmp_path).internal_token
    path.parent.mkdir(parents=True)
    path.write_text("x\n")
    assert ensure_internal_token(path) is True
    assert len(path.read_text().strip()) >= 40


def test_the_services_read_the_token_the_mesh_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, plan = plan_for(tmp_path)
    ensure_internal_token(paths.internal_token)
    for name, value in plan.services[0].env.items():
        monkeypatch.setenv(name, value)
    token = CommonSettings().internal_token
    assert token is not None
    assert token.get_secret_value() == paths.internal_token.read_text().strip()


@pytest.mark.parametrize("variable", ["VOICEMESH_INTERNAL_TOKEN", "VOICEMESH_INTERNAL_TOKEN_FILE"])
def test_a_token_from_the_users_environment_is_used_instead(
    variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "a-token-the-operator-chose-0123456789")
    _, plan = plan_for(tmp_path)
    assert plan.internal_token_file is None
    assert all("VOICEMESH_INTERNAL_TOKEN_FILE" not in item.env for item in plan.services)
