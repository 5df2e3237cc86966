"""The openai-whisper engine: PyTorch Whisper checkpoints (``.pt``) or openai-whisper names.

An alternative to faster-whisper for hosts that hold original Whisper checkpoints
(fine-tuned ones included). ``whisper`` and ``torch`` are imported only when this
engine is built, so nothing else in VoiceMesh needs them installed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from voicemesh.errors import BadRequest, EngineUnavailable, UnknownModel
from voicemesh.protocol import SAMPLE_RATE, Segment, Word
from voicemesh.stt.types import Device, TranscriptionResult

_LOGGER = logging.getLogger(__name__)


def _import_whisper() -> Any:
    """Import openai-whisper, or raise BadRequest(engine_not_installed) with a pip hint."""
    try:
        import whisper
    except ImportError as exc:
        raise BadRequest(
            "the openai-whisper engine needs the python package openai-whisper "
            "(and torch): pip install 'voicemesh[openai_whisper]' or pip install openai-whisper",
            code="engine_not_installed",
        ) from exc
    return whisper


def _resolve_torch_device(device: Device) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _clamp(value: float, upper: float) -> float:
    """A time in seconds clamped into [0, upper] and rounded to milliseconds."""
    return round(min(max(float(value), 0.0), upper), 3)


class OpenAIWhisperTranscriber:
    """Whisper through the openai-whisper package (PyTorch); fp16 on CUDA, fp32 on CPU."""

    engine = "openai-whisper"

    def __init__(
        self,
        model: str,
        *,
        device: Device = "cpu",
        model_name: str | None = None,
        beam_size: int = 1,
        sample_len: int | None = None,
        download_root: str | None = None,
    ) -> None:
        # sample_len caps tokens per 30 s window (whisper's default: n_text_ctx // 2);
        # download_root is where openai-whisper caches a named model it fetches.
        whisper = _import_whisper()
        self._whisper = whisper
        self.device = _resolve_torch_device(device)
        self.model_name = model_name or model
        self.beam_size = beam_size
        self.sample_len = sample_len
        local = Path(model).expanduser()
        if not local.is_file() and model not in whisper.available_models():
            raise UnknownModel(
                f"{model!r} is neither a Whisper checkpoint file nor an openai-whisper model "
                f"name ({', '.join(whisper.available_models())})"
            )
        try:
            self._model = whisper.load_model(
                str(local) if local.is_file() else model,
                device=self.device,
                download_root=download_root,
            )
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            raise EngineUnavailable(
                f"cannot load openai-whisper model {model!r} on {self.device}: {exc}",
                code="model_load_failed",
            ) from exc
        self.multilingual = bool(self._model.is_multilingual)
        from whisper.tokenizer import LANGUAGES

        self.languages: frozenset[str] = (
            frozenset(LANGUAGES) if self.multilingual else frozenset({"en"})
        )
        # One torch model is not safe to run from several threads at once.
        self._lock = threading.Lock()
        _LOGGER.info("openai-whisper model %s loaded on %s", self.model_name, self.device)

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        prefix: str | None = None,
        word_timestamps: bool = False,
        beam_size: int | None = None,
        quality_fallback: bool = True,
        prompt: str | None = None,
        segment_timestamps: bool = False,
    ) -> TranscriptionResult:
        """Decode one block at temperature 0, no VAD; ``prompt`` is earlier text as context."""
        samples = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)
        duration = len(samples) / SAMPLE_RATE
        if not self.multilingual:
            language = "en"
        beams = beam_size or self.beam_size
        options: dict[str, Any] = {
            "language": language,
            "prefix": prefix or None,
            "prompt": prompt or None,
            "fp16": self.device == "cuda",
            "task": "transcribe",
        }
        # beam_size=1 through the beam decoder is slower than plain greedy decoding.
        if beams > 1:
            options["beam_size"] = beams
        if self.sample_len is not None:
            options["sample_len"] = self.sample_len
        with self._lock:
            result = self._whisper.transcribe(
                self._model,
                samples,
                verbose=None,
                # One temperature: fallbacks re-decode a block several times for no gain
                # on short streaming windows.
                temperature=0.0,
                condition_on_previous_text=False,
                word_timestamps=word_timestamps,
                **options,
            )
        segments: list[Segment] = []
        texts: list[str] = []
        no_speech: list[float] = []
        logprobs: list[float] = []
        for seg in result.get("segments", []):
            text = str(seg.get("text", ""))
            start = _clamp(seg.get("start", 0.0), duration)
            end = max(start, _clamp(seg.get("end", start), duration))
            words = None
            if seg.get("words"):
                words = []
                for w in seg["words"]:
                    w_start = _clamp(w["start"], duration)
                    words.append(
                        Word(
                            word=str(w["word"]),
                            start=w_start,
                            end=max(w_start, _clamp(w["end"], duration)),
                            probability=round(float(w.get("probability", 0.0)), 3),
                        )
                    )
            logprob = float(seg.get("avg_logprob", 0.0))
            segments.append(
                Segment(
                    start=start,
                    end=end,
                    text=text.strip(),
                    words=words,
                    avg_logprob=round(logprob, 4),
                )
            )
            texts.append(text)
            no_speech.append(float(seg.get("no_speech_prob", 0.0)))
            logprobs.append(logprob)
        if prefix and prefix.strip() and segments:
            # openai-whisper leaves the forced prefix out of its output while faster-whisper
            # keeps it; keep it here too so both engines honour the same contract.
            forced = prefix.strip()
            segments[0] = segments[0].model_copy(
                update={"text": f"{forced} {segments[0].text}".strip()}
            )
            texts.insert(0, " " + forced)
        return TranscriptionResult(
            text=" ".join("".join(texts).split()),
            segments=segments,
            language=result.get("language") or language,
            language_probability=None,
            duration=duration,
            no_speech_prob=max(no_speech) if no_speech else 1.0,
            avg_logprob=float(np.mean(logprobs)) if logprobs else -10.0,
        )
