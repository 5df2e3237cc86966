"""The mesh plan: which processes, in which order, on which ports, with which env (nothing runs)."""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path

import pytest

from voicemesh.errors import PlanError
from voicemesh.mesh.plan import (
    MeshPaths,
    MeshPlan,
    build_plan,
    check_scale,
    free_port,
    plan_mesh,
    select_services,
    url_host,
)
from voicemesh.services import SERVICES, WYOMING_PORT, ServiceSpec

pytestmark = pytest.mark.unit

EXTERNAL_REDIS = "redis://127.0.0.1:1/0"


def spec(name: str, *, scalable: bool = True, needs_cuda: bool = False) -> ServiceSpec:
    """A service entry on a free port."""
    return ServiceSpec(
        name,
        f"{name}.app:create_app",
        f"VOICEMESH_{name.upper()}_",
        free_port(),
        needs_cuda=needs_cuda,
        scalable=scalable,
    )


GATEWAY = ServiceSpec("gateway", "gateway.app:create_app", "VOICEMESH_GATEWAY_", 1, scalable=False)


def test_wyoming_stays_on_loopback_and_moves_off_a_taken_port(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(socket.socket())
        with contextlib.suppress(OSError):  # already taken by something else: just as good
            holder.bind(("127.0.0.1", WYOMING_PORT))
            holder.listen()
        notes: list[str] = []
        plan = build_plan(
            [GATEWAY],
            paths=MeshPaths(tmp_path),
            host="0.0.0.0",
            port=free_port(),
            redis_url=EXTERNAL_REDIS,
            scale={},
            notes=notes,
        )
    (gateway,) = plan.services
    port = int(gateway.env["VOICEMESH_GATEWAY_WYOMING_PORT"])
    # --host 0.0.0.0 exposes the gateway, never Wyoming (it has no authentication).
    assert gateway.env["VOICEMESH_GATEWAY_WYOMING_HOST"] == "127.0.0.1"
    assert port != WYOMING_PORT and gateway.wyoming == f"tcp://127.0.0.1:{port}"
    assert notes == [f"wyoming: port {WYOMING_PORT} is in use, using {port}"]


def test_plan_ports_env_and_gpu_selection(tmp_path: Path) -> None:
    paths = MeshPaths(tmp_path)
    busy = spec("busy")
    free = spec("free")
    gpu = spec("stt_gpu_ws", needs_cuda=True)
    gateway_port = free_port()

    chosen, notes = select_services([free, gpu], no_gpu=False, cuda_present=lambda: False)
    assert chosen == [free] and notes == ["skipping stt_gpu_ws: no CUDA device"]
    chosen, notes = select_services([free, gpu], no_gpu=True, cuda_present=lambda: True)
    assert chosen == [free] and notes == ["skipping stt_gpu_ws: --no-gpu"]
    chosen, _ = select_services([free, gpu], no_gpu=False, cuda_present=lambda: True)
    assert chosen == [free, gpu]

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy.default_port))
        holder.listen()
        notes = []
        plan = build_plan(
            [busy, free, GATEWAY],
            paths=paths,
            host="127.0.0.1",
            port=gateway_port,
            redis_url=EXTERNAL_REDIS,
            scale={"free": 3},
            notes=notes,
        )
        assert plan.redis is None
        by_label = {item.label: item for item in plan.services}
        assert by_label["busy"].port != busy.default_port
        assert [n for n in notes if not n.startswith("wyoming:")] == [
            f"busy: port {busy.default_port} is in use, using {by_label['busy'].port}"
        ]
        assert by_label["free-1"].port == free.default_port
        assert by_label["gateway"].port == gateway_port
        ports = [item.port for item in plan.services]
        assert len(set(ports)) == len(ports) == 5
        assert by_label["free-3"].log == str(tmp_path / "logs" / "free-3.log")
        assert by_label["gateway"].argv[:3] == [sys.executable, "-m", "uvicorn"]
        wyoming_port = int(by_label["gateway"].env["VOICEMESH_GATEWAY_WYOMING_PORT"])
        assert by_label["gateway"].env == {
            "VOICEMESH_GATEWAY_HOST": "127.0.0.1",
            "VOICEMESH_GATEWAY_PORT": str(gateway_port),
            "VOICEMESH_GATEWAY_WYOMING_HOST": "127.0.0.1",
            "VOICEMESH_GATEWAY_WYOMING_PORT": str(wyoming_port),
            "VOICEMESH_REDIS_URL": EXTERNAL_REDIS,
            "VOICEMESH_HOME": str(tmp_path),
            "PYTHONUNBUFFERED": "1",
        }
        assert by_label["gateway"].wyoming == f"tcp://127.0.0.1:{wyoming_port}"
        assert wyoming_port not in ports
        assert all(item.wyoming is None for item in plan.services if item.name != "gateway")

        with pytest.raises(PlanError, match="in use"):
            build_plan(
                [GATEWAY],
                paths=paths,
                host="127.0.0.1",
                port=busy.default_port,
                redis_url=None,
                scale={},
                redis_port=free_port(),
            )


