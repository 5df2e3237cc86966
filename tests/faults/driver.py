"""What the fault tier drives while a fault happens: live sessions and a loop of TTS calls.

:func:`drive` starts ``sessions`` streaming clients through nginx (the Python client, at a
microphone's pace, with its reconnect and resume), each streaming two shared clips with a
pause between, starts staggered; a loop of TTS requests runs beside them. ``fault`` runs
once, ``fault_at_s`` after the first session opened. The :class:`Outcome` holds every
event with its arrival time, and checks what the tier promises: no lost utterance (each
session's transcript within the bound of its clips' reference), no final twice (no two
finals over the same audio), times in order; and of the TTS calls, none that came back
whole-looking but cut.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from tests.harness import Clip, clip_named, error_rate
from voicemesh.audio_files import load_clip_16k
from voicemesh.client import AsyncVoiceMeshClient
from voicemesh.protocol import SAMPLE_RATE

CLIPS = [
    clip_named(name)
    for name in (
        "pocketsphinx-librivox-0870.wav",
        "pocketsphinx-librivox-0890.wav",
        "pocketsphinx-librivox-0920.wav",
        "coqui-tts-LJ001-0005.wav",
        "picovoice-leopard-test.wav",
    )
]
PAUSE_S = 1.2
WER_LIMIT = 15.0
"""Per session, against its clips' reference text: a lost utterance (a whole clip's
words) would cost far more than this; decoding noise costs less."""
TTS_TEXT = "The stream goes on whatever happens behind it. Every word arrives once."


@dataclass
class SessionRun:
    """One streaming client's clips and what it got, each event with its arrival time."""

    name: str
    clips: list[Clip]
    events: list[tuple[float, Any]] = field(default_factory=list)
    failure: str | None = None

    def of(self, kind: str) -> list[Any]:
        return [e for _, e in self.events if e.type == kind]

    @property
    def transcript(self) -> str:
        return " ".join(f.text.strip() for f in self.of("final"))

    @property
    def reference(self) -> str:
        return " ".join(c.text for c in self.clips)

    def gap_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to this session's next message (None: none came)."""
        later = [t for t, _ in self.events if t > moment]
        return round(min(later) - moment, 2) if later else None

    def problems(self) -> list[str]:
        """What breaks the tier's promises for this session (empty: none)."""
        found = []
        if self.failure:
            found.append(f"{self.name} failed: {self.failure}")
        finals = self.of("final")
        wer = error_rate(self.reference, self.transcript)
        if wer > WER_LIMIT:
            found.append(f"{self.name}: WER {wer:.1f}% (lost words?): {self.transcript!r}")
        for before, after in itertools.pairwise(finals):
            if after.start < before.end - 0.3:
                found.append(f"{self.name}: finals over the same audio: {before!r} / {after!r}")
        fatal = [e for e in self.of("error") if e.fatal]
        if fatal:
            found.append(f"{self.name}: fatal errors {fatal}")
        return found


@dataclass
class TtsCall:
    """One TTS request of the loop: when, its status, and whether the audio was whole."""

    at: float
    status: int
    whole: bool | None = None
    code: str | None = None
    retry_after: float | None = None
    message: str | None = None
    failover: bool = False
    failure: str | None = None
    finished: float | None = None
    backend: str | None = None


@dataclass
class Outcome:
    """What one driven run saw."""

    sessions: list[SessionRun]
    tts: list[TtsCall]
    fault_at: float | None = None
    clone: list[TtsCall] = field(default_factory=list)
    """Calls in a cloned voice (only when :func:`drive` was given one)."""

    def problems(self) -> list[str]:
        found = [p for s in self.sessions for p in s.problems()]
        for call in [*self.tts, *self.clone]:
            if call.status == 200 and call.whole is False:
                found.append(f"TTS answered 200 with cut audio at {call.at:.1f}")
            if call.status >= 500 and (call.code is None or call.retry_after is None):
                found.append(f"TTS {call.status} without a code and retry_after: {call}")
        return found

    def affected(self, kinds: tuple[str, ...]) -> list[SessionRun]:
        """Sessions that got one of ``kinds`` of event after the fault."""
        assert self.fault_at is not None
        return [
            s
            for s in self.sessions
            if any(t >= self.fault_at and e.type in kinds for t, e in s.events)
        ]

    def row(self, case: str, kinds: tuple[str, ...]) -> dict[str, Any]:
        """The matrix row of this run."""
        assert self.fault_at is not None
        gaps = [g for s in self.sessions if (g := s.gap_after(self.fault_at)) is not None]
        tts_after = [c for c in [*self.tts, *self.clone] if c.at >= self.fault_at]
        return {
            "case": case,
            "sessions": len(self.sessions),
            "affected": len(self.affected(kinds)),
            "gap_max_s": max(gaps) if gaps else None,
            "lost_utterances": sum(
                1 for s in self.sessions if error_rate(s.reference, s.transcript) > WER_LIMIT
            ),
            "repeated_finals": sum(
                1 for s in self.sessions for p in s.problems() if "same audio" in p
            ),
            "tts_ok": sum(1 for c in tts_after if c.status == 200 and c.whole),
            "tts_refused": sum(1 for c in tts_after if c.status >= 500),
            "tts_cut": sum(1 for c in tts_after if c.status == 200 and not c.whole),
        }


