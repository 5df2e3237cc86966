"""The compose mesh for real: the images deploy/build-images made, started with
docker-compose (1.29, the classic builder's compose) under a project of its own, reached
only through nginx's port published on 127.0.0.1. ``scripts/test-compose`` builds the
images and runs this tier; ``docker-compose down -v`` ends it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import REPO, free_port

PROJECT = "voicemesh-compose-tier"
API_KEY = "compose-tier-client-key"
ADMIN_KEY = "compose-tier-admin-key"
CPU_MESH = {"nginx", "gateway", "redis", "stt_tiny_ws", "stt_cpu_ws", "tts_vits", "tts_clone"}
FIGURES = REPO / ".cache" / "deploy" / "compose-figures.json"
"""Measured figures of the last run (docs/deploy.md quotes them)."""


def record(name: str, value: Any) -> None:
    """Keep one measured figure of this run (time to healthy, failover gap, ...)."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.is_file() else {}
    figures[name] = value
    FIGURES.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"\n[compose] {name}: {value}")


@dataclass
class Stack:
    """One compose project of the CPU mesh and the ways the tests reach it."""

    port: int
    env: dict[str, str]
    env_file: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        """nginx, published on loopback: the only address the tests send to."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The streaming endpoint through nginx, with the client key (as a browser sends it)."""
        return f"ws://127.0.0.1:{self.port}/ws/transcribe?api_key={API_KEY}"

    def http(self, key: str = API_KEY, timeout: float = 120.0) -> httpx.Client:
        """An HTTP client for nginx with a key."""
        return httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {key}"}
        )

    def compose(
        self, *args: str, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        """``docker-compose`` on the repository's file, in this tier's project."""
        result = subprocess.run(
            [
                "docker-compose",
                "--project-name",
                PROJECT,
                "--project-directory",
                str(REPO),
                "--env-file",
                str(self.env_file),
                "-f",
                str(REPO / "docker-compose.yml"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=REPO,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)}: {result.returncode}\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def containers(
        self, service: str | None = None, all_states: bool = False
    ) -> list[dict[str, Any]]:
        """``docker inspect`` of the project's containers (of one service)."""
        labels = [f"label=com.docker.compose.project={PROJECT}"]
        if service:
            labels.append(f"label=com.docker.compose.service={service}")
        args = ["docker", "ps", "-q", *(["-a"] if all_states else [])]
        for label in labels:
            args += ["--filter", label]
        ids = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()
        if not ids:
            return []
        out = subprocess.run(
            ["docker", "inspect", *ids], capture_output=True, text=True, check=True
        ).stdout
        return list(json.loads(out))

    def health(self) -> dict[str, str]:
        """Container name -> health status (or state when it has no healthcheck)."""
        out = {}
        for container in self.containers():
            state = container["State"]
            out[container["Name"].lstrip("/")] = (state.get("Health") or {}).get(
                "Status", state["Status"]
            )
        return out

    def wait_healthy(
        self, services: set[str], timeout_s: float = 600.0, replicas: dict[str, int] | None = None
    ) -> float:
        """Wait until every container of ``services`` is healthy; seconds it took."""
        start = time.monotonic()
        want = {name: (replicas or {}).get(name, 1) for name in services}
        status: dict[str, list[str]] = {}
        while time.monotonic() - start < timeout_s:
            status = {}
            for container in self.containers():
                service = container["Config"]["Labels"]["com.docker.compose.service"]
                health = (container["State"].get("Health") or {}).get("Status", "none")
                status.setdefault(service, []).append(health)
            if all(status.get(name, []).count("healthy") >= count for name, count in want.items()):
                return time.monotonic() - start
            time.sleep(1.0)
        logs = self.compose("logs", "--tail", "30", check=False).stdout
        raise AssertionError(f"not healthy in {timeout_s} s: {status}\n{logs[-6000:]}")

    def ip_of(self, container: dict[str, Any]) -> str:
        """The container's address on the back network (what it registers)."""
        networks = container["NetworkSettings"]["Networks"]
        return str(next(v["IPAddress"] for k, v in networks.items() if k.endswith("_back")))

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An admin API call through nginx."""
        with self.http(ADMIN_KEY, timeout=30) as client:
            return client.request(method, path, **kwargs)

    def wait_for_replicas(
        self, service: str, count: int, timeout_s: float = 60.0
    ) -> list[dict[str, Any]]:
        """Wait until the gateway's registry holds ``count`` replicas of ``service``."""
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = self.admin("GET", "/v1/admin/services")
            if response.status_code == 200:
                body = response.json()
                replicas = body["services"].get(service) or []
                if len(replicas) == count:
                    return list(replicas)
            time.sleep(0.5)
        raise AssertionError(f"gateway does not see {count} {service}: {body}")


def _docker_answers() -> bool:
    if not shutil.which("docker") or not shutil.which("docker-compose"):
        return False
    result = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The CPU mesh up and healthy; ``down -v`` at the end whatever happened."""
    assert _docker_answers(), "no Docker engine: run bash scripts/test-compose"
    port = int(os.environ.get("COMPOSE_TIER_PORT") or free_port())
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "API_KEYS": json.dumps([API_KEY]),
        "ADMIN_KEY": ADMIN_KEY,
        # Engines answer only the gateway, and Redis wants its password: both random.
        "INTERNAL_TOKEN": secrets.token_hex(32),
        "REDIS_PASSWORD": secrets.token_hex(32),
        "HTTP_PORT": str(port),
        "HTTP_BIND": "127.0.0.1",
        "WYOMING_PORT": str(free_port()),
        "WYOMING_BIND": "127.0.0.1",
        "STT_MODE": "auto",
        # The shared 2-core host: with no fault the base model's gaps between messages
        # reached 2.1 s, and a docker kill or restart beside it pushed one past the 3 s
        # default. A dead replica's connection drops at once either way.
        "STALL_TIMEOUT_S": "8",
        # The registry-less images deploy/build-images made.
        "NGINX_BASE_IMAGE": "voicemesh/base:bookworm",
        "REDIS_IMAGE": "voicemesh/redis:latest",
        "VOICEMESH_TAG": "latest",
        "COMPOSE_DOCKER_CLI_BUILD": "0",
        "DOCKER_BUILDKIT": "0",
    }
    # An empty env file: a developer's own .env must not change what is tested.
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")
    stack = Stack(port, env, env_file)
    stack.compose("down", "-v", "--remove-orphans", check=False)
    started = time.monotonic()
    try:
        stack.compose("up", "-d", "--no-build")
        stack.wait_healthy(CPU_MESH)
        record("time_to_all_healthy_s", round(time.monotonic() - started, 1))
        stack.started_at = started
        yield stack
    finally:
        if os.environ.get("COMPOSE_TIER_KEEP") != "1":
            stack.compose("down", "-v", "--remove-orphans", check=False)
