"""``docker-compose.yml`` checked without a Docker engine: docker-compose 1.29's own schema
validation and interpolation (``config``), then the rules of the deployment on the model it
resolves: health, start order, networks, GPU profile, volumes, secrets, one source of truth."""

from __future__ import annotations

import graphlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.files import (
    COMPOSE_FILE,
    COMPOSE_SCHEMA,
    ENV_EXAMPLE,
    docker_compose,
    env_example,
    interpolate,
    resolved_compose,
)
from voicemesh.services import SERVICES, ServiceSpec

pytestmark = pytest.mark.deploy

GPU_ONLY = {"stt_gpu_ws", "gpt-sovits"}
PYTHON_SERVICES = {"gateway", "stt_tiny_ws", "stt_cpu_ws", "stt_gpu_ws", "tts_vits", "tts_clone"}
EVERY_SERVICE = PYTHON_SERVICES | {"nginx", "redis", "gpt-sovits"}


def services(profile: str | None = "gpu") -> dict[str, dict[str, Any]]:
    """Resolved services (with the gpu profile: all of them)."""
    return dict(resolved_compose(profile)["services"])


def test_compose_validates_with_and_without_the_gpu_profile() -> None:
    # docker-compose 1.29 lists every service in `config`; the profile decides what starts.
    for profile in (None, "gpu"):
        assert set(services(profile)) == EVERY_SERVICE
    default = {name for name, s in services(None).items() if not s.get("profiles")}
    assert default == EVERY_SERVICE - GPU_ONLY


def test_an_unknown_key_fails_validation(tmp_path: Path) -> None:
    # The validator bites: the same file with one misspelt healthcheck key is refused.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("start_period: 5s", "start_perod: 5s", 1))
    result = docker_compose("-f", str(broken), "config", check=False)
    assert result.returncode != 0
    assert "start_perod" in result.stderr


def _schema_errors(text: str) -> list[str]:
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    document = interpolate(yaml.safe_load(text), env_example())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_compose_matches_the_current_compose_specification_schema() -> None:
    # docker-compose 1.29 knows the 2021 spec; Compose v2 validates against this one.
    assert COMPOSE_SCHEMA.is_file(), "run scripts/setup-deploy"
    assert _schema_errors(COMPOSE_FILE.read_text()) == []
    broken = COMPOSE_FILE.read_text().replace("start_period: 5s", "start_perod: 5s", 1)
    assert any("start_perod" in error for error in _schema_errors(broken))


