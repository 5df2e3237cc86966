"""Synthesised audio out: volume, resampling and the wav | pcm | flac | mp3 | opus formats.

Whole responses and streams both go through :class:`AudioEncoder`, so a stream is the
same bytes a client would get in one piece (WAV and FLAC streams leave their length
fields "unknown", as streamed files must). Encoding uses libsndfile via ``soundfile``.
"""

from __future__ import annotations

import io
import struct
from typing import Any, Literal, get_args

import numpy as np

from voicemesh.audio import float32_to_pcm16, resample

AudioFormat = Literal["wav", "pcm", "flac", "mp3", "opus"]
AUDIO_FORMATS: tuple[str, ...] = get_args(AudioFormat)
MEDIA_TYPES: dict[str, str] = {
    "wav": "audio/wav",
    "pcm": "audio/L16",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
}
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_SOUNDFILE_FORMAT = {
    "flac": ("FLAC", "PCM_16"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "opus": ("OGG", "OPUS"),
}
_UNKNOWN_SIZE = 0xFFFFFFFF


def media_type(fmt: AudioFormat, sample_rate: int) -> str:
    """Content type of a format (raw PCM carries its rate and channel count)."""
    if fmt == "pcm":
        return f"audio/L16;rate={sample_rate};channels=1"
    return MEDIA_TYPES[fmt]


def output_rate(fmt: AudioFormat, wanted: int) -> int:
    """The rate a format will carry: ``wanted``, or the next rate the codec supports."""
    allowed = _OPUS_RATES if fmt == "opus" else _MP3_RATES if fmt == "mp3" else None
    if allowed is None or wanted in allowed:
        return wanted
    higher = [r for r in allowed if r >= wanted]
    return higher[0] if higher else allowed[-1]


LIMITER_CEILING = 10 ** (-0.3 / 20)
"""Peak a gain may reach (-0.3 dBFS): loud settings stay below full scale, never clipped."""
LIMITER_WINDOW_S = 0.005
"""Half-width of the limiter's gain window: a peak's gain reduction starts this early."""


def limit_peaks(
    audio: np.ndarray, sample_rate: int, ceiling: float = LIMITER_CEILING
) -> np.ndarray:
    """``audio`` with its peaks brought under ``ceiling`` by a smooth gain (look-ahead limiter).

    The gain each sample needs (``ceiling / |x|``, at most 1) is first reduced to the
    minimum over the blocks around it (at least ``LIMITER_WINDOW_S`` on each side), then
    averaged over a window half that wide: every averaged value is a mean of minima that
    all include the sample's own need, so no sample ends above the ceiling, and the gain
    moves smoothly instead of flattening the waveform the way clipping does.
    """
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= ceiling:
        return audio
    width = max(1, round(LIMITER_WINDOW_S * sample_rate))
    need = np.minimum(1.0, ceiling / np.maximum(np.abs(audio), 1e-12))
    blocks = -(-len(need) // width)
    padded = np.ones(blocks * width)
    padded[: len(need)] = need
    block_min = padded.reshape(blocks, width).min(axis=1)
    before, after = np.r_[1.0, block_min[:-1]], np.r_[block_min[1:], 1.0]
    around = np.minimum(block_min, np.minimum(before, after))
    held = np.repeat(around, width)[: len(need)]
    span = width // 2
    sums = np.r_[0.0, np.cumsum(np.pad(held, span, mode="edge"))]
    gain = (sums[2 * span + 1 :] - sums[: -2 * span - 1]) / (2 * span + 1)
    # The clip only catches float rounding: the gain already keeps every sample under.
    limited: np.ndarray = np.clip(audio * gain, -ceiling, ceiling).astype(np.float32)
    return limited


def apply_volume(audio: np.ndarray, volume_db: float, sample_rate: int = 22050) -> np.ndarray:
    """Audio scaled by ``volume_db`` decibels, its peaks limited below full scale."""
    if volume_db == 0:
        return audio
    scaled = (audio * np.float32(10 ** (volume_db / 20))).astype(np.float32)
    return limit_peaks(scaled, sample_rate)


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte PCM16 mono WAV header; ``None`` writes the streaming "unknown" sizes."""
    size = _UNKNOWN_SIZE if data_bytes is None else data_bytes
    riff = _UNKNOWN_SIZE if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", size)
    )


class _ByteSink:
    """A write-only, unseekable file for FFmpeg's muxers: bytes go out as written."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: Any) -> int:
        self._buffer.extend(bytes(data))
        return len(data)

    def take(self) -> bytes:
        """Bytes written since the last call."""
        out = bytes(self._buffer)
        self._buffer.clear()
        return out


class _ForwardSink(io.RawIOBase):
    """A write-only file that hands out bytes as they are written.

    libsndfile seeks back at close to patch FLAC/OGG headers; bytes already handed out
    cannot change, so writes before the high-water mark are dropped (the stream keeps
    its "unknown length" header, which decoders accept).
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending = bytearray()
        self._pos = 0
        self._sent = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        end = self._sent + len(self._pending)
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: end}[whence]
        self._pos = base + offset
        return self._pos

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        end = self._sent + len(self._pending)
        if self._pos >= self._sent:
            start = self._pos - self._sent
            if self._pos > end:
                self._pending.extend(b"\0" * (self._pos - end))
            self._pending[start : start + len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def take(self) -> bytes:
        """Bytes written since the last call."""
        out = bytes(self._pending)
        self._sent += len(out)
        self._pending.clear()
        return out


class AudioEncoder:
    """Encode float32 mono audio piece by piece into one stream of ``fmt`` bytes."""

    def __init__(self, fmt: AudioFormat, sample_rate: int, *, streaming: bool) -> None:
        self.fmt = fmt
        self.sample_rate = sample_rate
        self.streaming = streaming
        self._started = False
        self._sink: _ForwardSink | None = None
        self._file: Any = None
        self._av: tuple[Any, Any, _ByteSink] | None = None
        self._pts = 0
        if fmt == "mp3" and streaming:
            # libsndfile's MP3 writer patches a frame count into its first frame at close;
            # a stream cannot take that back, so streams come from FFmpeg without that tag.
            import av

            sink = _ByteSink()
            container = av.open(sink, "w", format="mp3", options={"write_xing": "0"})
            stream = container.add_stream("libmp3lame", rate=sample_rate, layout="mono")
            self._av = (container, stream, sink)
        elif fmt in _SOUNDFILE_FORMAT:
            import soundfile

            major, subtype = _SOUNDFILE_FORMAT[fmt]
            self._sink = _ForwardSink()
            self._file = soundfile.SoundFile(
                self._sink,
                mode="w",
                samplerate=sample_rate,
                channels=1,
                format=major,
                subtype=subtype,
            )

    def feed(self, audio: np.ndarray) -> bytes:
        """Encoded bytes for the next piece of audio (may be empty for compressed formats)."""
        if self.fmt in ("wav", "pcm"):
            data = float32_to_pcm16(audio)
            if self.fmt == "wav" and not self._started:
                data = wav_header(self.sample_rate, None) + data
            self._started = True
            return data
        if self._av is not None:
            return self._encode_av(audio)
        assert self._file is not None and self._sink is not None
        self._file.write(np.clip(audio, -1.0, 1.0).astype(np.float32))
        self._file.flush()
        return self._sink.take()

    def _encode_av(self, audio: np.ndarray) -> bytes:
        import av

        assert self._av is not None
        container, stream, sink = self._av
        samples = np.clip(audio, -1.0, 1.0).astype(np.float32).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += samples.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
        return sink.take()

    def close(self) -> bytes:
        """The encoder's last bytes."""
        if self.fmt == "wav" and not self._started:
            self._started = True
            return wav_header(self.sample_rate, None)
        if self._av is not None:
            container, stream, sink = self._av
            for packet in stream.encode(None):
                container.mux(packet)
            container.close()
            self._av = None
            return sink.take()
        if self._file is None or self._sink is None:
            return b""
        self._file.close()
        return self._sink.take()


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: AudioFormat) -> bytes:
    """The whole clip in ``fmt`` (WAV with exact sizes)."""
    if fmt == "wav":
        data = float32_to_pcm16(audio)
        return wav_header(sample_rate, len(data)) + data
    if fmt == "pcm":
        return float32_to_pcm16(audio)
    import soundfile

    container, subtype = _SOUNDFILE_FORMAT[fmt]
    buffer = io.BytesIO()
    with soundfile.SoundFile(
        buffer, mode="w", samplerate=sample_rate, channels=1, format=container, subtype=subtype
    ) as out:
        out.write(np.clip(audio, -1.0, 1.0).astype(np.float32))
    return buffer.getvalue()


def prepare_output(audio: np.ndarray, from_rate: int, to_rate: int, volume_db: float) -> np.ndarray:
    """Audio at the output rate with the volume change applied."""
    out = resample(audio, from_rate, to_rate) if to_rate != from_rate else audio
    return apply_volume(out.astype(np.float32, copy=False), volume_db, to_rate)
