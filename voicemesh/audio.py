"""Audio helpers shared by every service: PCM conversion, resampling and stream decoding.

Everything here hands out float32 mono arrays in [-1, 1] at :data:`SAMPLE_RATE` unless
told otherwise. :class:`PcmStreamDecoder` sits on the WebSocket hot path, so it checks a
frame completely before it touches any state: a rejected frame costs the session nothing.
:class:`OpusStreamDecoder` does the same job for Opus: each binary frame is exactly one
raw Opus packet (no Ogg or WebM container; clients send 20 ms packets), decoded with
libopus through PyAV. :func:`stream_decoder` picks one from a ``start`` message.

Whole files (WAV, FLAC, MP3, WebM, ...) are decoded by :mod:`voicemesh.audio_files`;
the streaming path here needs nothing beyond numpy and soxr (PyAV only for Opus).
"""

from __future__ import annotations

import logging
import math
from typing import Literal, Protocol

import numpy as np
import soxr

from voicemesh.errors import BadAudio, PayloadTooLarge
from voicemesh.protocol import SAMPLE_RATE

_LOGGER = logging.getLogger(__name__)

PcmEncoding = Literal["pcm_s16le", "pcm_f32le"]
StreamEncoding = Literal["pcm_s16le", "pcm_f32le", "opus"]
OPUS_DECODE_RATE = 48000
"""libopus decodes every packet at 48 kHz whatever rate the encoder was given."""

_BYTES_PER_SAMPLE: dict[str, int] = {"pcm_s16le": 2, "pcm_f32le": 4}
_PCM16_SCALE = np.float32(1.0 / 32768.0)
_RESAMPLE_QUALITY = "HQ"
_SILENCE_DBFS = -120.0
_EMPTY = np.zeros(0, dtype=np.float32)
_EMPTY.flags.writeable = False


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


def check_rate(rate: int, what: str) -> None:
    """Refuse (BadAudio ``bad_sample_rate``) a sample rate that is not a positive integer."""
    if not isinstance(rate, int | np.integer) or rate <= 0:
        raise BadAudio(
            f"{what} must be a positive integer in Hz, got {rate!r}", code="bad_sample_rate"
        )


# ---------------------------------------------------------------- PCM conversion


def pcm16_to_float32(data: bytes) -> np.ndarray:
    """Convert little-endian 16-bit PCM bytes to float32 samples in [-1, 1)."""
    if len(data) % 2:
        raise BadAudio(
            f"16-bit PCM needs an even number of bytes, got {len(data)}", code="odd_length_frame"
        )
    out = np.frombuffer(data, dtype="<i2").astype(np.float32)
    out *= _PCM16_SCALE
    return out


def float32_to_pcm16(x: np.ndarray) -> bytes:
    """Convert float samples to little-endian 16-bit PCM bytes, clipping to [-1, 1]."""
    y = np.multiply(x, 32768.0, dtype=np.float32)
    # NaN would turn into an arbitrary integer; silence is the least surprising sample.
    np.nan_to_num(y, copy=False, nan=0.0, posinf=32767.0, neginf=-32768.0)
    np.rint(y, out=y)
    np.clip(y, -32768.0, 32767.0, out=y)
    pcm: np.ndarray = y.astype("<i2")
    return pcm.tobytes()


