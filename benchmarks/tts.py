"""Benchmark: how fast ``tts_vits`` speaks with the bundled Piper voice.

Starts one tts_vits replica on loopback (real voice, no Redis), then prints:

* time to first audio chunk of a streamed request (``stream: true``, PCM), p50/p95,
  for a short one-sentence text and a three-sentence text (``--runs`` each);
* real-time factor of whole (non-streamed) requests: the service's own synthesis time
  over the audio duration (``X-VoiceMesh-RTF``), p50/p95, and the client-side wall time
  over the duration;
* throughput: requests per second with ``--clients`` concurrent clients (default 4)
  sending the three-sentence text for ``--seconds``.

Targets on the 2-core reference machine: first chunk p50 <= 200 ms for the short
sentence, RTF <= 0.12. Usage: ``python -m benchmarks.tts [--runs 20] [--clients 4]``.
Settings of the service can be passed as environment variables
(``VOICEMESH_TTS_VITS_NUM_THREADS``, ``..._POOL_SIZE``, ``..._MAX_CONCURRENT``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from tests.harness import ServiceProcess, free_port
from voicemesh.settings import default_home

SHORT = "The weather is lovely today."
THREE = (
    "The weather is lovely today, so we are going for a walk in the park. "
    "After that we will have lunch by the river. Then we head home before it gets dark."
)


def pct(values: list[float], q: float) -> float:
    """Percentile of seconds, in milliseconds."""
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def first_chunk_s(client: httpx.Client, text: str) -> float:
    """Seconds from sending a streamed request to its first audio bytes."""
    started = time.perf_counter()
    with client.stream(
        "POST", "/v1/synthesize", json={"text": text, "format": "pcm", "stream": True}
    ) as response:
        response.raise_for_status()
        first: float | None = None
        for chunk in response.iter_raw():
            if chunk and first is None:
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream carried no audio")
    return first


def whole(client: httpx.Client, text: str) -> tuple[float, float, float]:
    """(service RTF, wall seconds, audio seconds) of one non-streamed request."""
    started = time.perf_counter()
    response = client.post("/v1/synthesize", json={"text": text, "format": "pcm"})
    response.raise_for_status()
    wall = time.perf_counter() - started
    return (
        float(response.headers["x-voicemesh-rtf"]),
        wall,
        float(response.headers["x-voicemesh-duration"]),
    )


def throughput(url: str, clients: int, seconds: float) -> tuple[int, float, int]:
    """(completed requests, requests per second, refused) with ``clients`` loops at once."""
    deadline = time.perf_counter() + seconds

    def loop(_: int) -> tuple[int, int]:
        done = refused = 0
        with httpx.Client(base_url=url, timeout=120) as client:
            while time.perf_counter() < deadline:
                response = client.post("/v1/synthesize", json={"text": THREE, "format": "pcm"})
                if response.status_code == 200:
                    done += 1
                else:
                    refused += 1
        return done, refused

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(loop, range(clients)))
    elapsed = time.perf_counter() - started
    done = sum(d for d, _ in results)
    return done, done / elapsed, sum(r for _, r in results)


def main() -> int:
    """Run the benchmark and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="requests per latency figure")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="throughput duration")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="vm-tts-bench-"))
    env = {
        "VOICEMESH_REDIS_URL": "",
        "VOICEMESH_HOME": str(home),
        "VOICEMESH_MODELS_DIR": os.environ.get(
            "VOICEMESH_MODELS_DIR", str(default_home() / "models")
        ),
    }
    service = ServiceProcess("tts_vits", free_port(), env, home).start()
    try:
        service.wait_healthy()
        with httpx.Client(base_url=service.url, timeout=120) as client:
            for _ in range(3):  # warm up
                first_chunk_s(client, SHORT)
            short = [first_chunk_s(client, SHORT) for _ in range(args.runs)]
            three = [first_chunk_s(client, THREE) for _ in range(args.runs)]
            measured = [whole(client, text) for text in (SHORT, THREE) * (args.runs // 2)]
        rtf = [m[0] for m in measured]
        wall_rtf = [m[1] / m[2] for m in measured]
        done, rps, refused = throughput(service.url, args.clients, args.seconds)
    finally:
        service.stop()

    print(f"tts_vits benchmark (Piper en_US-joe-medium via sherpa-onnx, {os.cpu_count()} cores)")
    print(
        f"first chunk, 1 sentence : p50 {pct(short, 50):6.0f} ms  p95 {pct(short, 95):6.0f} ms"
        f"  (target p50 <= 200 ms)"
    )
    print(f"first chunk, 3 sentences: p50 {pct(three, 50):6.0f} ms  p95 {pct(three, 95):6.0f} ms")
    print(
        f"RTF (service)           : p50 {np.percentile(rtf, 50):6.3f}     "
        f"p95 {np.percentile(rtf, 95):6.3f}      (target <= 0.12)"
    )
    print(
        f"RTF (client wall)       : p50 {np.percentile(wall_rtf, 50):6.3f}     "
        f"p95 {np.percentile(wall_rtf, 95):6.3f}"
    )
    print(
        f"throughput, {args.clients} clients   : {rps:.2f} requests/s "
        f"({done} three-sentence requests in {args.seconds:.0f} s, {refused} refused)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
