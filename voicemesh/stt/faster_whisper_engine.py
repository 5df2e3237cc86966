"""The faster-whisper engine: Whisper through CTranslate2 (CPU int8 or CUDA float16)."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np

from voicemesh.errors import EngineUnavailable
from voicemesh.protocol import SAMPLE_RATE, Segment, Word
from voicemesh.stt.types import TranscriptionResult, compression_ratio, suspicious

MAX_WINDOW_S = 30
WINDOW_PAD_S = 6.0
"""Silence appended to a short block instead of padding it to 30 s (see _transcribe_window)."""
PRIMITIVE_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
"""oneDNN's cache of built primitives (CTranslate2 runs Whisper's convolutions on oneDNN).
Blocks here are as long as the speech (see :data:`WINDOW_PAD_S`), so each new length built
new primitives, and its default capacity (1024) held them all: a replica's RSS grew 47 %
over a soak, 280 MiB in a few hundred decodes, until the cache was full. Unless the
environment says otherwise, nothing is cached; the decodes measured no slower (one
encoder pass builds its few primitives in far less time than it runs them)."""
MAX_NEW_TOKENS = 220
MAX_PROMPT_TOKENS = 120


def default_compute_type(device: Literal["cpu", "cuda"]) -> str:
    """int8 on CPU, float16 on CUDA: the fastest types that keep Whisper's accuracy."""
    return "float16" if device == "cuda" else "int8"