def test_processes_start_in_the_order_of_the_table_with_redis_first(tmp_path: Path) -> None:
    detector, engine = spec("detector"), spec("engine")
    redis_port = free_port()
    plan = build_plan(
        [detector, engine, GATEWAY],
        paths=MeshPaths(tmp_path),
        host="127.0.0.1",
        port=free_port(),
        redis_url=None,
        scale={"engine": 2},
        redis_port=redis_port,
    )
    assert [item.label for item in plan.processes()] == [
        "redis",
        "detector",
        "engine-1",
        "engine-2",
        "gateway",
    ]
    assert plan.redis is not None and plan.redis.kind == "redis"
    assert plan.redis_url == f"redis://127.0.0.1:{redis_port}/0"
    assert "--bind" in plan.redis.argv and "127.0.0.1" in plan.redis.argv
    assert {item.env["VOICEMESH_REDIS_URL"] for item in plan.services} == {plan.redis_url}
    assert plan.front_door() is None


def test_a_busy_redis_port_moves_redis_and_says_so(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        notes: list[str] = []
        plan = build_plan(
            [spec("engine")],
            paths=MeshPaths(tmp_path),
            host="127.0.0.1",
            port=free_port(),
            redis_url=None,
            scale={},
            redis_port=busy,
            notes=notes,
        )
    assert plan.redis is not None and plan.redis.port != busy
    assert notes == [f"redis: port {busy} is in use, using {plan.redis.port}"]


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        ({"nope": 2}, "unknown service 'nope'"),
        ({"front": 2}, "front cannot be scaled"),
        ({"engine": -1}, "must be 0 or more"),
    ],
)
def test_scale_checks(scale: dict[str, int], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        check_scale([spec("engine"), spec("front", scalable=False)], scale)


def test_scale_checks_accept_zero_and_one_of_a_single_replica_service() -> None:
    check_scale([spec("front", scalable=False)], {"front": 1})
    check_scale([spec("front", scalable=False)], {"front": 0})


def test_plan_mesh_checks_selects_and_lays_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VOICEMESH_REDIS_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", EXTERNAL_REDIS)
    engine, gpu = spec("engine"), spec("stt_gpu_ws", needs_cuda=True)
    plan, notes = plan_mesh(
        [engine, gpu],
        paths=MeshPaths(tmp_path),
        host="127.0.0.1",
        port=free_port(),
        redis_url=None,
        scale={},
        no_gpu=False,
        cuda_present=lambda: False,
    )
    assert isinstance(plan, MeshPlan)
    assert [item.name for item in plan.services] == ["engine"]
    assert plan.redis is None and plan.redis_url == EXTERNAL_REDIS  # from REDIS_URL
    assert notes == ["skipping stt_gpu_ws: no CUDA device"]
    with pytest.raises(PlanError, match="nothing to start"):
        plan_mesh(
            [engine],
            paths=MeshPaths(tmp_path),
            host="127.0.0.1",
            port=free_port(),
            redis_url=EXTERNAL_REDIS,
            scale={"engine": 0},
            no_gpu=True,
        )


def test_urls_reach_a_wildcard_bind_through_loopback(tmp_path: Path) -> None:
    assert url_host("0.0.0.0") == "127.0.0.1"
    assert url_host("::") == "127.0.0.1"
    assert url_host("::1") == "[::1]"
    assert url_host("10.0.0.5") == "10.0.0.5"
    plan = build_plan(
        [spec("engine")],
        paths=MeshPaths(tmp_path),
        host="0.0.0.0",
        port=free_port(),
        redis_url=EXTERNAL_REDIS,
        scale={},
    )
    (engine,) = plan.services
    assert engine.url == f"http://127.0.0.1:{engine.port}"
    assert engine.env["VOICEMESH_ENGINE_HOST"] == "0.0.0.0"


def test_the_service_table_starts_the_gateway_last_by_module_name() -> None:
    assert list(SERVICES)[-1] == "gateway"
    assert not SERVICES["gateway"].scalable
    assert [name for name, item in SERVICES.items() if item.needs_cuda] == ["stt_gpu_ws"]
    for name, item in SERVICES.items():
        assert item.factory == f"{name}.app:create_app"
        assert item.env_prefix.startswith("VOICEMESH_") and item.env_prefix.endswith("_")
