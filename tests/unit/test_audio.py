"""Audio helpers against the real speech clips in tests/data/speech."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicemesh.audio import PcmStreamDecoder, float32_to_pcm16, pcm16_to_float32, resample, rms_dbfs
from voicemesh.errors import BadAudio, PayloadTooLarge
from voicemesh.protocol import SAMPLE_RATE

pytestmark = pytest.mark.unit

_REPO_ROOT = Path(__file__).resolve().parents[2]
SPEECH_DIR = _REPO_ROOT / "tests" / "data" / "speech"

FRAME_MS = (20, 33, 100)


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    """The 11 s JFK clip, 16 kHz mono, as float32."""
    samples, rate = sf.read(SPEECH_DIR / "whisper-jfk.wav", dtype="float32")
    assert rate == SAMPLE_RATE and samples.ndim == 1
    return samples


@pytest.fixture(scope="module")
def short_clip() -> np.ndarray:
    """A 2.8 s clip ("go forward ten meters"), 16 kHz mono, as float32."""
    samples, rate = sf.read(SPEECH_DIR / "pocketsphinx-goforward.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    return samples


def _frames(data: bytes, rate: int, bytes_per_block: int) -> Iterator[bytes]:
    """Cut ``data`` into frames of 20, 33 and 100 ms in turn (odd sizes on purpose)."""
    sizes = itertools.cycle([rate * ms // 1000 * bytes_per_block for ms in FRAME_MS])
    pos = 0
    while pos < len(data):
        size = next(sizes)
        yield data[pos : pos + size]
        pos += size


def _aligned_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 64) -> float:
    """Pearson correlation of ``a`` and ``b`` at the lag (within max_lag) that fits best."""
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x = a[lag:] if lag >= 0 else a[: len(a) + lag]
        y = b[: len(x)] if lag >= 0 else b[-lag:][: len(x)]
        n = min(len(x), len(y))
        best = max(best, float(np.corrcoef(x[:n], y[:n])[0, 1]))
    return best


def _stream(decoder: PcmStreamDecoder, frames: Iterator[bytes]) -> np.ndarray:
    out = [decoder.decode(frame) for frame in frames]
    out.append(decoder.flush())
    return np.concatenate(out)


# ---------------------------------------------------------------- PCM conversion


def test_pcm16_round_trip_is_exact_for_every_sample_value() -> None:
    every_value = np.arange(-32768, 32768, dtype="<i2").tobytes()
    floats = pcm16_to_float32(every_value)
    assert floats.dtype == np.float32
    assert floats.min() == -1.0 and floats.max() == pytest.approx(32767 / 32768)
    assert float32_to_pcm16(floats) == every_value


def test_pcm16_round_trip_of_a_real_clip(short_clip: np.ndarray) -> None:
    data = (SPEECH_DIR / "pocketsphinx-goforward.wav").read_bytes()
    pcm = sf.read(io.BytesIO(data), dtype="int16")[0].tobytes()
    assert float32_to_pcm16(pcm16_to_float32(pcm)) == pcm
    np.testing.assert_array_equal(pcm16_to_float32(pcm), short_clip)


def test_float32_to_pcm16_clips_and_maps_nan_to_silence() -> None:
    out = np.frombuffer(
        float32_to_pcm16(np.array([2.0, -2.0, 1.0, -1.0, 0.5, np.nan], dtype=np.float32)),
        dtype="<i2",
    )
    assert out.tolist() == [32767, -32768, 32767, -32768, 16384, 0]


def test_pcm16_to_float32_rejects_odd_length() -> None:
    with pytest.raises(BadAudio) as info:
        pcm16_to_float32(b"\x00\x01\x02")
    assert info.value.code == "odd_length_frame"


def test_resample_is_noop_for_equal_rates_and_scales_length(short_clip: np.ndarray) -> None:
    assert resample(short_clip, 16000, 16000) is short_clip
    down = resample(short_clip, 16000, 8000)
    assert down.dtype == np.float32
    assert abs(len(down) - len(short_clip) // 2) <= 1
    up = resample(down.astype(np.float64), 8000)
    assert up.dtype == np.float32 and abs(len(up) - len(short_clip)) <= 2


def test_rms_dbfs() -> None:
    assert rms_dbfs(np.zeros(1600, dtype=np.float32)) == -120.0
    assert rms_dbfs(np.zeros(0, dtype=np.float32)) == -120.0
    assert rms_dbfs(np.ones(160, dtype=np.float32)) == pytest.approx(0.0)
    sine = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
    assert rms_dbfs(sine) == pytest.approx(-3.0103, abs=1e-3)
    assert rms_dbfs(0.1 * sine) == pytest.approx(-23.0103, abs=1e-3)


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("input_rate", [8000, 48000])
def test_streaming_decode_matches_one_shot_resampling(jfk: np.ndarray, input_rate: int) -> None:
    pcm = float32_to_pcm16(resample(jfk, SAMPLE_RATE, input_rate))
    reference = resample(pcm16_to_float32(pcm), input_rate, SAMPLE_RATE)

    decoder = PcmStreamDecoder(sample_rate=input_rate)
    streamed = _stream(decoder, _frames(pcm, input_rate, 2))

    assert streamed.dtype == np.float32 and streamed.ndim == 1
    assert abs(len(streamed) - len(reference)) <= 4
    assert _aligned_correlation(streamed, reference) > 0.99
    # No clicks at frame boundaries: the streamed signal never strays from the reference.
    n = min(len(streamed), len(reference))
    assert float(np.max(np.abs(streamed[:n] - reference[:n]))) < 1e-3
    assert decoder.samples_in == len(pcm) // 2
    assert decoder.seconds_in == pytest.approx(len(jfk) / SAMPLE_RATE, abs=1e-3)


def test_streaming_f32_input(short_clip: np.ndarray) -> None:
    same_rate = PcmStreamDecoder(encoding="pcm_f32le")
    out = _stream(same_rate, _frames(short_clip.astype("<f4").tobytes(), SAMPLE_RATE, 4))
    np.testing.assert_array_equal(out, short_clip)
    out[0] = 0.5  # decoded arrays belong to the caller

    at_48k = resample(short_clip, SAMPLE_RATE, 48000)
    decoder = PcmStreamDecoder(sample_rate=48000, encoding="pcm_f32le")
    streamed = _stream(decoder, _frames(at_48k.astype("<f4").tobytes(), 48000, 4))
    assert abs(len(streamed) - len(short_clip)) <= 4
    assert _aligned_correlation(streamed, short_clip) > 0.99
    assert decoder.samples_in == len(at_48k)


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le"])
def test_stereo_is_downmixed_by_averaging(short_clip: np.ndarray, encoding: str) -> None:
    left = short_clip
    right = 0.5 * short_clip[::-1]
    interleaved = np.stack([left, right], axis=1).ravel()
    if encoding == "pcm_s16le":
        data = float32_to_pcm16(interleaved)
        expected = pcm16_to_float32(data).reshape(-1, 2).mean(axis=1)
    else:
        data = interleaved.astype("<f4").tobytes()
        expected = (left + right) / 2

    decoder = PcmStreamDecoder(encoding=encoding, channels=2)  # type: ignore[arg-type]
    out = _stream(decoder, _frames(data, SAMPLE_RATE, 2 * (2 if encoding == "pcm_s16le" else 4)))

    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert decoder.samples_in == len(short_clip)


def test_empty_frame_returns_empty_array() -> None:
    decoder = PcmStreamDecoder(sample_rate=8000)
    out = decoder.decode(b"")
    assert out.dtype == np.float32 and out.shape == (0,)
    assert decoder.samples_in == 0


def _decode_with_bad_frame(frames: list[bytes], bad: bytes, decoder: PcmStreamDecoder) -> tuple:
    """Decode ``frames`` with ``bad`` pushed in the middle; return the output and the error."""
    out = []
    error = None
    for index, frame in enumerate(frames):
        if index == len(frames) // 2:
            before = decoder.samples_in
            with pytest.raises((BadAudio, PayloadTooLarge)) as info:
                decoder.decode(bad)
            error = info.value
            assert decoder.samples_in == before
        out.append(decoder.decode(frame))
    out.append(decoder.flush())
    return np.concatenate(out), error


@pytest.mark.parametrize(
    ("bad", "code", "in_message"),
    [
        (b"\x01\x02\x03", "odd_length_frame", "multiple of 2 bytes"),
        (b"\x00" * 10_000_000, "frame_too_large", "1048576"),
    ],
)
def test_bad_frame_leaves_the_session_intact(
    short_clip: np.ndarray, bad: bytes, code: str, in_message: str
) -> None:
    pcm = float32_to_pcm16(resample(short_clip, SAMPLE_RATE, 8000))
    frames = list(_frames(pcm, 8000, 2))
    clean = _stream(PcmStreamDecoder(sample_rate=8000), iter(frames))

    out, error = _decode_with_bad_frame(frames, bad, PcmStreamDecoder(sample_rate=8000))

    assert error.code == code
    assert in_message in error.message
    np.testing.assert_array_equal(out, clean)


def test_stereo_frame_length_error_names_the_expected_multiple() -> None:
    decoder = PcmStreamDecoder(encoding="pcm_f32le", channels=2)
    with pytest.raises(BadAudio) as info:
        decoder.decode(b"\x00" * 12)
    assert info.value.code == "odd_length_frame"
    assert "multiple of 8 bytes" in info.value.message
    assert decoder.decode(b"\x00" * 16).shape == (2,)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_f32_samples_are_rejected(short_clip: np.ndarray, bad_value: float) -> None:
    at_48k = resample(short_clip, SAMPLE_RATE, 48000)
    frames = list(_frames(at_48k.astype("<f4").tobytes(), 48000, 4))
    clean = _stream(PcmStreamDecoder(sample_rate=48000, encoding="pcm_f32le"), iter(frames))
    poisoned = np.frombuffer(frames[3], dtype="<f4").copy()
    poisoned[17] = bad_value

    out, error = _decode_with_bad_frame(
        frames, poisoned.tobytes(), PcmStreamDecoder(sample_rate=48000, encoding="pcm_f32le")
    )

    assert error.code == "bad_samples"
    np.testing.assert_array_equal(out, clean)


def test_to_pcm16_16k_and_flush_then_continue(short_clip: np.ndarray) -> None:
    pcm = float32_to_pcm16(short_clip)
    decoder = PcmStreamDecoder()
    assert decoder.to_pcm16_16k(pcm) == pcm
    assert decoder.flush().shape == (0,)

    resampling = PcmStreamDecoder(sample_rate=8000)
    pcm_8k = float32_to_pcm16(resample(short_clip, SAMPLE_RATE, 8000))
    first = np.concatenate([resampling.decode(pcm_8k), resampling.flush()])
    # After a flush the next utterance decodes as if on a fresh decoder.
    second = np.concatenate([resampling.decode(pcm_8k), resampling.flush()])
    np.testing.assert_array_equal(first, second)
    assert resampling.samples_in == 2 * len(pcm_8k) // 2


def test_decoder_rejects_bad_settings() -> None:
    with pytest.raises(BadAudio) as info:
        PcmStreamDecoder(sample_rate=0)
    assert info.value.code == "bad_sample_rate"
    with pytest.raises(BadAudio) as info:
        PcmStreamDecoder(encoding="mulaw")  # type: ignore[arg-type]
    assert info.value.code == "bad_encoding"
