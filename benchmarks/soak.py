"""Benchmark: a soak. Four sessions stream without a break, TTS and cloned speech mixed in.

The embedded mesh (``voicemesh up`` in a temporary home: Redis, the detector, CPU
Whisper, VITS TTS, the CPU cloning engine, the gateway) serves, for ``--minutes`` (10):

* 4 streaming sessions, each one long session after another of shared clips at a
  microphone's pace (1 s pauses between clips), through the gateway's ``/ws/transcribe``;
* a TTS request every 2 s (``POST /v1/tts/synthesize``), and every 10 s one in a voice
  cloned at the start (``tts_clone``).

Every minute it prints the RSS of every service, the end-of-speech -> final latency
p50/p95 of that minute's finals (as the client feels it: arrival less the time its audio
went out at a microphone's pace), the TTS and
clone request latency p50/p95, the errors, and apart from them the sessions refused ``busy``
(overload refused with a reason before any audio went out; the loop waits ``retry_after``
as a client should, then opens again). At the end: each service's RSS growth
from the end of warm-up (minute 1, and minute 2) to the last minute; the target is under 5 %,
with no latency drift and no errors.

Usage: ``python -m benchmarks.soak [--minutes 10] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.capacity import mesh_processes
from benchmarks.stt_stream import EmbeddedMesh
from tests.harness import LOAD_NOTICES, SPEECH_DIR, clip_named, load_manifest
from voicemesh.audio_files import load_clip_16k
from voicemesh.client import AsyncVoiceMeshClient, BusyError
from voicemesh.protocol import SAMPLE_RATE

SESSIONS = 4
PAUSE_S = 1.0
TTS_EVERY_S = 2.0
CLONE_EVERY_S = 10.0
TEXT = "The soak goes on, minute after minute, and nothing should grow."


@dataclass
class Minute:
    """What one minute of the soak saw."""

    finals: list[float] = field(default_factory=list)
    tts: list[float] = field(default_factory=list)
    clone: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    """Non-fatal load notices (``backend_slow``): the session waited, nothing was lost."""
    refused: list[str] = field(default_factory=list)
    """Sessions refused ``busy`` before any audio went out (the loop waits ``retry_after``)."""


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


class Soak:
    """The load and its per-minute record."""

    def __init__(self, url: str, minutes: float) -> None:
        self.url = url
        self.ends_at = time.monotonic() + minutes * 60
        self.started = time.monotonic()
        self.minutes: dict[int, Minute] = defaultdict(Minute)

    def now(self) -> Minute:
        return self.minutes[int((time.monotonic() - self.started) // 60)]

    async def session_loop(self, index: int) -> None:
        clips = [c for c in load_manifest(SPEECH_DIR) if c.language == "en"]
        order = clips[index:] + clips[:index]
        pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
        audio = np.concatenate([p for c in order for p in (load_clip_16k(c.path), pause)])
        async with AsyncVoiceMeshClient(self.url) as vm:
            while time.monotonic() < self.ends_at:
                try:
                    opened = time.monotonic()
                    async for event in vm.stream(audio, language="en", realtime=True):
                        if event.type == "ready":
                            opened = time.monotonic()  # audio goes out from here, paced
                        elif event.type == "final":
                            # What a speaker waits: the audio at ``end`` went out about
                            # ``end`` seconds after the session opened.
                            felt = time.monotonic() - (opened + event.end)
                            self.now().finals.append(max(0.0, felt) * 1000)
                        elif event.type == "error" and event.code in LOAD_NOTICES:
                            self.now().notices.append(event.code)
                        elif event.type == "error":
                            self.now().errors.append(f"stream: {event.code}")
                        if time.monotonic() >= self.ends_at:
                            break
                except BusyError as exc:
                    # Overload refused with its reason: a client waits as it is told.
                    self.now().refused.append(exc.message)
                    await asyncio.sleep(exc.retry_after or 1.0)
                except Exception as exc:
                    self.now().errors.append(f"stream: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(1)

    async def speech_loop(
        self, client: httpx.AsyncClient, voice: str | None, every_s: float
    ) -> None:
        while time.monotonic() < self.ends_at:
            began = time.monotonic()
            body: dict[str, Any] = {"text": TEXT}
            if voice is not None:
                body["voice_id"] = voice
            try:
                response = await client.post("/v1/tts/synthesize", json=body)
                ms = (time.monotonic() - began) * 1000
                if response.status_code == 200:
                    (self.now().clone if voice else self.now().tts).append(ms)
                else:
                    self.now().errors.append(f"tts {response.status_code}: {response.text[:80]}")
            except httpx.HTTPError as exc:
                self.now().errors.append(f"tts: {type(exc).__name__}")
            await asyncio.sleep(max(0.0, every_s - (time.monotonic() - began)))


def rss_mb(procs: dict[str, Any]) -> dict[str, float]:
    """Resident memory of each service, MiB."""
    out = {}
    for name, proc in procs.items():
        try:
            out[name] = round(proc.memory_info().rss / 2**20, 1)
        except Exception:
            out[name] = 0.0
    return out


def clone(client: httpx.Client) -> str:
    reference = clip_named("pocketsphinx-librivox-0870.wav")
    response = client.post(
        "/v1/clone/voices",
        files={"audio": (reference.file, reference.path.read_bytes(), "audio/wav")},
        data={"name": "soak", "prompt_text": reference.text, "consent": "true"},
        timeout=300,
    )
    response.raise_for_status()
    return str(response.json()["voice_id"])


async def run(base: str, home: Path | None, minutes: float) -> list[dict[str, Any]]:
    procs = mesh_processes(home)
    with httpx.Client(base_url=base) as setup:
        voice = clone(setup)
    soak = Soak(base, minutes)
    rows: list[dict[str, Any]] = [{"minute": 0, "rss_mb": rss_mb(procs)}]
    print(f"minute 0: RSS {rows[0]['rss_mb']}", flush=True)

    async def report() -> None:
        for minute in range(1, int(minutes) + 1):
            await asyncio.sleep(max(0.0, soak.started + 60 * minute - time.monotonic()))
            seen = soak.minutes[minute - 1]
            row = {
                "minute": minute,
                "rss_mb": rss_mb(procs),
                "final_ms": [pct(seen.finals, 50), pct(seen.finals, 95)],
                "finals": len(seen.finals),
                "tts_ms": [pct(seen.tts, 50), pct(seen.tts, 95)],
                "clone_ms": [pct(seen.clone, 50), pct(seen.clone, 95)],
                "errors": seen.errors,
                "refused": seen.refused,
                "notices": len(seen.notices),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    async with httpx.AsyncClient(base_url=base, timeout=120) as speech:
        await asyncio.gather(
            report(),
            *(soak.session_loop(i) for i in range(SESSIONS)),
            soak.speech_loop(speech, None, TTS_EVERY_S),
            soak.speech_loop(speech, voice, CLONE_EVERY_S),
        )
    return rows


def pair(p50_p95: list[float | None]) -> str:
    """``p50 / p95`` in whole ms, ``-`` for a minute without that kind of answer."""
    return " / ".join("-" if v is None else f"{v:.0f}" for v in p50_p95)


def growth(rows: list[dict[str, Any]], since: int = 1) -> dict[str, float]:
    """Each service's RSS growth (%) from minute ``since`` (after warm-up) to the last."""
    first, last = rows[since]["rss_mb"], rows[-1]["rss_mb"]
    return {k: round(100 * (last[k] - v) / v, 1) for k, v in first.items() if v and k in last}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    mesh = EmbeddedMesh("base", args.port)
    with mesh:
        rows = asyncio.run(run(f"http://127.0.0.1:{args.port}", Path(mesh.home), args.minutes))
    print(
        "| minute | finals | final p50/p95 ms | TTS p50/p95 ms | clone p50/p95 ms | errors "
        "| refused busy | slow notices | RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows[1:]:
        rss = ", ".join(f"{k} {v:.0f}" for k, v in sorted(row["rss_mb"].items()))
        print(
            f"| {row['minute']} | {row['finals']} | {pair(row['final_ms'])} "
            f"| {pair(row['tts_ms'])} | {pair(row['clone_ms'])} | {len(row['errors'])} "
            f"| {len(row['refused'])} | {row['notices']} | {rss} |"
        )
    if len(rows) > 2:
        print("RSS growth from minute 1 (%):", growth(rows))
    if len(rows) > 3:
        print("RSS growth from minute 2 (%):", growth(rows, since=2))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