class FasterWhisperTranscriber:
    """Whisper through faster-whisper / CTranslate2 (CPU int8 or CUDA float16)."""

    engine = "faster-whisper"

    def __init__(
        self,
        model_path: str,
        *,
        model_name: str | None = None,
        device: Literal["cpu", "cuda"] = "cpu",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        num_workers: int = 1,
        beam_size: int = 1,
        window_pad_s: float = WINDOW_PAD_S,
    ) -> None:
        os.environ.setdefault(PRIMITIVE_CACHE_ENV, "0")  # read at the first primitive built
        from faster_whisper import WhisperModel

        resolved = device
        self.device: str = resolved
        self.window_pad_s = window_pad_s
        self.model_name = model_name or model_path
        self.compute_type = compute_type or default_compute_type(resolved)
        self.beam_size = beam_size
        try:
            self._model = WhisperModel(
                model_path,
                device=resolved,
                compute_type=self.compute_type,
                cpu_threads=cpu_threads,
                num_workers=num_workers,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineUnavailable(
                f"cannot load faster-whisper model {model_path!r} on {resolved}: {exc}",
                code="model_load_failed",
            ) from exc
        self.multilingual = bool(self._model.model.is_multilingual)
        self.languages: frozenset[str] = (
            frozenset(self._model.supported_languages) if self.multilingual else frozenset({"en"})
        )

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
        """Decode one block with greedy or beam search; no VAD; ``prompt`` as context.

        Blocks that fit in a shortened window (the usual streaming utterance) take
        the fast path; longer ones, and requests for word times, go through
        faster-whisper's own long-form transcription.
        """
        if not self.multilingual:
            language = "en"
        seconds = len(audio) / SAMPLE_RATE
        if (
            not word_timestamps
            and not segment_timestamps
            and self.window_pad_s > 0
            and (seconds + self.window_pad_s <= MAX_WINDOW_S)
        ):
            samples = np.ascontiguousarray(audio, dtype=np.float32)
            beam = beam_size or self.beam_size
            result = self._transcribe_window(
                samples,
                language=language,
                prefix=prefix,
                beam_size=beam,
                pad_s=self.window_pad_s,
                prompt=prompt,
            )
            if quality_fallback and suspicious(result):
                # Short windows occasionally send Whisper into a loop on hard audio
                # (quiet, far-field); the full 30 s window is the reference behaviour.
                # Like Whisper's own fallback, the retry drops the context prompt.
                result = self._transcribe_window(
                    samples,
                    language=language,
                    prefix=prefix,
                    beam_size=beam,
                    pad_s=None,
                    prompt=None,
                )
                result.retried = True
            return result
        segments_iter, info = self._model.transcribe(
            np.ascontiguousarray(audio, dtype=np.float32),
            language=language,
            beam_size=beam_size or self.beam_size,
            prefix=prefix or None,
            initial_prompt=prompt or None,
            word_timestamps=word_timestamps,
            condition_on_previous_text=False,
            vad_filter=False,
            # One temperature: fallbacks re-decode the block up to five times, which
            # multiplies latency for no gain on short streaming windows.
            temperature=0.0,
        )
        segments: list[Segment] = []
        texts: list[str] = []
        no_speech = []
        logprobs = []
        for seg in segments_iter:
            words = None
            if seg.words:
                words = [
                    Word(
                        word=w.word,
                        start=round(w.start, 3),
                        end=round(w.end, 3),
                        probability=round(w.probability, 3),
                    )
                    for w in seg.words
                ]
            segments.append(
                Segment(
                    start=round(seg.start, 3),
                    end=round(seg.end, 3),
                    text=seg.text.strip(),
                    words=words,
                    avg_logprob=round(seg.avg_logprob, 4),
                )
            )
            texts.append(seg.text)
            no_speech.append(seg.no_speech_prob)
            logprobs.append(seg.avg_logprob)
        return TranscriptionResult(
            text=join_text(texts),
            segments=segments,
            language=info.language,
            language_probability=info.language_probability,
            duration=len(audio) / SAMPLE_RATE,
            no_speech_prob=max(no_speech) if no_speech else 1.0,
            avg_logprob=float(np.mean(logprobs)) if logprobs else -10.0,
        )

    def transcribe_batch(
        self, audios: list[np.ndarray], options: list[dict[str, Any]]
    ) -> list[TranscriptionResult]:
        """Decode several blocks (of several sessions) in one batched call.

        The blocks share one encoder pass and one ``generate`` call (one beam search
        over all of them), which is what keeps a GPU busy with many streams. Every
        option of :meth:`transcribe`'s fast path but the beam width and the language
        may differ per block (prefix, prompt); the scheduler groups jobs so those two
        agree. Blocks too long for a shortened window decode alone, and a suspicious
        result is redone alone on the full window as :meth:`transcribe` does.
        """
        results: list[TranscriptionResult | None] = [None] * len(audios)
        fast = [
            i
            for i, audio in enumerate(audios)
            if self.window_pad_s > 0
            and len(audio) / SAMPLE_RATE + self.window_pad_s <= MAX_WINDOW_S
        ]
        for i in set(range(len(audios))) - set(fast):
            results[i] = self.transcribe(audios[i], **options[i])
        if fast:
            first = options[fast[0]]
            language = first.get("language") if self.multilingual else "en"
            beam = first.get("beam_size") or self.beam_size
            decoded = self._transcribe_windows(
                [np.ascontiguousarray(audios[i], dtype=np.float32) for i in fast],
                language=language,
                prefixes=[options[i].get("prefix") for i in fast],
                prompts=[options[i].get("prompt") for i in fast],
                beam_size=beam,
                pad_s=self.window_pad_s,
            )
            for i, first_try in zip(fast, decoded, strict=True):
                result = first_try
                if options[i].get("quality_fallback", True) and suspicious(result):
                    result = self._transcribe_window(
                        np.ascontiguousarray(audios[i], dtype=np.float32),
                        language=language,
                        prefix=options[i].get("prefix"),
                        beam_size=beam,
                        pad_s=None,
                    )
                    result.retried = True
                results[i] = result
        return [r for r in results if r is not None]

    def _transcribe_window(
        self,
        audio: np.ndarray,
        *,
        language: str | None,
        prefix: str | None,
        beam_size: int,
        pad_s: float | None,
        prompt: str | None = None,
    ) -> TranscriptionResult:
        """Encode only the audio plus ``window_pad_s`` of silence, not a padded 30 s.

        Whisper's encoder costs the same for 2 s of speech as for 30 s when the input
        is padded to 30 s. CTranslate2 accepts shorter inputs, and with a few seconds
        of trailing silence the transcripts of the shared clips are the same as with
        the full window, at about 40 % of the cost; with no padding at all Whisper
        degrades badly, so the pad is kept.
        """
        return self._transcribe_windows(
            [audio],
            language=language,
            prefixes=[prefix],
            prompts=[prompt],
            beam_size=beam_size,
            pad_s=pad_s,
        )[0]

    def _transcribe_windows(
        self,
        audios: list[np.ndarray],
        *,
        language: str | None,
        prefixes: list[str | None],
        prompts: list[str | None],
        beam_size: int,
        pad_s: float | None,
    ) -> list[TranscriptionResult]:
        """Shortened-window decodes of one or more blocks as one batch (see above).

        In a batch every block is padded to the longest block's window: a shorter
        block gets more trailing silence, as Whisper's own 30 s padding would give it.
        """
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self._model
        features = [model.feature_extractor(audio) for audio in audios]
        full = MAX_WINDOW_S * 100
        frames = max(f.shape[-1] for f in features)
        target = full if pad_s is None else min(full, frames + int(pad_s * 100))
        target += target % 2
        stacked = np.stack(
            [np.pad(f, ((0, 0), (0, max(0, target - f.shape[-1]))))[:, :target] for f in features]
        )
        encoder_output = model.encode(stacked)
        languages = [language] * len(audios)
        language_probabilities = [1.0] * len(audios)
        if language is None:
            for i, detected in enumerate(model.model.detect_language(encoder_output)):
                languages[i] = detected[0][0][2:-2]
                language_probabilities[i] = float(detected[0][1])
        tokenizers = [
            Tokenizer(model.hf_tokenizer, self.multilingual, task="transcribe", language=lang)
            for lang in languages
        ]
        contexts = [
            tokenizer.encode(" " + prompt.strip())[-MAX_PROMPT_TOKENS:]
            if prompt and prompt.strip()
            else []
            for tokenizer, prompt in zip(tokenizers, prompts, strict=True)
        ]
        # CTranslate2 wants <|startoftranscript|> at one position across a batch: every
        # block keeps the most recent words of its context, as many as the shortest has.
        keep = min(len(c) for c in contexts)
        prompts_in: list[list[int]] = []
        prefix_lengths: list[int] = []
        max_length = 0
        for audio, tokenizer, prefix, context in zip(
            audios, tokenizers, prefixes, contexts, strict=True
        ):
            tokens_in: list[int] = [tokenizer.sot_prev, *context[-keep:]] if keep else []
            tokens_in += [*tokenizer.sot_sequence, tokenizer.no_timestamps]
            prefix_tokens = tokenizer.encode(" " + prefix.strip()) if prefix else []
            tokens_in += prefix_tokens
            prompts_in.append(tokens_in)
            prefix_lengths.append(len(prefix_tokens))
            # Speech carries at most ~15 tokens a second; a longer output is a loop.
            new_tokens = min(MAX_NEW_TOKENS, int(10 + 15 * len(audio) / SAMPLE_RATE))
            max_length = max(max_length, new_tokens + len(tokens_in))
        outputs = model.model.generate(
            encoder_output,
            prompts_in,
            beam_size=beam_size,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizers[0], (-1,)),
        )
        return [
            _window_result(
                out,
                tok,
                audio=audio,
                prefix=prefix,
                prefix_length=skip,
                language=lang,
                language_probability=prob,
            )
            for out, tok, audio, prefix, skip, lang, prob in zip(
                outputs,
                tokenizers,
                audios,
                prefixes,
                prefix_lengths,
                languages,
                language_probabilities,
                strict=True,
            )
        ]


