"""Helpers for tests that run real services: processes on loopback, clips, WER."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
SPEECH_DIR = REPO / "tests" / "data" / "speech"


@dataclass(frozen=True)
class Clip:
    """One shared speech clip and its reference transcript."""

    file: str
    text: str
    language: str
    duration_s: float

    @property
    def path(self) -> Path:
        """Where the WAV file is."""
        return SPEECH_DIR / self.file


def load_manifest() -> list[Clip]:
    """Every clip of ``manifest.jsonl``."""
    clips = []
    with open(SPEECH_DIR / "manifest.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                item = json.loads(line)
                clips.append(Clip(item["file"], item["text"], item["language"],
                                  float(item["duration_s"])))
    return clips


_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}
_PUNCT = re.compile(r"[^\w\s']|_", re.UNICODE)
_CJK = re.compile(r"[\u3400-\u9fff]")


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation; CJK text becomes one token per character."""
    text = text.lower().replace("-", " ")
    text = _PUNCT.sub(" ", text)
    words = [_ABBREVIATIONS.get(w.strip("'"), w.strip("'")) for w in text.split()]
    words = [w for w in words if w]
    if any(_CJK.search(w) for w in words):
        return [ch for ch in "".join(words) if not ch.isspace()]
    return words


def error_rate(reference: str, hypothesis: str) -> float:
    """WER (or CER for Chinese) in percent."""
    import jiwer

    ref = normalize(reference)
    hyp = normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 100.0
    return 100.0 * jiwer.wer(" ".join(ref), " ".join(hyp) if hyp else "")


class ServiceProcess:
    """One VoiceMesh service under uvicorn on loopback, started the way the runner does."""

    def __init__(self, name: str, port: int, env: dict[str, str], log_dir: Path) -> None:
        from voicemesh.services import SERVICES

        self.spec = SERVICES[name]
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **env, f"{self.spec.env_prefix}PORT": str(port),
                    f"{self.spec.env_prefix}HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
        self.log_path = log_dir / f"{name}-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        """Start the process (does not wait for health)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [sys.executable, "-m", *self.spec.uvicorn_args("127.0.0.1", self.port)],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        return self

    def wait_healthy(self, timeout_s: float = 180.0) -> None:
        """Wait until ``GET /health`` answers 200, or fail with the log tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy in {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the service log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@functools.lru_cache(maxsize=1)
def _offline_model():  # type: ignore[no-untyped-def]
    from faster_whisper import WhisperModel

    from voicemesh.assets import resolve_whisper_model

    return WhisperModel(resolve_whisper_model("base"), device="cpu", compute_type="int8",
                        cpu_threads=2)


@functools.lru_cache(maxsize=64)
def offline_transcript(clip: Clip) -> str:
    """faster-whisper's own offline transcription (default decoding) of the clip.

    Chinese comes back in the script the services write by default (simplified): the
    comparison is about what was recognised, not which of Whisper's two scripts it
    happened to print (base writes the AISHELL clip in traditional characters).
    """
    from voicemesh.stt.script import convert_for_language

    segments, _ = _offline_model().transcribe(str(clip.path), language=clip.language)
    return convert_for_language(" ".join(s.text.strip() for s in segments), clip.language)


def clip_named(name: str) -> Clip:
    """The manifest entry of one clip."""
    return next(c for c in load_manifest() if c.file == name)
