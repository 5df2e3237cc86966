"""Benchmark: what nginx in front of the gateway costs.

Starts ``voicemesh up --with-nginx`` in a home of its own (real Redis, real services,
real nginx on loopback), then prints, for the gateway directly and through nginx:

* HTTP round trip of ``GET /v1/admin/mode``, p50/p95 over ``--requests`` calls;
* WebSocket open to ``ready`` on ``/ws/transcribe``, p50/p95 over ``--sessions`` opens;
* a shared clip streamed at real-time pace, then ``<flush>``: flush to the last final.

nginx's rate limits are raised for the run so they do not shape the numbers. On a
shared 2-core machine the absolute numbers are pessimistic; the difference is the point.

Usage: ``python -m benchmarks.front_door [--requests 200] [--sessions 20]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import websockets

from benchmarks import add_clips_option
from client.streaming import stream_audio
from tests.harness import REPO, clip_named, free_port
from voicemesh.audio_files import load_clip_16k
from voicemesh.settings import default_home


def pct(values: list[float], q: float) -> float:
    """Percentile in milliseconds."""
    return float(np.percentile(values, q) * 1000)


def http_times(bases: dict[str, str], count: int) -> dict[str, list[float]]:
    """Round trips of a cheap gateway route, alternating the paths so drift hits both."""
    times: dict[str, list[float]] = {label: [] for label in bases}
    with httpx.Client(timeout=10, trust_env=False) as client:
        for base in bases.values():
            client.get(f"{base}/v1/admin/mode").raise_for_status()
        for _ in range(count):
            for label, base in bases.items():
                started = time.perf_counter()
                client.get(f"{base}/v1/admin/mode").raise_for_status()
                times[label].append(time.perf_counter() - started)
    return times


async def ws_open_times(urls: dict[str, str], count: int) -> dict[str, list[float]]:
    """Time from connect to the ``ready`` message, alternating the paths."""
    times: dict[str, list[float]] = {label: [] for label in urls}
    for _ in range(count):
        for label, url in urls.items():
            started = time.perf_counter()
            async with websockets.connect(url) as ws:
                message = json.loads(await ws.recv())
                times[label].append(time.perf_counter() - started)
                assert message["type"] == "ready", message
    return times


async def final_after_end(ws_url: str, clips_dir: Path) -> float:
    """Seconds from the end of the audio (sent at real-time pace) to the last final."""
    audio = load_clip_16k(clip_named("whisper-jfk.wav", clips_dir).path)
    result = await stream_audio(ws_url, audio, language="en", trailing_silence_s=0, end="flush")
    finals = result.timed("final")
    return finals[-1][0] - result.sent_seconds if finals else float("nan")


def main() -> int:
    """Start the mesh with nginx, measure both paths, print the table, stop the mesh."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=20)
    add_clips_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vm-front-door-") as home:
        gateway_port, nginx_port = free_port(), free_port()
        env = {
            **os.environ,
            "VOICEMESH_HOME": home,
            "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
            "VOICEMESH_NGINX_API_RATE_PER_S": "10000",
            "VOICEMESH_NGINX_API_BURST": "10000",
            "VOICEMESH_NGINX_WS_RATE_PER_S": "10000",
            "VOICEMESH_NGINX_WS_BURST": "10000",
        }

        def cli(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "voicemesh.cli", *argv],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )

        up = cli(
            "up",
            "--port",
            str(gateway_port),
            "--with-nginx",
            "--nginx-port",
            str(nginx_port),
            "--no-gpu",
        )
        if up.returncode != 0:
            print(up.stdout + up.stderr, file=sys.stderr)
            return 1
        try:
            ports = {"direct": gateway_port, "nginx": nginx_port}
            http = http_times({k: f"http://127.0.0.1:{v}" for k, v in ports.items()}, args.requests)
            urls = {k: f"ws://127.0.0.1:{v}/ws/transcribe" for k, v in ports.items()}
            opens = asyncio.run(ws_open_times(urls, args.sessions))
            print(
                f"{'path':<8} {'HTTP p50':>9} {'HTTP p95':>9} {'WS open p50':>12} "
                f"{'WS open p95':>12} {'flush to final':>15}"
            )
            for label, url in urls.items():
                tail = asyncio.run(final_after_end(url, args.clips))
                print(
                    f"{label:<8} {pct(http[label], 50):7.2f}ms {pct(http[label], 95):7.2f}ms "
                    f"{pct(opens[label], 50):10.2f}ms {pct(opens[label], 95):10.2f}ms "
                    f"{tail * 1000:13.0f}ms"
                )
        finally:
            cli("down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