def _window_result(
    output: Any,
    tokenizer: Any,
    *,
    audio: np.ndarray,
    prefix: str | None,
    prefix_length: int,
    language: str | None,
    language_probability: float,
) -> TranscriptionResult:
    """One block's result from its ``generate`` output."""
    # The result repeats the forced prefix before the generated tokens.
    tokens = [t for t in output.sequences_ids[0][prefix_length:] if t < tokenizer.eot]
    text = tokenizer.decode(tokens)
    if prefix:
        text = prefix.strip() + text
    text = " ".join(text.split())
    seq_len = max(len(tokens), 1)
    cum_logprob = (output.scores[0] if output.scores else 0.0) * seq_len
    seconds = len(audio) / SAMPLE_RATE
    avg_logprob = cum_logprob / (seq_len + 1)
    segment = Segment(
        start=0.0, end=round(seconds, 3), text=text, avg_logprob=round(avg_logprob, 4)
    )
    return TranscriptionResult(
        text=text,
        segments=[segment] if text else [],
        language=language,
        language_probability=language_probability,
        duration=seconds,
        no_speech_prob=float(output.no_speech_prob),
        avg_logprob=avg_logprob,
        compression_ratio=compression_ratio(text),
    )


def join_text(parts: list[str]) -> str:
    """Join Whisper segment texts, which carry their own leading spaces."""
    return " ".join("".join(parts).split())
