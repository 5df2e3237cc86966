"""What a streaming client keeps to survive a dropped connection: audio and a backoff.

A :class:`SlidingBuffer` keeps the last seconds of audio sent, by absolute sample
index, so that after a drop the audio no final has covered yet can be sent again to
the new session; :class:`Backoff` spaces the reconnect attempts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voicemesh.protocol import SAMPLE_RATE


class SlidingBuffer:
    """The last ``max_s`` seconds of captured audio, addressed by absolute sample index."""

    def __init__(self, max_s: float = 30.0) -> None:
        self.max_samples = int(max_s * SAMPLE_RATE)
        self._audio = np.zeros(0, dtype=np.float32)
        self.start = 0  # absolute index of self._audio[0]

    @property
    def end(self) -> int:
        """Absolute index one past the last captured sample."""
        return self.start + self._audio.size

    def append(self, block: np.ndarray) -> None:
        """Add captured audio; the oldest falls out past ``max_s``."""
        self._audio = np.concatenate([self._audio, block.astype(np.float32)])
        extra = self._audio.size - self.max_samples
        if extra > 0:
            self._audio = self._audio[extra:]
            self.start += extra

    def since(self, index: int) -> tuple[int, np.ndarray]:
        """(first index kept, audio) from ``index`` on; older audio may have fallen out."""
        first = max(index, self.start)
        return first, self._audio[first - self.start :]

    def drop_before(self, index: int) -> None:
        """Forget audio before ``index`` (a final covered it)."""
        cut = min(max(0, index - self.start), self._audio.size)
        self._audio = self._audio[cut:]
        self.start += cut


@dataclass
class Backoff:
    """Reconnect delays: ``first_s`` doubling up to ``max_s``, at most ``attempts`` tries."""

    first_s: float = 0.5
    max_s: float = 8.0
    attempts: int = 8

    def delays(self) -> list[float]:
        """The delay before each attempt."""
        return [min(self.max_s, self.first_s * 2**i) for i in range(self.attempts)]
