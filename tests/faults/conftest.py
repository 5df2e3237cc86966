"""The fault tier's mesh: two replicas of each engine and of the gateway, nginx in front.

Real processes on loopback with a Redis server of the tier's own (a case stops it): two
CPU STT replicas, the speech detector, two VITS TTS replicas, two cloning replicas (the
CPU engine, no result cache: every request synthesizes), two gateways, and real nginx
balancing the gateways. Every case starts from this mesh whole: what a case killed or
stopped is brought back (and waited for) before the next.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness import RedisServer, ServiceProcess, free_port
from voicemesh.nginx import (
    NginxLayout,
    NginxSettings,
    UpstreamGateway,
    embedded_argv,
    write_embedded_conf,
)
from voicemesh.settings import default_home

STALL_S = 6.0
"""The gateways' stall timeout here: eight processes share two cores, so a loaded replica
can fall a few seconds behind without having stalled."""


@dataclass
class FaultMesh:
    """The tier's processes by role, and nginx."""

    redis: RedisServer
    stt: list[ServiceProcess]
    detector: ServiceProcess
    tts: list[ServiceProcess]
    clone: list[ServiceProcess]
    gateways: list[ServiceProcess]
    nginx_port: int
    nginx_layout: NginxLayout
    nginx: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """nginx's base URL: every client of the tier comes in here."""
        return f"http://127.0.0.1:{self.nginx_port}"

    def processes(self) -> list[ServiceProcess]:
        """Every service process, engines first."""
        return [*self.stt, self.detector, *self.tts, *self.clone, *self.gateways]

    def by_url(self, url: str) -> ServiceProcess:
        """The process serving ``url``."""
        return next(p for p in self.processes() if p.url == url.rstrip("/"))

    def start_nginx(self) -> None:
        """Run nginx in the foreground (its own process group: a reload signals it)."""
        self.nginx = subprocess.Popen(embedded_argv(NginxSettings(), self.nginx_layout))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("nginx did not come up")

    def stop_nginx(self) -> None:
        """Stop nginx (quickly)."""
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            self.nginx.wait(10)

    def heal(self) -> None:
        """Bring back what a case killed, stopped or cut, and wait for every route."""
        if not self.redis.running:
            self.redis.start()
        for process in self.processes():
            if process.process is not None and process.process.poll() is None:
                os.kill(process.process.pid, signal.SIGCONT)
            if process.process is None or process.process.poll() is not None:
                process.start()
        for process in self.processes():
            process.wait_healthy()
        if self.nginx is None or self.nginx.poll() is not None:
            self.start_nginx()
        wait_for_routes([g.url for g in self.gateways], stt=2, tts=2, clone=2)


def wait_for_routes(
    urls: list[str], *, stt: int, tts: int, clone: int = 0, timeout_s: float = 60.0
) -> None:
    """Wait until every gateway routes to ``stt`` STT replicas, the detector, ``tts`` VITS
    replicas and ``clone`` cloning replicas."""
    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    body: dict[str, object] = {}
    while pending and time.monotonic() < deadline:
        body = httpx.get(f"{pending[0]}/health", timeout=2).json()
        replicas = body.get("replicas")
        counts = replicas if isinstance(replicas, dict) else {}
        routes = body.get("stt_route")
        whole_tts = counts.get("tts_vits", 0) >= tts and counts.get("tts_clone", 0) >= clone
        if isinstance(routes, list) and len(routes) >= stt and body.get("detector") and whole_tts:
            pending.pop(0)
            continue
        time.sleep(0.2)
    if pending:
        raise RuntimeError(f"{pending[0]} never saw the whole mesh: {body}")


@pytest.fixture(scope="module")
def fault_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultMesh]:
    """The tier's mesh, up and routing; torn down after the last case, so that
    its eleven processes do not weigh on the tiers that run after it (a module fixture)."""
    logs = tmp_path_factory.mktemp("fault-logs")
    redis = RedisServer(tmp_path_factory.mktemp("fault-redis"))
    redis.start()
    env = {
        "VOICEMESH_REDIS_URL": redis.url,
        "VOICEMESH_HOME": str(tmp_path_factory.mktemp("fault-home")),
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.3",
        "VOICEMESH_GATEWAY_STALL_TIMEOUT_S": str(STALL_S),
        "VOICEMESH_GATEWAY_WYOMING_ENABLED": "false",
        "VOICEMESH_GATEWAY_MAX_SESSIONS_PER_KEY": "32",
        "VOICEMESH_STT_CPU_HEARTBEAT_INTERVAL_S": "0.5",
        "VOICEMESH_STT_CPU_CPU_THREADS": "1",
        "VOICEMESH_TTS_VITS_HEARTBEAT_INTERVAL_S": "0.5",
        "VOICEMESH_TTS_CLONE_HEARTBEAT_INTERVAL_S": "0.5",
        "VOICEMESH_TTS_CLONE_CACHE_MAX_BYTES": "0",
    }
    stt = [ServiceProcess("stt_cpu_ws", free_port(), env, logs) for _ in range(2)]
    detector = ServiceProcess("stt_tiny_ws", free_port(), env, logs)
    tts = [ServiceProcess("tts_vits", free_port(), env, logs) for _ in range(2)]
    clone = [ServiceProcess("tts_clone", free_port(), env, logs) for _ in range(2)]
    gateways = [ServiceProcess("gateway", free_port(), env, logs) for _ in range(2)]
    layout = NginxLayout(prefix=Path(tmp_path_factory.mktemp("fault-nginx")))
    nginx_port = free_port()
    write_embedded_conf(
        NginxSettings(port=nginx_port, ws_rate_per_s=50, api_rate_per_s=100),
        layout,
        [f"127.0.0.1:{g.port}" for g in gateways],
        body_limit_bytes=UpstreamGateway.defaults().body_limit_bytes,
    )
    mesh = FaultMesh(redis, stt, detector, tts, clone, gateways, nginx_port, layout)
    try:
        mesh.heal()
        yield mesh
    finally:
        mesh.stop_nginx()
        for process in reversed(mesh.processes()):
            if process.process is not None and process.process.poll() is None:
                os.kill(process.process.pid, signal.SIGCONT)
            process.stop()
        redis.stop()
