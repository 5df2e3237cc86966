"""Benchmark: stream the shared clips through the gateway at real-time pace.

For each model it starts the embedded mesh (``voicemesh up`` in a temporary home,
with ``VOICEMESH_STT_CPU_MODEL`` set) unless ``--url`` points at a running gateway,
streams every clip of the manifest one after another as a microphone would, and
prints:

* end of speech -> final latency, p50 / p95 (end of speech from an offline Silero
  pass over the clip, so trailing silence counts against us, not for us);
* speech start -> first partial latency, p50 / p95;
* offline RTF of faster-whisper on the same model (whole clip, default decoding);
* streaming WER vs offline WER (CER for Chinese), averaged over the clips.

Usage: ``python -m benchmarks.stt_stream [--models base,tiny.en] [--url ws://...]``.
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

import numpy as np

from benchmarks import add_clips_option
from client.streaming import stream_audio
from tests.harness import REPO, Clip, error_rate, load_manifest
from voicemesh.audio_files import load_clip_16k

FRAME_MS = (20, 32, 50, 100)


def speech_spans(audio: np.ndarray) -> list[tuple[float, float]]:
    """Speech (start, end) in seconds from an offline Silero pass, no padding."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    spans = get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=300, speech_pad_ms=0))
    return [(s["start"] / 16000, s["end"] / 16000) for s in spans]


def offline(model_name: str, clips: list[Clip]) -> tuple[dict[str, str], list[float]]:
    """faster-whisper's offline transcripts and RTFs with the same model."""
    from faster_whisper import WhisperModel

    from voicemesh.assets import resolve_whisper_model
    from voicemesh.stt.script import convert_for_language

    model = WhisperModel(resolve_whisper_model(model_name), device="cpu", compute_type="int8")
    texts, rtfs = {}, []
    for clip in clips:
        audio = load_clip_16k(clip.path)
        started = time.perf_counter()
        segments, _ = model.transcribe(audio, language=clip.language)
        # The services write Chinese in simplified characters; so does this baseline.
        texts[clip.file] = convert_for_language(
            " ".join(s.text.strip() for s in segments), clip.language
        )
        rtfs.append((time.perf_counter() - started) / clip.duration_s)
    return texts, rtfs


def pct(values: list[float], q: float) -> float:
    """Percentile in milliseconds."""
    return float(np.percentile(values, q) * 1000) if values else float("nan")


async def stream_all(url: str, clips: list[Clip]) -> dict[str, object]:
    """Stream every clip; collect latencies and transcripts."""
    final_lat: list[float] = []
    first_partial: list[float] = []
    transcripts: dict[str, str] = {}
    for i, clip in enumerate(clips):
        audio = load_clip_16k(clip.path)
        spans = speech_spans(audio)
        result = await stream_audio(
            url, audio, language=clip.language, frame_ms=FRAME_MS[i % len(FRAME_MS)]
        )
        transcripts[clip.file] = result.transcript
        ends = [e for _, e in spans]
        for received, final in result.timed("final"):
            before = [e for e in ends if e <= final["end"] + 0.05]
            if before:
                final_lat.append(received - max(before))
        partials = result.timed("partial")
        first = partials[0][0] - spans[0][0] if partials and spans else None
        if first is not None:
            first_partial.append(first)
        lat = [
            round(r - max([e for e in ends if e <= f["end"] + 0.05] or [0]), 3)
            for r, f in result.timed("final")
        ]
        shown = f"{first:.3f}" if first is not None else "-"
        print(
            f"  {clip.file:55s} 1st partial {shown} finals {lat} | {result.transcript[:60]}",
            flush=True,
        )
    return {"final": final_lat, "first_partial": first_partial, "transcripts": transcripts}


class EmbeddedMesh:
    """``voicemesh up`` / ``down`` in a temporary home with one STT model."""

    def __init__(self, model: str, port: int) -> None:
        self.home = tempfile.mkdtemp(prefix="vm-bench-")
        self.port = port
        self.env = {
            **os.environ,
            "VOICEMESH_HOME": self.home,
            "VOICEMESH_STT_CPU_MODEL": model,
            "VOICEMESH_MODELS_DIR": os.environ.get(
                "VOICEMESH_MODELS_DIR", str(Path.home() / ".cache" / "voicemesh" / "models")
            ),
        }

    def __enter__(self) -> str:
        subprocess.run(
            [sys.executable, "-m", "voicemesh.cli", "up", "--port", str(self.port), "--no-gpu"],
            check=True,
            env=self.env,
            cwd=REPO,
        )
        time.sleep(2.0)  # let the gateway's registry view pick up every replica
        return f"ws://127.0.0.1:{self.port}/ws/transcribe"

    def __exit__(self, *exc: object) -> None:
        subprocess.run(
            [sys.executable, "-m", "voicemesh.cli", "down"], env=self.env, cwd=REPO, check=False
        )


def main() -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="base", help="comma-separated STT models")
    parser.add_argument("--url", help="use a running gateway instead of starting one")
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--language", help="only clips of this language (en, zh)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    add_clips_option(parser)
    args = parser.parse_args()
    clips = [
        c for c in load_manifest(args.clips) if not args.language or c.language == args.language
    ]
    rows = []
    for model in args.models.split(","):
        print(f"== model {model}: {len(clips)} clips at real-time pace", flush=True)
        offline_texts, rtfs = offline(model, clips)
        if args.url:
            measured = asyncio.run(stream_all(args.url, clips))
        else:
            with EmbeddedMesh(model, args.port) as url:
                measured = asyncio.run(stream_all(url, clips))
        transcripts: dict[str, str] = measured["transcripts"]  # type: ignore[assignment]
        s_wer = [error_rate(c.text, transcripts[c.file]) for c in clips]
        o_wer = [error_rate(c.text, offline_texts[c.file]) for c in clips]
        worse = [c.file for c, s, o in zip(clips, s_wer, o_wer, strict=True) if s > o + 1.0]
        row = {
            "model": model,
            "clips": len(clips),
            "final_p50_ms": pct(measured["final"], 50),  # type: ignore[arg-type]
            "final_p95_ms": pct(measured["final"], 95),  # type: ignore[arg-type]
            "finals": len(measured["final"]),  # type: ignore[arg-type]
            "first_partial_p50_ms": pct(measured["first_partial"], 50),  # type: ignore[arg-type]
            "first_partial_p95_ms": pct(measured["first_partial"], 95),  # type: ignore[arg-type]
            "offline_rtf": float(np.mean(rtfs)),
            "streaming_wer": float(np.mean(s_wer)),
            "offline_wer": float(np.mean(o_wer)),
            "clips_worse_than_offline_plus_1": worse,
        }
        rows.append(row)
    print()
    print(
        f"{'model':10s} {'final p50':>10s} {'final p95':>10s} {'1st part p50':>13s} "
        f"{'1st part p95':>13s} {'off RTF':>8s} {'stream WER':>11s} {'off WER':>8s}"
    )
    for r in rows:
        print(
            f"{r['model']:10s} {r['final_p50_ms']:8.0f}ms {r['final_p95_ms']:8.0f}ms "
            f"{r['first_partial_p50_ms']:11.0f}ms {r['first_partial_p95_ms']:11.0f}ms "
            f"{r['offline_rtf']:8.3f} {r['streaming_wer']:10.1f}% {r['offline_wer']:7.1f}%"
        )
        if r["clips_worse_than_offline_plus_1"]:
            print(f"   clips worse than offline + 1 point: {r['clips_worse_than_offline_plus_1']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
