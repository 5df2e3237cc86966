"""Benchmark: the CPU cloning engine and the result cache.

Prints:

* speaker similarity: for every English shared clip usable as a reference (3 s of
  speech or more), the cosine of ``resemblyzer`` speaker embeddings between the
  reference and (a) the plain VITS voice, (b) the same audio adapted toward the
  reference with WORLD; a table and the means (b must beat a);
* CPU engine real-time factor: synthesis plus adaptation time over audio time
  (median, p95, overall), and the share of it the adaptation takes;
* cache hit latency: ``--hits`` requests for a cached result through a real
  ``tts_clone`` process on loopback (HTTP, real Redis), p50/p95.

Needs ``resemblyzer`` (``bash scripts/setup-bench-clone``). Numbers taken on a shared
machine are pessimistic.

Usage: ``python -m benchmarks.clone [--hits 200]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import add_clips_option
from tests.harness import RedisServer, ServiceProcess, clip_named, free_port, load_manifest
from voicemesh.audio import resample
from voicemesh.audio_files import read_audio_file
from voicemesh.clone.engines import WorldAdaptedVits
from voicemesh.clone.reference import ReferenceRejected, prepare_reference
from voicemesh.clone.world import adapt_toward, analyze_speaker
from voicemesh.settings import default_home

REFERENCE_RATE = 32000


def ms(values: list[float], q: float) -> float:
    """Percentile in milliseconds."""
    return float(np.percentile(values, q) * 1000)


def similarity_and_rtf(clips_dir: Path) -> None:
    """Plain vs adapted speaker similarity over the shared clips, and the engine's RTF."""
    from resemblyzer import VoiceEncoder, preprocess_wav

    from voicemesh.clone.vits import load_base_voice

    encoder = VoiceEncoder("cpu", verbose=False)
    engine = WorldAdaptedVits(load_base_voice("en_US-joe-medium"), "en_US-joe-medium")
    rate = engine.sample_rate
    source = engine.source

    def embed(audio: np.ndarray, audio_rate: int) -> np.ndarray:
        return np.asarray(
            encoder.embed_utterance(preprocess_wav(resample(audio, audio_rate, 16000), 16000))
        )

    clips = [c for c in load_manifest(clips_dir) if c.language == "en"]
    rows, rtfs, adapt_share = [], [], []
    total_work = total_audio = 0.0
    for index, clip in enumerate(clips):
        audio, clip_rate = read_audio_file(clip.path)
        try:
            ref = prepare_reference(resample(audio, clip_rate, REFERENCE_RATE), REFERENCE_RATE)
        except ReferenceRejected as exc:
            print(f"  (skipping {clip.file}: {exc.code})")
            continue
        target = analyze_speaker(ref.audio, REFERENCE_RATE)
        text = clips[(index + 1) % len(clips)].text  # not the reference's own words
        started = time.perf_counter()
        plain = engine.voice.synthesize(text)
        synthesized = time.perf_counter()
        adapted = adapt_toward(plain, rate, source, target, engine.strength)
        finished = time.perf_counter()
        seconds = plain.size / rate
        rtfs.append((finished - started) / seconds)
        adapt_share.append((finished - synthesized) / (finished - started))
        total_work += finished - started
        total_audio += seconds
        ref_embedding = embed(ref.audio, REFERENCE_RATE)
        rows.append(
            (
                clip.file,
                target.f0_hz,
                float(ref_embedding @ embed(plain, rate)),
                float(ref_embedding @ embed(adapted, rate)),
            )
        )
    print("\nspeaker similarity to the reference (resemblyzer cosine)")
    print(f"  {'reference':44s} {'F0 Hz':>6s} {'plain':>7s} {'adapted':>8s}")
    for name, f0, plain_sim, adapted_sim in rows:
        print(f"  {name:44s} {f0:6.0f} {plain_sim:7.3f} {adapted_sim:8.3f}")
    plain_mean = float(np.mean([r[2] for r in rows]))
    adapted_mean = float(np.mean([r[3] for r in rows]))
    wins = sum(r[3] > r[2] for r in rows)
    print(
        f"  {'mean':44s} {'':6s} {plain_mean:7.3f} {adapted_mean:8.3f}   "
        f"(adapted better on {wins}/{len(rows)})"
    )
    print(
        f"\nCPU engine RTF (VITS + WORLD adaptation), {len(rtfs)} sentences: "
        f"median {np.median(rtfs):.3f}, p95 {np.percentile(rtfs, 95):.3f}, "
        f"overall {total_work / total_audio:.3f}; adaptation is "
        f"{100 * np.median(adapt_share):.0f}% of the time (median)"
    )


def cache_latency(hits: int, clips_dir: Path) -> None:
    """p50/p95 of cache hits through a real tts_clone process (HTTP on loopback)."""
    import httpx

    with tempfile.TemporaryDirectory(prefix="vm-clone-bench-") as tmp:
        home = Path(tmp)
        redis = RedisServer(home / "redis")
        redis.start()
        env = {
            "VOICEMESH_REDIS_URL": redis.url,
            "VOICEMESH_HOME": str(home),
            "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        }
        service = ServiceProcess("tts_clone", free_port(), env, home)
        try:
            service.start().wait_healthy()
            reference = clip_named("pocketsphinx-librivox-0870.wav", clips_dir)
            with httpx.Client(base_url=service.url, timeout=120) as client:
                voice = client.post(
                    "/v1/voices",
                    files={"audio": (reference.file, reference.path.read_bytes(), "audio/wav")},
                    data={"name": "bench", "prompt_text": reference.text, "consent": "true"},
                ).json()
                request = {
                    "text": "Take two tablets after dinner, with a glass of water.",
                    "voice_id": voice["voice_id"],
                }
                started = time.perf_counter()
                miss = client.post("/v1/synthesize", json=request)
                miss_s = time.perf_counter() - started
                assert miss.headers["x-voicemesh-cache"] == "miss"
                latencies = []
                for _ in range(hits):
                    started = time.perf_counter()
                    response = client.post("/v1/synthesize", json=request)
                    latencies.append(time.perf_counter() - started)
                    assert response.headers["x-voicemesh-cache"] == "hit"
                health = client.get("/health").json()
        finally:
            service.stop()
            redis.stop()
    print(
        f"\ncache: miss (synthesis) {miss_s * 1000:.0f} ms; {hits} hits of "
        f"{len(miss.content) / 1024:.0f} KiB: p50 {ms(latencies, 50):.1f} ms, "
        f"p95 {ms(latencies, 95):.1f} ms; hit rate {json.dumps(health['cache'])}"
    )


def main() -> None:
    """Run both parts and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=200, help="cache hits to time")
    parser.add_argument("--skip-similarity", action="store_true")
    add_clips_option(parser)
    args = parser.parse_args()
    if not args.skip_similarity:
        similarity_and_rtf(args.clips)
    cache_latency(args.hits, args.clips)


if __name__ == "__main__":
    main()
