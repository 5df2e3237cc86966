"""Streaming transcription of one session: endpointing, partials, finals.

How a final can arrive sooner than a whole-utterance decode takes:

* Silero VAD scores every 32 ms window as it arrives (:mod:`voicemesh.stt.vad`).
* While speech goes on, the session decodes the utterance so far every
  ``partial_interval_s`` of new audio. Words on which two consecutive hypotheses
  agree become *stable*; each later decode is forced to start with the stable
  text (Whisper's ``prefix``), so it only generates the still-open tail.
* As soon as silence starts (``silence_onset_s``) a *speculative* final decode is
  queued. If the silence lasts until the endpoint (``min_silence_s``) its result
  is the final, already computed; if speech resumes it is discarded.
* A doubtful speculative result (Whisper had to redo it, or scored it low) is
  held for up to ``hold_s`` more silence before it becomes the final. When the
  speaker goes on within that time the pause was a hesitation, not the end of a
  sentence: the utterance continues and is decoded whole, because Whisper
  decodes a sentence far better than the pieces a pause cut it into.

Only one decode per session is in flight at any time, so a single stream never
keeps both cores busy re-decoding, and finals outrank partials in the scheduler.
Nothing is finalized unless the VAD heard speech, and Whisper's own no-speech
signal is checked too, so silence and noise do not produce hallucinated finals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from voicemesh.errors import PartialShed
from voicemesh.protocol import (
    SAMPLE_RATE,
    FinalMessage,
    FinalReason,
    PartialMessage,
    Segment,
    VadMessage,
)
from voicemesh.stt.scheduler import DecodeScheduler, Priority
from voicemesh.stt.streaming_rules import (
    EngineLabel,
    StreamingConfig,
    doubtful,
    looks_like_speech,
    stable_prefix,
)
from voicemesh.stt.types import TranscriptionResult, has_repetition_loop
from voicemesh.stt.vad import WINDOW, Endpointer, StreamingVad, VadEvent

_LOGGER = logging.getLogger(__name__)

Emit = Callable[[FinalMessage | PartialMessage | VadMessage], Awaitable[None]]


@dataclass
class _Held:
    """A final decoded at an endpoint and held while more speech may come."""

    result: TranscriptionResult
    end: int  # stream sample where the utterance ended
    until: int  # stream sample at which the hold runs out


class StreamingSession:
    """One client stream: feed it 16 kHz float32 audio; it emits partials and finals."""

    def __init__(
        self,
        scheduler: DecodeScheduler,
        emit: Emit,
        label: EngineLabel,
        config: StreamingConfig | None = None,
        vad: StreamingVad | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.emit = emit
        self.label = label
        self.config = config or StreamingConfig()
        self.vad = vad or StreamingVad()
        self.endpointer = Endpointer(self.config.endpointer)
        self.samples = 0  # samples received so far (the stream clock)
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream sample index of _buf[0]
        self._probs: list[float] = []  # VAD probability per window of _buf (aligned later)
        self.utterance_id = 0
        self.in_utterance = False
        self._speech_samples = 0
        self._stable = ""
        self._last_hyp = ""
        self._last_partial_at = 0
        self._partial_task: asyncio.Task[None] | None = None
        self._partial_shed = False  # the due partial was skipped (counted once)
        self._spec: tuple[int, asyncio.Task[TranscriptionResult]] | None = None
        self._held: _Held | None = None
        self._last_speech_start = 0.0  # stream seconds of the latest speech_start
        self._lock = asyncio.Lock()
        self.finals = 0
        self._context: list[tuple[float, str]] = []  # (end time, text) of recent finals
        self.closed = False

    # ------------------------------------------------------------------ input

    async def feed(self, audio: np.ndarray) -> None:
        """Append audio, run the VAD on it, and act on speech events."""
        if self.closed or audio.size == 0:
            return
        async with self._lock:
            self._buf = np.concatenate([self._buf, audio])
            self.samples += audio.size
            probs = self.vad.process(audio)
            events = self.endpointer.update(probs)
            # Counted before the events: one large frame can hold a whole utterance,
            # start and end included. Outside an utterance the count is reset below.
            threshold = self.endpointer.config.threshold
            self._speech_samples += int(np.count_nonzero(probs >= threshold)) * WINDOW
            for event in events:
                await self._on_event(event)
            held = self._held
            if held is not None and self.samples >= held.until:
                await self._finalize("endpoint", end_sample=held.end)
            if not self.in_utterance:
                self._trim_to_preroll()
                return
            if self._held is not None:
                return  # silence after an endpoint: no partials, nothing to cut
            if self._buf.size > self.config.max_utterance_s * SAMPLE_RATE:
                await self._cut_long_utterance()
            self._maybe_partial()

    async def flush(self, reason: FinalReason = "flush", *, until: float | None = None) -> None:
        """Finalize the current utterance now (``<flush>``, ``flush``, ``stop``).

        ``until`` (stream seconds) limits the flush to an utterance that began before
        it: a flush meant for speech that has ended must not cut the next utterance,
        nor an utterance that went on after a held pause (speech started again after
        ``until``; the engine's own endpoint will end it).
        """
        async with self._lock:
            if until is not None and (
                self._buf_start / SAMPLE_RATE >= until or self._last_speech_start > until
            ):
                return
            if self.in_utterance or self._speech_samples > 0:
                await self._finalize(reason, end_sample=self.samples)

    async def close(self) -> None:
        """Finalize what is pending and stop; later input is ignored."""
        await self.flush("stop")
        self.closed = True
        self._cancel_partial()
        self._drop_speculative()

    # ------------------------------------------------------------------ events

    async def _on_event(self, event: VadEvent) -> None:
        if event.kind == "speech_start":
            self._last_speech_start = event.t
            if self._held is not None:
                # The speaker went on: the pause did not end the utterance.
                _LOGGER.debug("utterance %d continues after a pause", self.utterance_id)
                self._held = None
            if not self.in_utterance:
                self.in_utterance = True
                self._last_partial_at = self.samples
                self._start_at(event.t - self.config.preroll_s)
            await self.emit(VadMessage(event="speech_start", t=round(event.t, 3)))
        elif event.kind == "silence_onset" and self.in_utterance:
            self._start_speculative()
        elif event.kind == "speech_resume":
            self._drop_speculative()
        elif event.kind == "speech_end" and self.in_utterance:
            await self.emit(VadMessage(event="speech_end", t=round(event.speech_end, 3)))
            if not await self._hold():
                await self._finalize("endpoint", end_sample=self.samples)

    async def _hold(self) -> bool:
        """Hold a doubtful speculative final for more silence; True when it is held."""
        spec = self._spec
        if self.config.hold_s <= 0 or spec is None or spec[1].cancelled():
            return False
        try:
            result = await spec[1]
        except asyncio.CancelledError:
            return False
        if not looks_like_speech(result, self.config) or not doubtful(result, self.config):
            return False
        self._spec = None
        self._held = _Held(
            result, end=self.samples, until=self.samples + int(self.config.hold_s * SAMPLE_RATE)
        )
        return True

    def _drop_front(self, samples: int) -> None:
        """Forget the oldest ``samples`` of the buffer (at most all of it)."""
        samples = min(self._buf.size, samples)
        if samples > 0:
            self._buf = self._buf[samples:]
            self._buf_start += samples

    def _start_at(self, seconds: float) -> None:
        """Drop idle audio before ``seconds`` (stream time): where the utterance begins."""
        self._drop_front(int(seconds * SAMPLE_RATE) - self._buf_start)

    def _trim_to_preroll(self) -> None:
        keep = int((self.config.preroll_s + self.config.idle_keep_s) * SAMPLE_RATE)
        self._drop_front(self._buf.size - keep)
        self._speech_samples = 0

    # ------------------------------------------------------------------ decoding

    def _decode_kwargs(self, *, final: bool) -> dict[str, object]:
        use_prefix = self.config.final_prefix if final else self.config.use_prefix
        beam = self.config.final_beam_size if final else 1
        meter = self.scheduler.meter
        if final and beam > 1 and meter.greedy_finals():
            # Finals queue: a greedy decode keeps them flowing (and costs less).
            meter.note_shed("final_greedy")
            beam = 1
        return {
            "language": self.config.language,
            "prefix": self._stable if use_prefix and self._stable else None,
            "beam_size": beam,
            "quality_fallback": final,
            "prompt": self._context_text(),
        }

    def _context_text(self) -> str | None:
        """The client's prompt and recent finals (within ``context_s``), as Whisper's prompt."""
        horizon = self.samples / SAMPLE_RATE - self.config.context_s
        recent = [text for end, text in self._context if end >= horizon]
        given = [self.config.prompt] if self.config.prompt else []
        return " ".join(given + recent)[-400:] or None

    def _maybe_partial(self) -> None:
        if self._partial_task is not None or self._spec is not None:
            return
        if self.endpointer.in_silence:
            # An endpoint may be coming: keep the worker free for the final.
            return
        first = not self._last_hyp
        meter = self.scheduler.meter
        new = self.samples - self._last_partial_at
        if first:
            needed = self.config.first_partial_s
        else:
            # Partials are what gives way under load: spaced out as the workers fill.
            needed = self.config.partial_interval_s * meter.partial_interval_factor()
        if new < needed * SAMPLE_RATE:
            return
        if not meter.partial_allowed(first=first):
            if not self._partial_shed:
                self._partial_shed = True
                meter.note_shed("partial_skipped")
            return
        self._partial_shed = False
        audio = self._buf.copy()
        priority = Priority.FIRST_PARTIAL if first else Priority.PARTIAL
        self._partial_task = asyncio.create_task(
            self._run_partial(audio, self.utterance_id, self._buf_start, priority)
        )

    async def _run_partial(
        self, audio: np.ndarray, utterance_id: int, start: int, priority: Priority
    ) -> None:
        try:
            result = await self.scheduler.decode(
                audio, priority, **self._decode_kwargs(final=False)
            )
        except (asyncio.CancelledError, PartialShed):
            return
        except Exception:
            _LOGGER.exception("partial decode failed")
            return
        finally:
            if self._partial_task is asyncio.current_task():
                self._partial_task = None
                # The next partial waits for new audio after this one finished, so
                # partials never take more than about half of the engine's time.
                self._last_partial_at = self.samples
        if utterance_id != self.utterance_id or self.closed or not self.in_utterance:
            return
        if not looks_like_speech(result, self.config) or has_repetition_loop(result.text):
            # A greedy partial of quiet, far-field audio can loop ("y y y y ..."); a
            # final is redone on the full window instead, but a partial is just skipped.
            return
        text = result.text
        self._stable = stable_prefix(self._last_hyp, text) or self._stable
        self._last_hyp = text
        await self.emit(
            PartialMessage(
                utterance_id=utterance_id,
                text=text,
                stable_text=self._stable,
                start=round(start / SAMPLE_RATE, 3),
                end=round((start + audio.size) / SAMPLE_RATE, 3),
            )
        )

    def _cancel_partial(self) -> None:
        if self._partial_task is not None:
            self._partial_task.cancel()
            self._partial_task = None

    def _start_speculative(self) -> None:
        self._drop_speculative()
        end = self.samples
        audio = self._buf[: end - self._buf_start].copy()
        task = asyncio.create_task(
            self.scheduler.decode(audio, Priority.SPECULATIVE, **self._decode_kwargs(final=True))
        )
        self._spec = (end, task)

    def _drop_speculative(self) -> None:
        if self._spec is not None:
            self._spec[1].cancel()
            self._spec = None

    async def _finalize(self, reason: FinalReason, *, end_sample: int) -> None:
        """Decode (or take the speculative decode of) the utterance and emit its final."""
        started = time.perf_counter()
        audio = self._buf[: end_sample - self._buf_start]
        start_s = self._buf_start / SAMPLE_RATE
        enough_speech = self._speech_samples >= self.config.min_speech_s * SAMPLE_RATE
        spec = self._spec
        self._spec = None
        self._cancel_partial()
        result: TranscriptionResult | None = None
        held, self._held = self._held, None
        if held is not None:
            # Nothing but silence came after the held decode (speech would have
            # released it), so it is this utterance's final, up to where it ended.
            result = held.result
            end_sample = held.end
        elif enough_speech and audio.size:
            if spec is not None and not spec[1].cancelled():
                # The speculative decode covered everything up to silence onset; what
                # came after it is silence by construction (no speech_resume).
                result = await spec[1]
            else:
                result = await self.scheduler.decode(
                    audio.copy(), Priority.FINAL, **self._decode_kwargs(final=True)
                )
        elif spec is not None:
            spec[1].cancel()
        utterance_id = self.utterance_id
        self._reset_utterance(end_sample)
        if result is None or not looks_like_speech(result, self.config):
            _LOGGER.debug("utterance %d dropped: no speech", utterance_id)
            return
        segments = [
            Segment(
                start=round(start_s + s.start, 3),
                end=round(start_s + s.end, 3),
                text=s.text,
                words=s.words,
            )
            for s in result.segments
        ]
        self.finals += 1
        self._context.append((end_sample / SAMPLE_RATE, result.text))
        del self._context[:-4]
        await self.emit(
            FinalMessage(
                utterance_id=utterance_id,
                text=result.text,
                segments=segments,
                start=round(start_s, 3),
                end=round(end_sample / SAMPLE_RATE, 3),
                language=result.language,
                engine=self.label.engine,
                device=self.label.device,
                model=self.label.model,
                backend=self.label.backend,
                latency_ms=round((time.perf_counter() - started) * 1000, 1),
                reason=reason,
            )
        )

    def _reset_utterance(self, end_sample: int) -> None:
        self._drop_front(end_sample - self._buf_start)
        self.utterance_id += 1
        self.in_utterance = self.endpointer.in_speech
        self._speech_samples = 0
        self._stable = ""
        self._last_hyp = ""
        self._last_partial_at = self.samples

    async def _cut_long_utterance(self) -> None:
        """Finalize a too-long utterance at its quietest recent point; speech goes on."""
        window = 3 * SAMPLE_RATE
        tail = self._buf[-window:]
        frame = 400  # 25 ms energy frames
        usable = tail.size // frame * frame
        energy = np.square(tail[:usable].reshape(-1, frame)).mean(axis=1)
        cut_in_tail = int(np.argmin(energy)) * frame + frame // 2
        cut = self._buf_start + self._buf.size - tail.size + cut_in_tail
        await self._finalize("max_length", end_sample=cut)
        self.in_utterance = True
        self._speech_samples = self._buf.size