def test_required_secrets_must_be_set(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = docker_compose("config", env_file=empty, check=False)
    assert result.returncode != 0
    assert "API_KEYS" in result.stderr or "ADMIN_KEY" in result.stderr
    # Each secret alone is required: the example without it does not resolve.
    for variable in SECRETS:
        lines = [
            line
            for line in ENV_EXAMPLE.read_text().splitlines()
            if not line.startswith(f"{variable}=")
        ]
        without = tmp_path / f"without-{variable}.env"
        without.write_text("\n".join(lines) + "\n")
        result = docker_compose("config", env_file=without, check=False)
        assert result.returncode != 0, variable
        assert variable in result.stderr, (variable, result.stderr)


def test_env_example_names_every_variable_compose_reads() -> None:
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    documented = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert used <= documented, used - documented
    gateway = services()["gateway"]["environment"]
    assert gateway["VOICEMESH_GATEWAY_API_KEYS"] == '["change-me-client-key"]'


@pytest.mark.parametrize("name", sorted(EVERY_SERVICE))
def test_every_service_has_a_healthcheck(name: str) -> None:
    check = services()[name].get("healthcheck")
    assert check and check["test"][0] in ("CMD", "CMD-SHELL"), check
    assert check.get("start_period") and check.get("interval")


def test_dependencies_wait_for_health_and_have_no_cycle() -> None:
    resolved = services()
    graph: dict[str, set[str]] = {}
    for name, service in resolved.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, rule in depends.items():
            assert target in resolved, f"{name} depends on unknown {target}"
            assert rule["condition"] == "service_healthy", (name, target)
            # A service always started must not wait for one only the gpu profile starts.
            assert not (target in GPU_ONLY and name not in GPU_ONLY), (name, target)
        graph[name] = set(depends)
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises on a cycle
    assert order.index("redis") < order.index("gateway") < order.index("nginx")


PUBLISHED = {"nginx": [8080], "gateway": [10300]}
"""The only published ports: nginx's HTTP, and the gateway's Wyoming port (Home Assistant)."""


def test_only_nginx_and_the_gateways_wyoming_port_are_published() -> None:
    compose = resolved_compose("gpu")
    for name, service in compose["services"].items():
        networks = set(service.get("networks") or {})
        if name in PUBLISHED:
            assert networks == {"front", "back"}
            # Long form, or "HOST_IP:PORT:TARGET/tcp" when a host address is named.
            targets = [
                p["target"] if isinstance(p, dict) else int(str(p).rsplit(":", 1)[-1].split("/")[0])
                for p in service["ports"]
            ]
            assert targets == PUBLISHED[name]
        else:
            assert networks == {"back"}, name
            assert "ports" not in service, name
    assert compose["networks"]["back"].get("internal") is True


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_replicas_can_scale_without_clashing(name: str) -> None:
    service = services()[name]
    assert "container_name" not in service
    # The gateway's one published port is Wyoming's: a second gateway replica needs the
    # port unpublished (or another WYOMING_PORT); every other service publishes none.
    assert "ports" not in service or name == "gateway"
    prefix = _prefix(name)
    # Each replica registers the address its own container has on the back network.
    assert service["environment"][f"{prefix}ADVERTISE_HOST"] == "auto"
    assert service["environment"][f"{prefix}HOST"] == "0.0.0.0"


def _prefix(name: str) -> str:
    """The env prefix from the table, or the one its settings use while it is not there."""
    spec = SERVICES.get(name)
    if spec is not None:
        return spec.env_prefix
    return {"tts_vits": "VOICEMESH_TTS_VITS_", "tts_clone": "VOICEMESH_TTS_CLONE_"}[name]


@pytest.mark.parametrize("spec", list(SERVICES.values()), ids=list(SERVICES))
def test_commands_are_the_ones_the_runner_uses(spec: ServiceSpec) -> None:
    service = services()[spec.name]
    assert service["command"] == ["python", "-m", *spec.uvicorn_args("0.0.0.0", spec.default_port)]
    assert service["environment"][f"{spec.env_prefix}PORT"] == str(spec.default_port)
    assert service["healthcheck"]["test"][-1] == f"http://127.0.0.1:{spec.default_port}/health"


@pytest.mark.parametrize("name", sorted(PYTHON_SERVICES))
def test_every_python_service_runs_its_own_factory_like_the_runner(name: str) -> None:
    service = services()[name]
    command = service["command"]
    port = int(command[command.index("--port") + 1])
    like_runner = ServiceSpec(name, f"{name}.app:create_app", _prefix(name), port)
    assert command == ["python", "-m", *like_runner.uvicorn_args("0.0.0.0", port)]
    assert service["build"]["dockerfile"] == f"{name}/Dockerfile"
    assert Path(service["build"]["context"]).resolve() == COMPOSE_FILE.parent.resolve()


def test_gpu_services_reserve_an_nvidia_device_under_the_gpu_profile() -> None:
    resolved = services()
    for name, service in resolved.items():
        devices = (
            service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        )
        if name in GPU_ONLY:
            assert service["profiles"] == ["gpu"]
            assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        else:
            assert not service.get("profiles") and not devices, name
    assert "x-gpu" in COMPOSE_FILE.read_text()


def test_volumes_for_redis_models_and_voices() -> None:
    resolved = services()
    redis = resolved["redis"]
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    mounts = {
        name: {tuple(v.split(":")[:2]) for v in s.get("volumes", [])}
        for name, s in resolved.items()
    }
    assert ("redis-data", "/data") in mounts["redis"]
    assert all(v.endswith(":ro") for v in resolved["stt_cpu_ws"]["volumes"])
    for name in ("stt_tiny_ws", "stt_cpu_ws", "stt_gpu_ws", "tts_vits", "tts_clone"):
        assert ("models", "/models") in mounts[name], name
    clone = resolved["tts_clone"]["environment"]
    assert ("voices", clone["VOICEMESH_TTS_CLONE_VOICES_DIR"]) in mounts["tts_clone"]
    assert ("clone-cache", clone["VOICEMESH_TTS_CLONE_CACHE_DIR"]) in mounts["tts_clone"]
    # GPT-SoVITS reads references by path: the same volume where tts_clone says it is.
    assert ("voices", clone["VOICEMESH_TTS_CLONE_GPTSOVITS_VOICES_DIR"]) in mounts["gpt-sovits"]
    assert json.loads(clone["VOICEMESH_TTS_CLONE_GPTSOVITS_URLS"]) == ["http://gpt-sovits:9880"]
    assert {target for _, target in mounts["gpt-sovits"]} == {"/data", "/voices"}


SECRETS = ("API_KEYS", "ADMIN_KEY", "INTERNAL_TOKEN", "REDIS_PASSWORD")


def test_no_secret_has_a_default() -> None:
    text = COMPOSE_FILE.read_text()
    for variable in SECRETS:
        assert re.search(r"\$\{" + variable + r":\?", text), variable
        assert not re.search(r"\$\{" + variable + r":?-", text), variable


def test_engines_get_the_internal_token_and_redis_wants_its_password() -> None:
    resolved = services()
    example = env_example()
    token, password = example["INTERNAL_TOKEN"], example["REDIS_PASSWORD"]
    for name in PYTHON_SERVICES:
        env = resolved[name]["environment"]
        # Every service, the gateway included: the engines check it, the gateway sends it.
        assert env["VOICEMESH_INTERNAL_TOKEN"] == token, name
        assert env["VOICEMESH_REDIS_URL"] == f"redis://:{password}@redis:6379/0", name
    redis = resolved["redis"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == password
    # The healthcheck logs in (REDISCLI_AUTH) and is healthy only on PONG, not on NOAUTH.
    assert redis["environment"]["REDISCLI_AUTH"] == password
    assert redis["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]
    # The engines, GPT-SoVITS and Redis are on the internal network only (no port): the
    # token guards against whoever else reaches that network.
    for name in ("redis", "stt_tiny_ws", "stt_cpu_ws", "stt_gpu_ws", "tts_vits", "tts_clone"):
        assert "ports" not in resolved[name], name


def test_the_secrets_script_makes_random_secrets_and_keeps_them(tmp_path: Path) -> None:
    env_file = tmp_path / "prod.env"
    script = COMPOSE_FILE.parent / "scripts" / "compose-secrets"

    def run(*args: str) -> dict[str, str]:
        subprocess.run(
            ["bash", str(script), *args],
            env={"PATH": "/usr/bin:/bin", "ENV_FILE": str(env_file)},
            check=True,
            capture_output=True,
            text=True,
        )
        assert env_file.stat().st_mode & 0o777 == 0o600
        return dict(
            line.split("=", 1)
            for line in env_file.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )

    first = run()
    for variable in ("INTERNAL_TOKEN", "REDIS_PASSWORD"):
        assert re.fullmatch(r"[0-9a-f]{64}", first[variable]), variable
    assert first["INTERNAL_TOKEN"] != first["REDIS_PASSWORD"]
    assert first["API_KEYS"] == env_example()["API_KEYS"]  # the operator's to set
    assert run() == first
    rotated = run("--rotate")
    assert rotated["INTERNAL_TOKEN"] != first["INTERNAL_TOKEN"]
    assert rotated["REDIS_PASSWORD"] != first["REDIS_PASSWORD"]
    # What it made resolves, and reaches the services.
    resolved = yaml.safe_load(docker_compose("config", env_file=env_file).stdout)
    env = resolved["services"]["tts_clone"]["environment"]
    assert env["VOICEMESH_INTERNAL_TOKEN"] == rotated["INTERNAL_TOKEN"]


def test_wyoming_is_published_on_loopback_by_default() -> None:
    gateway = resolved_compose("gpu")["services"]["gateway"]
    (port,) = gateway["ports"]
    host_ip = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
    assert host_ip == "127.0.0.1"
    env = gateway["environment"]
    assert env["VOICEMESH_GATEWAY_WYOMING_PORT"] == "10300"
    assert json.loads(env["VOICEMESH_GATEWAY_WYOMING_ALLOWED_NETWORKS"]) == [
        "127.0.0.0/8",
        "::1/128",
        "172.16.0.0/12",
    ]
