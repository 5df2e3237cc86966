"""Decoding whole audio files and containers (WAV, FLAC, OGG, MP3, WebM, M4A, ...).

Everything here hands out float32 mono arrays in [-1, 1]. ``soundfile`` and ``av``
(the ``codecs`` extra) are imported only when a file is decoded, so the streaming
path (:mod:`voicemesh.audio`) needs neither.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from voicemesh.audio import check_rate, resample
from voicemesh.errors import BadAudio, PayloadTooLarge
from voicemesh.protocol import SAMPLE_RATE

_LOGGER = logging.getLogger(__name__)


def _undecodable(message: str) -> BadAudio:
    return BadAudio(message, code="undecodable_audio")


def _check_duration(frames: int, rate: int, max_seconds: float | None) -> None:
    if max_seconds is not None and frames > max_seconds * rate:
        raise PayloadTooLarge(
            f"audio is {frames / rate:.1f} s long, over the limit of {max_seconds:g} s",
            code="audio_too_long",
        )


def _read_with_soundfile(
    source: str | os.PathLike[str] | io.BytesIO, max_seconds: float | None
) -> tuple[np.ndarray, int] | None:
    """Read WAV/FLAC/OGG and the rest libsndfile knows; None when it does not know the data."""
    try:
        import soundfile
    except ImportError:
        _LOGGER.debug("soundfile is not installed; decoding with PyAV only")
        return None

    try:
        with soundfile.SoundFile(source) as handle:
            rate = int(handle.samplerate)
            _check_duration(handle.frames, rate, max_seconds)
            data = handle.read(dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, EOFError) as exc:
        _LOGGER.debug("soundfile cannot read the audio (%s); trying PyAV", exc)
        return None
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), rate


def _av_frames(container: Any, stream: Any) -> Iterator[Any]:
    yield from container.decode(stream)
    yield None  # tells the resampler to flush its tail


def _read_with_av(
    source: str | os.PathLike[str] | io.BytesIO,
    rate: int | None,
    max_seconds: float | None,
) -> tuple[np.ndarray, int]:
    """Decode anything FFmpeg knows (MP3, WebM/Opus, M4A/AAC, ...) to mono float32."""
    try:
        import av
    except ImportError as exc:
        raise _undecodable(
            "audio is not WAV/FLAC/OGG and PyAV (the voicemesh[codecs] extra) is not installed"
        ) from exc

    chunks: list[np.ndarray] = []
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.audio:
                raise _undecodable("the file has no audio stream")
            stream = container.streams.audio[0]
            out_rate = rate or int(stream.codec_context.sample_rate or stream.rate or 0)
            if out_rate <= 0:
                raise _undecodable("the audio stream does not declare a sample rate")
            limit = None if max_seconds is None else max_seconds * out_rate
            resampler = av.AudioResampler(format="flt", layout="mono", rate=out_rate)
            total = 0
            for frame in _av_frames(container, stream):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    total += samples.shape[0]
                    # Stop early: a long upload is refused without decoding all of it.
                    if limit is not None and total > limit:
                        _check_duration(total, out_rate, max_seconds)
                    chunks.append(samples)
    except (av.error.FFmpegError, ValueError, OSError, EOFError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc)
        _LOGGER.debug("PyAV cannot decode the audio: %s", exc)
        raise _undecodable(
            "the data is not audio in a format that can be decoded "
            f"(WAV, FLAC, OGG, MP3, WebM, M4A, ...): {detail}"
        ) from exc
    if not chunks:
        raise _undecodable("the file contains no audio samples")
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32), out_rate


def decode_audio_file(
    data: bytes, *, target_rate: int = SAMPLE_RATE, max_seconds: float | None = None
) -> np.ndarray:
    """Decode an uploaded audio file (WAV, FLAC, OGG, MP3, WebM, M4A, ...) to float32 mono."""
    check_rate(target_rate, "target_rate")
    if not data:
        raise _undecodable("the uploaded audio file is empty")
    found = _read_with_soundfile(io.BytesIO(data), max_seconds)
    if found is None:
        return _read_with_av(io.BytesIO(data), target_rate, max_seconds)[0]
    samples, rate = found
    if samples.size == 0:
        raise _undecodable("the file contains no audio samples")
    return resample(samples, rate, target_rate)


def read_audio_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read an audio file from disk as float32 mono at its own sample rate."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no audio file at {os.fspath(path)!r}")
    found = _read_with_soundfile(path, None)
    if found is None:
        found = _read_with_av(os.fspath(path), None, None)
    return found


def load_clip_16k(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an audio file from disk as float32 mono at 16 kHz."""
    samples, rate = read_audio_file(path)
    return resample(samples, rate, SAMPLE_RATE)