def wav_is_whole(body: bytes) -> bool:
    """Whether a WAV's header sizes match the bytes that came (a cut file does not)."""
    if len(body) < 44 or body[:4] != b"RIFF":
        return False
    riff_size = struct.unpack("<I", body[4:8])[0]
    return riff_size + 8 == len(body)


def clip_pair(index: int) -> list[Clip]:
    return [CLIPS[index % len(CLIPS)], CLIPS[(index + 1) % len(CLIPS)]]


def session_audio(clips: list[Clip]) -> np.ndarray:
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    return np.concatenate([part for c in clips for part in (load_clip_16k(c.path), pause)])


async def _session(url: str, run: SessionRun, delay_s: float, opened: asyncio.Event) -> None:
    await asyncio.sleep(delay_s)
    try:
        async with AsyncVoiceMeshClient(url, timeout=60) as vm:
            audio = session_audio(run.clips)
            async for event in vm.stream(audio, language="en", realtime=True, reconnects=8):
                run.events.append((time.monotonic(), event))
                opened.set()
    except Exception as exc:
        run.failure = f"{type(exc).__name__}: {exc}"
        opened.set()


Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]
"""One call of a loop: the client and the call's number."""


def speak(client: httpx.AsyncClient, number: int) -> Awaitable[httpx.Response]:
    return client.post("/v1/tts/synthesize", json={"text": TTS_TEXT, "format": "wav"})


def clone_speaker(voice_id: str) -> Request:
    """Calls in a cloned voice, each text new (so no call could be a cache hit)."""

    def call(client: httpx.AsyncClient, number: int) -> Awaitable[httpx.Response]:
        text = f"Every word arrives once, call {number}."
        body = {"voice_id": voice_id, "text": text, "format": "wav"}
        return client.post("/v1/clone/synthesize", json=body)

    return call


async def _call_loop(url: str, request: Request, calls: list[TtsCall], done: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for number in itertools.count():
            if done.is_set():
                return
            at = time.monotonic()
            try:
                response = await request(client, number)
            except httpx.HTTPError as exc:
                # A cut the client can see (no clean end of the body) is not "whole".
                calls.append(TtsCall(at, 0, failure=f"{type(exc).__name__}: {exc}"))
                await asyncio.sleep(0.5)
                continue
            call = TtsCall(at, response.status_code, finished=time.monotonic())
            call.failover = "x-voicemesh-failover" in response.headers
            call.backend = response.headers.get("x-voicemesh-backend")
            if response.status_code == 200:
                call.whole = wav_is_whole(response.content)
            elif response.headers.get("content-type", "").startswith("application/json"):
                error = response.json().get("error", {})
                call.code, call.retry_after = error.get("code"), error.get("retry_after")
                call.message = error.get("message")
            calls.append(call)
            await asyncio.sleep(0.3)


async def drive(
    url: str,
    fault: Callable[[list[SessionRun]], Any],
    *,
    fault_at_s: float = 6.0,
    sessions: int = 4,
    tts: bool = True,
    clone_voice: str | None = None,
) -> Outcome:
    """Run ``sessions`` live streams (and the TTS loop, and a loop in ``clone_voice`` when
    given) through ``url``; ``fault(runs)`` once (in a thread: it may block), given the
    session runs so far."""
    runs = [SessionRun(f"s{i}", clip_pair(i)) for i in range(sessions)]
    opened = asyncio.Event()
    done = asyncio.Event()
    tasks = [asyncio.create_task(_session(url, r, 0.6 * i, opened)) for i, r in enumerate(runs)]
    outcome = Outcome(runs, [])
    loops = [asyncio.create_task(_call_loop(url, speak, outcome.tts, done))] if tts else []
    if clone_voice is not None:
        loops.append(
            asyncio.create_task(_call_loop(url, clone_speaker(clone_voice), outcome.clone, done))
        )
    try:
        await asyncio.wait_for(opened.wait(), 60)
        await asyncio.sleep(fault_at_s)
        failed = [f"{r.name}: {r.failure}" for r in runs if r.failure]
        assert not failed, f"sessions failed before the fault: {failed}"
        outcome.fault_at = time.monotonic()
        result = await asyncio.to_thread(fault, runs)
        if asyncio.iscoroutine(result):
            await result
        await asyncio.wait_for(asyncio.gather(*tasks), 240)
    finally:
        done.set()
        await asyncio.gather(*loops)
    return outcome
