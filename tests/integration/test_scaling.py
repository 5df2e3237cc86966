"""``voicemesh up --scale stt_cpu_ws=3``: three real replicas, sessions spread, one killed;
and every engine of the default mesh answers only the gateway (issue 15)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.streaming import stream_audio
from tests.harness import REPO, clean_environ, clip_named, error_rate, free_port
from voicemesh.audio_files import load_clip_16k
from voicemesh.settings import default_home

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LJ = clip_named("coqui-tts-LJ001-0001.wav")


class EmbeddedMesh:
    """The mesh as ``voicemesh up`` runs it, in a home of its own."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.up_output = ""
        """What ``voicemesh up`` printed."""
        self.env = {
            **clean_environ(),
            "VOICEMESH_HOME": str(home),
            "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
            "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.3",
            "VOICEMESH_STT_CPU_HEARTBEAT_INTERVAL_S": "0.5",
        }

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``voicemesh ARGS`` against this mesh."""
        return subprocess.run(
            [sys.executable, "-m", "voicemesh.cli", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=300,
        )

    def state(self) -> dict[str, Any]:
        """The runner's state file."""
        return json.loads((self.home / "run" / "state.json").read_text())

    def replicas(self) -> list[dict[str, Any]]:
        """The STT replicas the runner supervises."""
        return [s for s in self.state()["services"] if s["name"] == "stt_cpu_ws"]

    @property
    def gateway(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def wait_routes(self, count: int, timeout_s: float = 60.0) -> list[str]:
        """Wait until the gateway routes to ``count`` STT replicas."""
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = httpx.get(f"{self.gateway}/health", timeout=2).json()
            if len(body.get("stt_route") or []) >= count:
                return list(body["stt_route"])
            time.sleep(0.2)
        raise AssertionError(f"gateway did not see {count} replicas: {body}")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedMesh]:
    """``voicemesh up --scale stt_cpu_ws=3`` for the module, ``voicemesh down`` after."""
    mesh = EmbeddedMesh(tmp_path_factory.mktemp("scaled-home"))
    up = mesh.cli(
        "up", "--port", str(mesh.port), "--scale", "stt_cpu_ws=3", "--no-gpu", check=False
    )
    mesh.up_output = up.stdout + up.stderr
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        mesh.wait_routes(3)
        yield mesh
    finally:
        mesh.cli("down", check=False)


def test_engines_answer_only_the_gateway_with_no_user_action(embedded: EmbeddedMesh) -> None:
    token_file = embedded.home / "secrets" / "internal-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert "engines accept only the gateway" in embedded.up_output
    assert token not in embedded.up_output
    engines = [s for s in embedded.state()["services"] if s["name"] != "gateway"]
    assert {s["name"] for s in engines} >= {"stt_tiny_ws", "stt_cpu_ws", "tts_vits", "tts_clone"}
    with httpx.Client(timeout=10, trust_env=False) as client:
        for engine in engines:
            refused = client.get(f"{engine['url']}/openapi.json")
            assert refused.status_code == 401, (engine["name"], refused.text)
            assert refused.json()["error"]["code"] == "internal_token_required"
            assert token not in refused.text
            assert client.get(f"{engine['url']}/health").status_code == 200, engine["name"]
            let_in = client.get(
                f"{engine['url']}/openapi.json", headers={"X-VoiceMesh-Internal-Token": token}
            )
            assert let_in.status_code == 200, engine["name"]
    # The gateway itself, with the token, routes to them (the sessions below stream).
    assert httpx.get(f"{embedded.gateway}/health", timeout=5).json()["replicas"]["stt_cpu_ws"] == 3


def test_three_replicas_run_on_their_own_ports(embedded: EmbeddedMesh) -> None:
    replicas = embedded.replicas()
    assert len(replicas) == 3
    assert len({r["port"] for r in replicas}) == 3
    status = embedded.cli("status", check=False)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("stt_cpu_ws") >= 3


async def test_sessions_spread_and_survive_a_killed_replica(embedded: EmbeddedMesh) -> None:
    ws_url = f"ws://127.0.0.1:{embedded.port}/ws/transcribe"
    victim: dict[str, Any] = {}

    def kill_first_backend(t: float, message: dict[str, Any]) -> None:
        if message.get("type") == "ready":
            victim["url"] = message["backend"]
        elif message.get("type") == "partial" and "pid" not in victim:
            replica = next(r for r in embedded.replicas() if r["url"] == victim["url"])
            victim["pid"] = replica["pid"]
            os.kill(replica["pid"], signal.SIGKILL)

    audio = load_clip_16k(LJ.path)
    results = await asyncio.gather(
        stream_audio(ws_url, audio, language="en", on_message=kill_first_backend),
        *[stream_audio(ws_url, audio, language="en") for _ in range(2)],
    )
    backends = {r.messages[0][1]["backend"] for r in results}
    assert len(backends) == 3, backends
    killed = results[0]
    failovers = killed.of_type("failover")
    # The first move is off the killed replica. On a loaded machine the replica that took
    # the session over (now serving two) may fall behind and pass it on once more: that
    # is the stall watch doing its job, and the transcript below must still be whole.
    assert failovers and failovers[0]["from"] == victim["url"], killed.messages
    assert failovers[0]["to"] != victim["url"], killed.messages
    for result in results:
        assert error_rate(LJ.text, result.transcript) <= 10, result.transcript
    # The supervisor brings the killed replica back, and the gateway routes to it again.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        replica = next(r for r in embedded.replicas() if r["url"] == victim["url"])
        if replica["pid"] not in (None, victim["pid"]) and replica["restarts"] >= 1:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError(f"replica {victim['url']} was not restarted")
    await asyncio.to_thread(embedded.wait_routes, 3)
