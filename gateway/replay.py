"""The audio of a stream since its last final, kept to replay to the next backend."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from voicemesh.protocol import SAMPLE_RATE

BYTES_PER_SAMPLE = 2


class SessionBuffer:
    """16 kHz PCM16 audio since the last final, for replay to another backend."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._chunks: deque[tuple[int, bytes]] = deque()  # (start sample, pcm)
        self.start_sample = 0
        self.total_samples = 0
        self._clock = clock
        self._first_at: float | None = None  # when the first frame came

    def append(self, pcm: bytes) -> None:
        """Keep one normalised frame."""
        if self._first_at is None:
            self._first_at = self._clock()
        self._chunks.append((self.total_samples, pcm))
        self.total_samples += len(pcm) // BYTES_PER_SAMPLE

    def drop_until(self, seconds: float) -> None:
        """Forget audio that a final (ending at ``seconds``) has covered."""
        cut = round(seconds * SAMPLE_RATE)
        while self._chunks:
            start, pcm = self._chunks[0]
            end = start + len(pcm) // BYTES_PER_SAMPLE
            if end <= cut:
                self._chunks.popleft()
                continue
            if start < cut:
                offset = (cut - start) * BYTES_PER_SAMPLE
                self._chunks[0] = (cut, pcm[offset:])
            break
        self.start_sample = self._chunks[0][0] if self._chunks else self.total_samples

    def restore(self, start_sample: int, total_samples: int, pcm: bytes) -> None:
        """Take up a resumed session's audio: ``pcm`` ends at ``total_samples`` and begins at
        ``start_sample``, the stream time of its last final (or of the kept tail)."""
        self._chunks.clear()
        if pcm:
            self._chunks.append((start_sample, pcm))
        self.start_sample = start_sample
        self.total_samples = total_samples
        # The resumed stream has kept real-time pace so far: it is not ahead.
        self._first_at = self._clock() - total_samples / SAMPLE_RATE

    def audio_since(self, sample: int) -> bytes:
        """The kept audio from stream sample ``sample`` on (from the oldest kept if later)."""
        parts = []
        for start, pcm in self._chunks:
            end = start + len(pcm) // BYTES_PER_SAMPLE
            if end <= sample:
                continue
            parts.append(pcm[max(0, sample - start) * BYTES_PER_SAMPLE :])
        return b"".join(parts)

    def replay_since_last_final(self) -> bytes:
        """All audio not yet covered by a final."""
        return b"".join(pcm for _, pcm in self._chunks)

    @property
    def pending_ms(self) -> float:
        """Duration of the buffered audio."""
        return (self.total_samples - self.start_sample) * 1000 / SAMPLE_RATE

    def refusal(self, pcm: bytes, limit_s: float) -> dict[str, Any] | None:
        """The ``audio_ahead`` error for a frame that would put the stream more than
        ``limit_s`` ahead of both its last final and real time, or None.

        Both, so that a live mic is never refused: in a long silence no final comes, but
        its audio keeps real-time pace. A client sending much faster than real time (a file
        as fast as it can) is refused once that far ahead of the engine's finals. The frame
        is refused, not kept: memory stays bounded and what was taken is never dropped; the
        client may send it again once finals have caught up."""
        pending_s = (self.total_samples - self.start_sample) / SAMPLE_RATE
        elapsed_s = 0.0 if self._first_at is None else self._clock() - self._first_at
        ahead_s = min(pending_s, self.total_samples / SAMPLE_RATE - elapsed_s)
        if ahead_s + len(pcm) / BYTES_PER_SAMPLE / SAMPLE_RATE <= limit_s:
            return None
        message = (
            f"audio is {ahead_s:.1f} s ahead of real time and of the last final, over the limit"
            f" of {limit_s:g} s; frame refused: send it again once finals catch up, or at"
            " real-time pace"
        )
        return {
            "code": "audio_ahead",
            "message": message,
            "ahead_s": round(ahead_s, 2),
            "limit_s": limit_s,
        }
