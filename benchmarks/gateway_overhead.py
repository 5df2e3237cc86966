"""Benchmark: the time the gateway adds to each message, with many sessions at once.

Decoding time varies far more than the gateway's cost, so this measures the gateway
against an engine that takes no time: ``EchoStt``, a fake STT replica (named fake:
it transcribes nothing) that speaks the service's side of ``/ws/transcribe`` and
answers every audio frame at once with a ``partial`` naming the frame's number,
written by the client into the frame's first samples. The fake registers in Redis as
a CPU replica, so a real gateway process routes to it exactly as to a real one.

N sessions stream 40 ms frames at real-time pace, first straight to the fake, then
through the gateway, and every frame's round trip is timed. What the gateway adds
(client -> gateway -> replica and back, with its PCM check, session buffer, stall
watch and JSON) is the difference of the two distributions at p50, p95 and p99.

Usage: ``python -m benchmarks.gateway_overhead [--sessions 1,12] [--seconds 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection

from tests.harness import (
    RedisServer,
    ServiceProcess,
    WebSocketServerThread,
    fake_stt_entry,
    free_port,
    register_replicas,
)
from voicemesh.registry import ReplicaInfo

FRAME_MS = 40
FRAME_BYTES = 16 * FRAME_MS * 2


class EchoStt(WebSocketServerThread):
    """A fake STT replica on its own thread and event loop: answers each frame at once."""

    def __init__(self) -> None:
        super().__init__(self._session, "echo-stt")

    def replica(self) -> ReplicaInfo:
        """Its registry entry, as a replica's heartbeat writes it."""
        return fake_stt_entry("echo-stt-fake", self.url, max_sessions=1024)

    async def _session(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "ready", "engine": "fake", "device": "cpu"}))
        samples = 0
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                if isinstance(message, bytes):
                    samples += len(message) // 2
                    (seq,) = struct.unpack_from("<I", message, 0)
                    partial = {
                        "type": "partial",
                        "utterance_id": 0,
                        "text": str(seq),
                        "stable_text": "",
                        "start": 0.0,
                        "end": round(samples / 16000, 3),
                    }
                    await ws.send(json.dumps(partial))
                elif json.loads(message).get("type") == "stop":
                    await ws.close()


async def one_session(url: str, seconds: float, delay: float) -> dict[int, float]:
    """Round trip of every frame (seconds), by frame number."""
    await asyncio.sleep(delay)
    sent: dict[int, float] = {}
    rtt: dict[int, float] = {}
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        json.loads(await ws.recv())  # ready

        async def receive() -> None:
            async for raw in ws:
                if isinstance(raw, str):
                    message = json.loads(raw)
                    if message.get("type") == "partial":
                        seq = int(message["text"])
                        rtt[seq] = time.perf_counter() - sent[seq]

        reader = asyncio.create_task(receive())
        frames = int(seconds * 1000 / FRAME_MS)
        t0 = time.perf_counter()
        for seq in range(frames):
            delay_s = t0 + seq * FRAME_MS / 1000 - time.perf_counter()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            payload = bytearray(FRAME_BYTES)
            struct.pack_into("<I", payload, 0, seq)
            sent[seq] = time.perf_counter()
            await ws.send(bytes(payload))
        await asyncio.sleep(0.5)
        await ws.send(json.dumps({"type": "stop"}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)
    return rtt


async def crowd(url: str, sessions: int, seconds: float) -> list[dict[int, float]]:
    """``sessions`` at once, starts spread over one frame."""
    return await asyncio.gather(
        *(one_session(url, seconds, i * FRAME_MS / 1000 / sessions) for i in range(sessions))
    )


def main() -> int:
    """Run direct and through the gateway at each N; print what the gateway added."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,12")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="vm-gw-overhead-"))
    server = RedisServer(home / "redis")
    server.start()
    env = {
        "VOICEMESH_REDIS_URL": server.url,
        "VOICEMESH_HOME": str(home),
        "VOICEMESH_GATEWAY_USE_DETECTOR": "false",
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
        "VOICEMESH_GATEWAY_PROBE_INTERVAL_S": "0",
        "VOICEMESH_GATEWAY_MAX_SESSIONS_PER_KEY": "256",
    }
    gateway = ServiceProcess("gateway", free_port(), env, home)
    with EchoStt() as echo:
        register_replicas(server.url, echo.replica())
        gateway.start()
        try:
            gateway.wait_healthy()
            time.sleep(1.5)
            direct_url = f"ws://127.0.0.1:{echo.port}/ws/transcribe"
            routed_url = f"ws://127.0.0.1:{gateway.port}/ws/transcribe"
            print("sessions  direct p50/p99 ms   via gateway p50/p99 ms   added p50/p95/p99 ms")
            for n in (int(x) for x in args.sessions.split(",")):
                direct = asyncio.run(crowd(direct_url, n, args.seconds))
                routed = asyncio.run(crowd(routed_url, n, args.seconds))
                d_all = [v for d in direct for v in d.values()]
                r_all = [v for r in routed for v in r.values()]

                def ms(values: list[float], q: float) -> float:
                    return float(np.percentile(values, q) * 1000) if values else float("nan")

                added = [ms(r_all, q) - ms(d_all, q) for q in (50, 95, 99)]
                print(
                    f"{n:8d}  {ms(d_all, 50):6.2f} / {ms(d_all, 99):6.2f}   "
                    f"{ms(r_all, 50):8.2f} / {ms(r_all, 99):7.2f}   "
                    f"{added[0]:6.2f} / {added[1]:6.2f} / {added[2]:6.2f}"
                    f"   ({len(d_all)} and {len(r_all)} frames)",
                    flush=True,
                )
        finally:
            gateway.stop()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