def resample(x: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a whole signal with soxr; returns float32 (unchanged when the rates match)."""
    x = np.asarray(x, dtype=np.float32)
    if from_rate == to_rate:
        return x
    check_rate(from_rate, "from_rate")
    check_rate(to_rate, "to_rate")
    out: np.ndarray = soxr.resample(x, from_rate, to_rate, quality=_RESAMPLE_QUALITY)
    return out


def rms_dbfs(x: np.ndarray) -> float:
    """Root-mean-square level in dBFS of float samples; -120.0 for silence or no samples."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    if flat.size == 0:
        return _SILENCE_DBFS
    mean_square = float(np.dot(flat, flat)) / flat.size
    if not mean_square > 0.0:
        return _SILENCE_DBFS
    return max(_SILENCE_DBFS, 10.0 * math.log10(mean_square))


# ---------------------------------------------------------------- streaming


def _sum_channels(interleaved: np.ndarray) -> np.ndarray:
    """Sum the columns of a (frames, channels) view into a new float32 array."""
    # Adding strided columns is several times faster than a reduction over a short axis.
    total = interleaved[:, 0].astype(np.float32)
    for channel in range(1, interleaved.shape[1]):
        total += interleaved[:, channel]
    return total


class PcmStreamDecoder:
    """Turns one session's raw PCM frames into float32 mono at ``target_rate``, click-free."""

    def __init__(
        self,
        *,
        sample_rate: int = SAMPLE_RATE,
        encoding: PcmEncoding = "pcm_s16le",
        channels: int = 1,
        target_rate: int = SAMPLE_RATE,
        max_frame_bytes: int = 1_048_576,
    ) -> None:
        check_rate(sample_rate, "sample_rate")
        check_rate(target_rate, "target_rate")
        if encoding not in _BYTES_PER_SAMPLE:
            raise BadAudio(
                f"encoding must be one of {sorted(_BYTES_PER_SAMPLE)}, got {encoding!r}",
                code="bad_encoding",
            )
        if channels < 1:
            raise BadAudio(f"channels must be at least 1, got {channels}", code="bad_channels")
        if max_frame_bytes <= 0:
            raise ValueError(f"max_frame_bytes must be positive, got {max_frame_bytes}")
        self.sample_rate = sample_rate
        self.encoding: PcmEncoding = encoding
        self.channels = channels
        self.target_rate = target_rate
        self.max_frame_bytes = max_frame_bytes
        self._block_bytes = _BYTES_PER_SAMPLE[encoding] * channels
        self._samples_in = 0
        # One persistent stream keeps the filter history across frames, so frame
        # boundaries leave no clicks and no gaps in the output.
        self._resampler: soxr.ResampleStream | None = (
            soxr.ResampleStream(
                sample_rate, target_rate, 1, dtype="float32", quality=_RESAMPLE_QUALITY
            )
            if sample_rate != target_rate
            else None
        )

    @property
    def samples_in(self) -> int:
        """Input samples per channel consumed so far."""
        return self._samples_in

    @property
    def seconds_in(self) -> float:
        """Seconds of input audio consumed so far."""
        return self._samples_in / self.sample_rate

    def _to_mono(self, frame: bytes) -> np.ndarray:
        """Validate ``frame`` and convert it to float32 mono at the input rate; no state change."""
        size = len(frame)
        if size > self.max_frame_bytes:
            raise PayloadTooLarge(
                f"audio frame of {size} bytes is over the limit of {self.max_frame_bytes} bytes",
                code="frame_too_large",
            )
        if size % self._block_bytes:
            raise BadAudio(
                f"{self.encoding} with {self.channels} channel(s) needs frames whose length "
                f"is a multiple of {self._block_bytes} bytes, got {size}",
                code="odd_length_frame",
            )
        if self.encoding == "pcm_s16le":
            samples = np.frombuffer(frame, dtype="<i2")
            scale = _PCM16_SCALE
        else:
            samples = np.frombuffer(frame, dtype="<f4")
            scale = np.float32(1.0)
            if not np.isfinite(samples).all():
                raise BadAudio(
                    "pcm_f32le frame contains NaN or infinite samples", code="bad_samples"
                )
        if self.channels == 1:
            mono = samples.astype(np.float32)  # always a fresh, writable array
        else:
            mono = _sum_channels(samples.reshape(-1, self.channels))
            scale = scale / np.float32(self.channels)
        if scale != 1.0:
            mono *= scale
        return mono

    def decode(self, frame: bytes) -> np.ndarray:
        """Decode one binary frame into float32 mono at ``target_rate`` (may be shorter)."""
        if not frame:
            return _empty()
        mono = self._to_mono(frame)
        self._samples_in += mono.shape[0]
        if self._resampler is None:
            return mono
        out: np.ndarray = self._resampler.resample_chunk(mono)
        return out

    def to_pcm16_16k(self, frame: bytes) -> bytes:
        """Decode one frame and return it as 16-bit PCM bytes at ``target_rate``."""
        return float32_to_pcm16(self.decode(frame))

    def flush(self) -> np.ndarray:
        """Return the resampler's buffered tail; later frames start a fresh resampler state."""
        if self._resampler is None:
            return _empty()
        tail: np.ndarray = self._resampler.resample_chunk(_EMPTY, last=True)
        self._resampler.clear()
        return tail


class AudioStreamDecoder(Protocol):
    """What a WebSocket session needs from its decoder, whatever the wire encoding."""

    @property
    def seconds_in(self) -> float:
        """Seconds of input audio consumed so far."""
        ...

    def decode(self, frame: bytes) -> np.ndarray:
        """Decode one binary frame into float32 mono at the target rate."""
        ...

    def to_pcm16_16k(self, frame: bytes) -> bytes:
        """Decode one frame and return it as 16-bit PCM bytes at the target rate."""
        ...

    def flush(self) -> np.ndarray:
        """Return the buffered tail."""
        ...


def _bad_opus(message: str) -> BadAudio:
    return BadAudio(message, code="bad_opus_packet")


class OpusStreamDecoder:
    """Turns one session's Opus packets (one raw packet per frame) into float32 mono."""

    def __init__(
        self,
        *,
        channels: int = 1,
        target_rate: int = SAMPLE_RATE,
        max_frame_bytes: int = 1_048_576,
    ) -> None:
        check_rate(target_rate, "target_rate")
        if channels not in (1, 2):
            raise BadAudio(
                f"opus streams have 1 or 2 channels, got {channels}", code="bad_channels"
            )
        try:
            import av
        except ImportError as exc:
            raise BadAudio(
                "encoding 'opus' needs PyAV (the voicemesh[codecs] extra)", code="bad_encoding"
            ) from exc
        self._av = av
        name = "libopus" if "libopus" in av.codecs_available else "opus"
        codec = av.CodecContext.create(name, "r")
        if not isinstance(codec, av.AudioCodecContext):
            raise BadAudio(f"PyAV's {name} is not an audio codec", code="bad_encoding")
        self._codec = codec
        self._codec.sample_rate = OPUS_DECODE_RATE
        self._codec.layout = "mono" if channels == 1 else "stereo"
        self.channels = channels
        self.target_rate = target_rate
        self.max_frame_bytes = max_frame_bytes
        self._samples_in = 0
        self._resampler = soxr.ResampleStream(
            OPUS_DECODE_RATE, target_rate, 1, dtype="float32", quality=_RESAMPLE_QUALITY
        )

    @property
    def seconds_in(self) -> float:
        """Seconds of decoded audio so far."""
        return self._samples_in / OPUS_DECODE_RATE

    def _packet_to_mono(self, frame: bytes) -> np.ndarray:
        if len(frame) > self.max_frame_bytes:
            raise PayloadTooLarge(
                f"opus packet of {len(frame)} bytes is over the limit of "
                f"{self.max_frame_bytes} bytes",
                code="frame_too_large",
            )
        try:
            frames = self._codec.decode(self._av.Packet(frame))
        except (self._av.error.FFmpegError, ValueError) as exc:
            raise _bad_opus(
                f"binary frame is not one valid Opus packet ({len(frame)} bytes): {exc}"
            ) from exc
        chunks = []
        for decoded in frames:
            if decoded.sample_rate != OPUS_DECODE_RATE:
                raise _bad_opus(f"opus decoded at {decoded.sample_rate} Hz, expected 48000")
            samples = decoded.to_ndarray()
            if decoded.format.is_planar:
                mono = (
                    samples.mean(axis=0, dtype=np.float32)
                    if samples.shape[0] > 1
                    else samples[0].astype(np.float32)
                )
            else:
                mono = _sum_channels(samples.reshape(-1, self.channels)) / np.float32(self.channels)
            if samples.dtype == np.int16:
                mono = mono * _PCM16_SCALE
            chunks.append(mono.astype(np.float32, copy=False))
        return np.concatenate(chunks) if chunks else _empty()

    def decode(self, frame: bytes) -> np.ndarray:
        """Decode one Opus packet into float32 mono at ``target_rate`` (may be shorter)."""
        if not frame:
            return _empty()
        mono = self._packet_to_mono(frame)
        self._samples_in += mono.shape[0]
        out: np.ndarray = self._resampler.resample_chunk(mono)
        return out

    def to_pcm16_16k(self, frame: bytes) -> bytes:
        """Decode one packet and return it as 16-bit PCM bytes at ``target_rate``."""
        return float32_to_pcm16(self.decode(frame))

    def flush(self) -> np.ndarray:
        """Return the resampler's buffered tail; later packets start a fresh resampler."""
        tail: np.ndarray = self._resampler.resample_chunk(_EMPTY, last=True)
        self._resampler.clear()
        return tail


class OpusStreamEncoder:
    """Float32 mono at 16 kHz -> raw Opus packets of ``frame_ms`` (the client side of ``opus``)."""

    def __init__(
        self, *, sample_rate: int = SAMPLE_RATE, frame_ms: int = 20, bitrate: int = 32000
    ) -> None:
        if sample_rate not in (8000, 12000, 16000, 24000, 48000):
            raise BadAudio(
                f"opus encodes 8, 12, 16, 24 or 48 kHz, got {sample_rate}", code="bad_sample_rate"
            )
        if frame_ms not in (10, 20, 40, 60):
            raise ValueError(f"frame_ms must be 10, 20, 40 or 60, got {frame_ms}")
        import av

        codec = av.CodecContext.create("libopus", "w")
        if not isinstance(codec, av.AudioCodecContext):
            raise BadAudio("PyAV's libopus is not an audio codec", code="bad_encoding")
        codec.sample_rate = sample_rate
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = bitrate
        codec.options = {"application": "voip", "frame_duration": str(frame_ms)}
        codec.open()
        self._av = av
        self._codec = codec
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self._pending = _empty()
        self._pts = 0

    def _encode_frame(self, samples: np.ndarray) -> list[bytes]:
        pcm = np.frombuffer(float32_to_pcm16(samples), dtype="<i2").reshape(1, -1)
        frame = self._av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += pcm.shape[1]
        return [bytes(packet) for packet in self._codec.encode(frame)]

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """Encode what whole frames ``samples`` completes; the rest waits for more."""
        pending = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        packets: list[bytes] = []
        whole = pending.size - pending.size % self.frame_samples
        for start in range(0, whole, self.frame_samples):
            packets += self._encode_frame(pending[start : start + self.frame_samples])
        self._pending = pending[whole:]
        return packets

    def flush(self) -> list[bytes]:
        """Pad the last partial frame with silence and drain the encoder."""
        packets: list[bytes] = []
        if self._pending.size:
            pad = np.zeros(self.frame_samples - self._pending.size, dtype=np.float32)
            packets += self._encode_frame(np.concatenate([self._pending, pad]))
            self._pending = _empty()
        packets += [bytes(packet) for packet in self._codec.encode(None)]
        return packets


def stream_decoder(
    *,
    sample_rate: int = SAMPLE_RATE,
    encoding: str = "pcm_s16le",
    channels: int = 1,
    target_rate: int = SAMPLE_RATE,
    max_frame_bytes: int = 1_048_576,
) -> AudioStreamDecoder:
    """The decoder a ``start`` message asks for (``sample_rate`` is unused for Opus)."""
    if encoding == "opus":
        return OpusStreamDecoder(
            channels=channels, target_rate=target_rate, max_frame_bytes=max_frame_bytes
        )
    if encoding not in _BYTES_PER_SAMPLE:
        raise BadAudio(
            f"encoding must be one of {[*sorted(_BYTES_PER_SAMPLE), 'opus']}, got {encoding!r}",
            code="bad_encoding",
        )
    pcm: PcmEncoding = "pcm_s16le" if encoding == "pcm_s16le" else "pcm_f32le"
    return PcmStreamDecoder(
        sample_rate=sample_rate,
        encoding=pcm,
        channels=channels,
        target_rate=target_rate,
        max_frame_bytes=max_frame_bytes,
    )
