"""Benchmark: what the gateway costs and what it saves.

Starts its own Redis, two CPU STT replicas and a gateway on loopback (real models),
then prints:

* gateway overhead: the same clips streamed straight to an STT replica and through
  the gateway, messages paired by (type, utterance, index); added latency p50/p99;
* failover gap: a replica is SIGKILLed at the first partial of a stream; time from
  the kill to the failover message and to the next partial or final (p50/p95 over
  ``--kills`` runs), and whether the transcript stayed whole;
* spread: ``--sessions`` concurrent sessions, how many landed on each replica.

Usage: ``python -m benchmarks.gateway [--kills 5] [--sessions 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import add_clips_option
from client.streaming import StreamResult, stream_audio
from tests.harness import (
    RedisServer,
    ServiceProcess,
    clip_named,
    error_rate,
    free_port,
    load_manifest,
)
from voicemesh.audio_files import load_clip_16k
from voicemesh.settings import default_home


def pct(values: list[float], q: float) -> float:
    """Percentile in milliseconds."""
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def keyed(result: StreamResult) -> dict[tuple[str, int, int], float]:
    """Arrival time of each partial/final, keyed by (type, utterance, index)."""
    seen: Counter[tuple[str, int]] = Counter()
    out = {}
    for t, m in result.messages:
        if m.get("type") in ("partial", "final"):
            key = (m["type"], int(m["utterance_id"]))
            out[(*key, seen[key])] = t
            seen[key] += 1
    return out


async def overhead(gateway_ws: str, direct_ws: str, clips: list[Any]) -> list[float]:
    """Added latency per message, through the gateway vs straight to the replica."""
    added: list[float] = []
    for clip in clips:
        audio = load_clip_16k(clip.path)
        direct = keyed(await stream_audio(direct_ws, audio, language=clip.language))
        routed = keyed(await stream_audio(gateway_ws, audio, language=clip.language))
        added += [routed[k] - direct[k] for k in direct.keys() & routed.keys()]
    return added


class Mesh:
    """Redis, two CPU replicas and a gateway in a temporary home."""

    def __init__(self, use_detector: bool) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="vm-gw-bench-"))
        self.redis = RedisServer(self.home / "redis")
        env = {
            "VOICEMESH_REDIS_URL": self.redis.url,
            "VOICEMESH_HOME": str(self.home),
            "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
            "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.3",
            "VOICEMESH_GATEWAY_USE_DETECTOR": "true" if use_detector else "false",
        }
        self.cpu = [ServiceProcess("stt_cpu_ws", free_port(), env, self.home) for _ in range(2)]
        self.detector = ServiceProcess("stt_tiny_ws", free_port(), env, self.home)
        self.gateway = ServiceProcess("gateway", free_port(), env, self.home)
        self.processes = [*self.cpu, *([self.detector] if use_detector else []), self.gateway]

    def __enter__(self) -> Mesh:
        self.redis.start()
        for p in self.processes:
            p.start()
        for p in self.processes:
            p.wait_healthy()
        self.wait_routes()
        return self

    def wait_routes(self) -> None:
        """Wait until the gateway routes to both replicas."""
        import httpx

        for _ in range(100):
            body = httpx.get(f"{self.gateway.url}/health", timeout=2).json()
            if len(body.get("stt_route") or []) == len(self.cpu):
                return
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.processes):
            p.stop()
        self.redis.stop()

    @property
    def ws(self) -> str:
        """The gateway's streaming endpoint."""
        return f"ws://127.0.0.1:{self.gateway.port}/ws/transcribe"


async def failover_runs(mesh: Mesh, kills: int, clips_dir: Path) -> dict[str, Any]:
    """SIGKILL the serving replica at the first partial, ``kills`` times."""
    clip = clip_named("coqui-tts-LJ001-0001.wav", clips_dir)
    to_message, to_text, wers = [], [], []
    for _ in range(kills):
        state: dict[str, Any] = {}

        def on_message(t: float, m: dict[str, Any], state: dict[str, Any] = state) -> None:
            if m.get("type") == "ready":
                state["backend"] = m["backend"]
            elif m.get("type") == "partial" and "killed" not in state:
                victim = next(p for p in mesh.cpu if p.url == state["backend"])
                assert victim.process is not None
                os.kill(victim.process.pid, signal.SIGKILL)
                state["killed"] = t
                state["victim"] = victim

        result = await stream_audio(
            mesh.ws, load_clip_16k(clip.path), language="en", on_message=on_message
        )
        killed = state["killed"]
        failover = [t for t, m in result.messages if m.get("type") == "failover"]
        after = [
            t for t, m in result.messages if m.get("type") in ("partial", "final") and t > killed
        ]
        if failover:
            to_message.append(failover[0] - killed)
        if after:
            to_text.append(after[0] - killed)
        wers.append(error_rate(clip.text, result.transcript))
        state["victim"].start().wait_healthy()
        mesh.wait_routes()
    return {"to_failover": to_message, "to_text": to_text, "wer": wers}


async def spread(mesh: Mesh, sessions: int, clips_dir: Path) -> Counter[str]:
    """Open ``sessions`` at once; count the replica each landed on."""
    audio = load_clip_16k(clip_named("whisper-jfk.wav", clips_dir).path)[:48000]
    results = await asyncio.gather(
        *[
            stream_audio(mesh.ws, audio, language="en", trailing_silence_s=0.5)
            for _ in range(sessions)
        ]
    )
    return Counter(r.messages[0][1]["backend"] for r in results)


def main() -> int:
    """Run all three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--clip-count", type=int, default=6, help="English clips for overhead")
    add_clips_option(parser)
    args = parser.parse_args()
    clips = [c for c in load_manifest(args.clips) if c.language == "en"][: args.clip_count]
    with Mesh(use_detector=False) as mesh:
        direct = mesh.cpu[0].url.replace("http://", "ws://") + "/ws/transcribe"
        added = asyncio.run(overhead(mesh.ws, direct, clips))
        runs = asyncio.run(failover_runs(mesh, args.kills, args.clips))
        placed = asyncio.run(spread(mesh, args.sessions, args.clips))
    print()
    print(
        f"gateway overhead ({len(added)} paired messages, detector off): "
        f"p50 {pct(added, 50):.0f} ms, p99 {pct(added, 99):.0f} ms"
    )
    print(
        f"failover after SIGKILL ({args.kills} runs): failover message "
        f"p50 {pct(runs['to_failover'], 50):.0f} ms p95 {pct(runs['to_failover'], 95):.0f} ms;"
        f" next transcript message p50 {pct(runs['to_text'], 50):.0f} ms "
        f"p95 {pct(runs['to_text'], 95):.0f} ms; WER per run {runs['wer']}"
    )
    print(
        f"spread of {args.sessions} concurrent sessions over 2 replicas: "
        f"{sorted(placed.values(), reverse=True)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
