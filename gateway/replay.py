"""The audio of a stream since its last final, kept to replay to the next backend."""

from __future__ import annotations

from collections import deque

from voicemesh.protocol import SAMPLE_RATE

BYTES_PER_SAMPLE = 2


class SessionBuffer:
    """16 kHz PCM16 audio since the last final, for replay to another backend."""

    def __init__(self) -> None:
        self._chunks: deque[tuple[int, bytes]] = deque()  # (start sample, pcm)
        self.start_sample = 0
        self.total_samples = 0

    def append(self, pcm: bytes) -> None:
        """Keep one normalised frame."""
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

    def replay_since_last_final(self) -> bytes:
        """All audio not yet covered by a final."""
        return b"".join(pcm for _, pcm in self._chunks)

    @property
    def pending_ms(self) -> float:
        """Duration of the buffered audio."""
        return (self.total_samples - self.start_sample) * 1000 / SAMPLE_RATE
