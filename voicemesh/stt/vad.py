"""Streaming Silero VAD and an endpointer built on it.

Silero v6 (the ONNX file faster-whisper ships) scores 512-sample windows of 16 kHz
audio, each with the previous 64 samples as context and an LSTM state carried
between calls. :class:`StreamingVad` keeps that state per session so every frame
is scored once, as it arrives. :class:`Endpointer` turns the probabilities into
speech start / silence onset / speech end events with hysteresis.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from voicemesh.protocol import SAMPLE_RATE

_LOGGER = logging.getLogger(__name__)

WINDOW = 512
CONTEXT = 64
WINDOW_S = WINDOW / SAMPLE_RATE


class _SileroSession:
    """One shared ONNX session; inference calls are serialised per process."""

    def __init__(self, path: Path) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self._session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"], sess_options=opts
        )
        self._lock = threading.Lock()

    def run(
        self, windows: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score a batch of context+window rows sequentially through the LSTM state."""
        with self._lock:
            out, h, c = self._session.run(None, {"input": windows, "h": h, "c": c})
        return np.asarray(out).reshape(-1), h, c


@lru_cache(maxsize=2)
def _silero(path: str) -> _SileroSession:
    return _SileroSession(Path(path))


def default_vad_path() -> Path:
    """The Silero VAD file that faster-whisper ships (through :mod:`voicemesh.assets`)."""
    from voicemesh.assets import silero_vad_path

    return silero_vad_path()


class StreamingVad:
    """Silero speech probabilities for a stream, one per 32 ms window, state kept."""

    def __init__(self, model_path: Path | None = None) -> None:
        self._model = _silero(str(model_path or default_vad_path()))
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.windows_done = 0

    def reset(self) -> None:
        """Forget the LSTM state (e.g. after a long gap)."""
        self._h[:] = 0
        self._c[:] = 0
        self._context[:] = 0

    def process(self, audio: np.ndarray) -> np.ndarray:
        """Feed samples; return the probability of every window completed by them."""
        if audio.size:
            self._pending = np.concatenate([self._pending, audio.astype(np.float32, copy=False)])
        n = self._pending.size // WINDOW
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        block = self._pending[: n * WINDOW].reshape(n, WINDOW)
        self._pending = self._pending[n * WINDOW :]
        contexts = np.empty((n, CONTEXT), dtype=np.float32)
        contexts[0] = self._context
        if n > 1:
            contexts[1:] = block[:-1, -CONTEXT:]
        self._context = block[-1, -CONTEXT:].copy()
        rows = np.concatenate([contexts, block], axis=1)
        probs, self._h, self._c = self._model.run(rows, self._h, self._c)
        self.windows_done += n
        return probs


@dataclass
class EndpointerConfig:
    """Thresholds of the speech/silence state machine (times in seconds)."""

    threshold: float = 0.5
    """Probability at or above which a window is speech."""
    neg_threshold: float = 0.35
    """Probability below which a window counts as silence (hysteresis)."""
    min_speech_s: float = 0.1
    """Speech must last this long before speech_start fires."""
    silence_onset_s: float = 0.1
    """Silence this long after speech fires silence_onset (start of a speculative final)."""
    min_silence_s: float = 0.5
    """Silence this long ends the utterance."""


@dataclass
class VadEvent:
    """An endpointing event at stream time ``t``."""

    kind: str  # "speech_start" | "silence_onset" | "speech_resume" | "speech_end"
    t: float
    speech_start: float = 0.0
    speech_end: float = 0.0


class Endpointer:
    """Turns per-window probabilities into speech events with hysteresis."""

    def __init__(self, config: EndpointerConfig | None = None) -> None:
        self.config = config or EndpointerConfig()
        self.in_speech = False
        self._speech_run = 0.0
        self._silence_run = 0.0
        self._onset_sent = False
        self.speech_start = 0.0
        self.last_speech_end = 0.0
        self.t = 0.0

    @property
    def in_silence(self) -> bool:
        """True while a silence inside speech is being timed (an endpoint may follow)."""
        return self.in_speech and self._silence_run > 0.0

    def update(self, probs: np.ndarray) -> list[VadEvent]:
        """Advance by ``len(probs)`` windows; return the events they caused."""
        cfg = self.config
        events: list[VadEvent] = []
        for p in probs.tolist():
            self.t += WINDOW_S
            if not self.in_speech:
                if p >= cfg.threshold:
                    if self._speech_run == 0.0:
                        self.speech_start = self.t - WINDOW_S
                    self._speech_run += WINDOW_S
                    if self._speech_run >= cfg.min_speech_s:
                        self.in_speech = True
                        self._silence_run = 0.0
                        self._onset_sent = False
                        events.append(
                            VadEvent(
                                "speech_start", self.speech_start, speech_start=self.speech_start
                            )
                        )
                else:
                    self._speech_run = 0.0
                continue
            if p >= cfg.threshold:
                if self._onset_sent:
                    events.append(VadEvent("speech_resume", self.t, speech_start=self.speech_start))
                self._silence_run = 0.0
                self._onset_sent = False
            elif p < cfg.neg_threshold or self._silence_run > 0.0:
                # Between the thresholds a started silence keeps counting (hysteresis).
                if self._silence_run == 0.0:
                    self.last_speech_end = self.t - WINDOW_S
                self._silence_run += WINDOW_S
                if not self._onset_sent and self._silence_run >= cfg.silence_onset_s:
                    self._onset_sent = True
                    events.append(
                        VadEvent(
                            "silence_onset",
                            self.t,
                            speech_start=self.speech_start,
                            speech_end=self.last_speech_end,
                        )
                    )
                if self._silence_run >= cfg.min_silence_s:
                    self.in_speech = False
                    self._speech_run = 0.0
                    self._silence_run = 0.0
                    events.append(
                        VadEvent(
                            "speech_end",
                            self.t,
                            speech_start=self.speech_start,
                            speech_end=self.last_speech_end,
                        )
                    )
        return events
