"""What the client's ``stream`` accepts as audio, turned into 16 kHz float32 blocks.

* a file path (any format the codecs read: wav, flac, mp3, ogg, webm...; needs
  ``voicemesh[codecs]``);
* a numpy array of samples (float in [-1, 1] or int16) at ``sample_rate``;
* an iterator or async iterator of frames: ``bytes`` of 16-bit little-endian PCM at
  ``sample_rate``, or numpy arrays as above (a microphone callback's blocks).

Everything is resampled once, on the client, to the 16 kHz mono the mesh works in, so
the client can keep, cut and replay audio by sample index.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TypeAlias

import numpy as np

from voicemesh.audio import PcmStreamDecoder, resample
from voicemesh.protocol import SAMPLE_RATE

Frame: TypeAlias = bytes | bytearray | memoryview | np.ndarray
"""One frame of a live source: PCM16 bytes, or samples."""
AudioInput: TypeAlias = str | os.PathLike[str] | np.ndarray | AsyncIterable[Frame] | Iterable[Frame]
"""Anything :meth:`AsyncVoiceMeshClient.stream` can transcribe."""


def as_float32(samples: np.ndarray) -> np.ndarray:
    """Mono float32 in [-1, 1] from float or int16 samples (channels, if any, averaged)."""
    array = np.asarray(samples)
    if array.ndim == 2:  # (frames, channels)
        array = array.mean(axis=1)
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    return array.astype(np.float32, copy=False)


class FrameDecoder:
    """A live source's frames at ``sample_rate`` -> 16 kHz float32, resampled without clicks."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._pcm = PcmStreamDecoder(sample_rate=sample_rate, encoding="pcm_s16le")
        self._float = PcmStreamDecoder(sample_rate=sample_rate, encoding="pcm_f32le")

    def decode(self, frame: Frame) -> np.ndarray:
        """One frame as 16 kHz float32 (possibly empty while the resampler fills)."""
        if isinstance(frame, np.ndarray):
            return self._float.decode(as_float32(frame).astype("<f4").tobytes())
        return self._pcm.decode(bytes(frame))

    def flush(self) -> np.ndarray:
        """The resampler's tail at the end of the source."""
        return np.concatenate([self._pcm.flush(), self._float.flush()])


def load_samples(source: str | os.PathLike[str] | np.ndarray, sample_rate: int) -> np.ndarray:
    """A whole file's or array's audio at 16 kHz float32."""
    if isinstance(source, np.ndarray):
        return resample(as_float32(source), sample_rate, SAMPLE_RATE)
    from voicemesh.audio_files import read_audio_file

    audio, rate = read_audio_file(source)
    return resample(audio, rate, SAMPLE_RATE)


async def _paced(audio: np.ndarray, frame_ms: float, realtime: bool) -> AsyncIterator[np.ndarray]:
    step = max(1, int(SAMPLE_RATE * frame_ms / 1000))
    started = time.perf_counter()
    for start in range(0, audio.size, step):
        end = min(start + step, audio.size)
        if realtime:
            delay = end / SAMPLE_RATE - (time.perf_counter() - started)
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # let the receiver run between frames
        yield audio[start:end]


async def _live(
    frames: AsyncIterable[Frame] | Iterable[Frame], sample_rate: int
) -> AsyncIterator[np.ndarray]:
    decoder = FrameDecoder(sample_rate)
    if isinstance(frames, AsyncIterable):
        async for frame in frames:
            block = decoder.decode(frame)
            if block.size:
                yield block
    else:
        for frame in frames:
            block = decoder.decode(frame)
            if block.size:
                yield block
            await asyncio.sleep(0)
    tail = decoder.flush()
    if tail.size:
        yield tail


def audio_blocks(
    source: AudioInput, *, sample_rate: int, frame_ms: float, realtime: bool
) -> AsyncIterator[np.ndarray]:
    """``source`` as 16 kHz float32 blocks: a file or array cut into ``frame_ms`` frames
    (at the pace a microphone would deliver them when ``realtime``), a live source as it
    comes."""
    if isinstance(source, str | os.PathLike | np.ndarray):
        return _paced(load_samples(source, sample_rate), frame_ms, realtime)
    if isinstance(source, bytes | bytearray):
        raise TypeError("pass raw PCM as an iterator of frames, or a numpy array of samples")
    return _live(source, sample_rate)
