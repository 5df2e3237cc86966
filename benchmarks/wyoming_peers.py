"""Benchmark: the same clips through VoiceMesh's Wyoming port and through wyoming-faster-whisper.

Both servers get each clip exactly as Home Assistant sends it (:mod:`tests.wyoming_ha`:
``transcribe``, ``audio-start``, 64 ms ``audio-chunk`` events at real-time pace, then
``audio-stop`` after ``--silence`` seconds of trailing silence, the pause its VAD waits
for), one clip at a time and one server at a time, so they never share the cores:

* VoiceMesh: Redis, the speech detector, one CPU STT replica (Whisper base) and the
  gateway, started from this checkout in a temporary home;
* ``wyoming-faster-whisper`` (``pip install wyoming-faster-whisper``) on the same
  Whisper base folder the mesh uses (:func:`voicemesh.assets.resolve_whisper_model`),
  int8 on the CPU, its own defaults otherwise.

It prints, per server: the final's latency after ``audio-stop`` (p50 / p95) and the
mean WER against the references. Usage:
``python -m benchmarks.wyoming_peers [--clip-count 6] [--silence 0.7] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks import add_clips_option
from tests.harness import Clip, RedisServer, ServiceProcess, error_rate, free_port, load_manifest
from tests.wyoming_ha import transcribe
from voicemesh.audio_files import load_clip_16k
from voicemesh.settings import default_home

HOST = "127.0.0.1"


@dataclass
class Run:
    """One server's results over the clips."""

    name: str
    latencies_s: list[float] = field(default_factory=list)
    wers: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def row(self) -> str:
        """p50 / p95 latency in ms and mean WER, as a table row."""
        p50, p95 = (float(np.percentile(self.latencies_s, q) * 1000) for q in (50, 95))
        wer = float(np.mean(self.wers))
        return f"| {self.name} | {p50:.0f} | {p95:.0f} | {wer:.1f} | {len(self.wers)} |"


def wait_for_port(port: int, timeout_s: float = 180.0) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout_s} s")


@contextlib.contextmanager
def voicemesh(home: Path, threads: int) -> Iterator[int]:
    """The embedded mesh's STT side; yields the gateway's Wyoming port."""
    redis = RedisServer(home / "redis")
    env = {
        "VOICEMESH_REDIS_URL": redis.url,
        "VOICEMESH_HOME": str(home),
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        "VOICEMESH_STT_CPU_CPU_THREADS": str(threads),
    }
    processes = [
        ServiceProcess("stt_tiny_ws", free_port(), env, home),
        ServiceProcess("stt_cpu_ws", free_port(), env, home),
        ServiceProcess("gateway", free_port(), env, home),
    ]
    gateway = processes[-1]
    redis.start()
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_healthy()
        deadline = time.monotonic() + 30
        while not httpx.get(f"{gateway.url}/health", timeout=2).json().get("stt_route"):
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway never routed to STT")
            time.sleep(0.2)
        assert gateway.wyoming_port is not None
        wait_for_port(gateway.wyoming_port)
        yield gateway.wyoming_port
    finally:
        for process in reversed(processes):
            process.stop()
        redis.stop()


@contextlib.contextmanager
def faster_whisper_server(home: Path, threads: int) -> Iterator[int]:
    """wyoming-faster-whisper on the mesh's Whisper base folder; yields its port."""
    from voicemesh.assets import resolve_whisper_model

    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "wyoming_faster_whisper",
        "--uri",
        f"tcp://{HOST}:{port}",
        "--stt-library",
        "faster-whisper",
        "--model",
        str(resolve_whisper_model("base")),
        "--data-dir",
        str(home / "wfw"),
        "--language",
        "en",
        "--compute-type",
        "int8",
        "--cpu-threads",
        str(threads),
        "--local-files-only",
    ]
    log = open(home / "wyoming-faster-whisper.log", "wb")  # noqa: SIM115 - the child's
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


async def run_clips(name: str, port: int, clips: list[Clip], silence_s: float) -> Run:
    """Every clip through one server, one at a time; a warm-up clip first."""
    run = Run(name)
    warm = load_clip_16k(clips[0].path)[: 16000 * 2]
    await transcribe(HOST, port, warm, realtime=False, trailing_silence_s=silence_s)
    for clip in clips:
        result = await transcribe(
            HOST,
            port,
            load_clip_16k(clip.path),
            language=clip.language,
            realtime=True,
            trailing_silence_s=silence_s,
        )
        if result.errors:
            raise RuntimeError(f"{name}: {clip.file}: {result.errors}")
        run.latencies_s.append(result.latency_s)
        run.wers.append(error_rate(clip.text, result.text))
        run.texts.append(result.text)
        print(
            f"  {name:<24} {clip.file:<36} {result.latency_s * 1000:6.0f} ms  "
            f"WER {run.wers[-1]:5.1f}  {result.text[:60]}",
            flush=True,
        )
    return run


def main() -> int:
    """Run both servers over the clips and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_clips_option(parser)
    parser.add_argument("--clip-count", type=int, default=6, help="English clips to use")
    parser.add_argument("--silence", type=float, default=0.7, help="trailing silence (s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per engine")
    args = parser.parse_args()
    clips = [c for c in load_manifest(args.clips) if c.language == "en"][: args.clip_count]
    home = Path(tempfile.mkdtemp(prefix="vm-wyoming-peers-"))
    print(f"{len(clips)} clips, {args.silence} s of silence before audio-stop; logs in {home}")
    with voicemesh(home, args.threads) as port:
        ours = asyncio.run(run_clips("VoiceMesh (Wyoming)", port, clips, args.silence))
    with faster_whisper_server(home, args.threads) as port:
        theirs = asyncio.run(run_clips("wyoming-faster-whisper", port, clips, args.silence))
    print()
    print("| server | final after audio-stop p50 (ms) | p95 (ms) | WER % | clips |")
    print("|---|---|---|---|---|")
    print(ours.row())
    print(theirs.row())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
