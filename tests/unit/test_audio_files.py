"""Decoding whole audio files and containers against the real speech clips in tests/data/speech."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from voicemesh.audio import float32_to_pcm16, resample, rms_dbfs
from voicemesh.audio_files import decode_audio_file, load_clip_16k, read_audio_file
from voicemesh.errors import BadAudio, PayloadTooLarge
from voicemesh.protocol import SAMPLE_RATE

pytestmark = pytest.mark.unit

SPEECH_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "speech"


def _manifest() -> dict[str, dict]:
    lines = (SPEECH_DIR / "manifest.jsonl").read_text().splitlines()
    return {entry["file"]: entry for entry in map(json.loads, filter(None, lines))}


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


def _aligned_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 64) -> float:
    """Pearson correlation of ``a`` and ``b`` at the lag (within max_lag) that fits best."""
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x = a[lag:] if lag >= 0 else a[: len(a) + lag]
        y = b[: len(x)] if lag >= 0 else b[-lag:][: len(x)]
        n = min(len(x), len(y))
        best = max(best, float(np.corrcoef(x[:n], y[:n])[0, 1]))
    return best


def _encode_with_av(samples: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Encode mono float32 samples into ``container`` with PyAV's ``codec`` encoder."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        pcm = np.frombuffer(float32_to_pcm16(samples), dtype="<i2")[None, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def _write_with_soundfile(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_decode_wav_is_exact(jfk: np.ndarray) -> None:
    data = (SPEECH_DIR / "whisper-jfk.wav").read_bytes()
    np.testing.assert_array_equal(decode_audio_file(data), jfk)


def test_decode_stereo_44k_wav_to_16k_mono(short_clip: np.ndarray) -> None:
    at_44k = resample(short_clip, SAMPLE_RATE, 44100)
    stereo = np.stack([at_44k, at_44k], axis=1)
    out = decode_audio_file(_write_with_soundfile(stereo, 44100, "WAV", "PCM_16"))
    assert abs(len(out) - len(short_clip)) <= 4
    assert _aligned_correlation(out, short_clip) > 0.99


def test_decode_flac(jfk: np.ndarray) -> None:
    out = decode_audio_file(_write_with_soundfile(jfk, SAMPLE_RATE, "FLAC", "PCM_16"))
    np.testing.assert_allclose(out, jfk, atol=1 / 32768)


def test_decode_ogg_vorbis(short_clip: np.ndarray) -> None:
    out = decode_audio_file(_write_with_soundfile(short_clip, SAMPLE_RATE, "OGG", "VORBIS"))
    assert abs(len(out) - len(short_clip)) <= 160
    assert _aligned_correlation(out, short_clip) > 0.95


@pytest.mark.parametrize(
    ("container", "codec", "rate"),
    [
        ("mp3", "libmp3lame", 16000),
        ("webm", "libopus", 48000),
        ("mp4", "aac", 16000),
    ],
)
def test_decode_compressed_formats(
    short_clip: np.ndarray, container: str, codec: str, rate: int
) -> None:
    encoded = _encode_with_av(resample(short_clip, SAMPLE_RATE, rate), rate, container, codec)
    out = decode_audio_file(encoded)
    assert out.dtype == np.float32 and out.ndim == 1
    # Codecs pad to whole frames; the length is right to within one codec frame.
    assert abs(len(out) - len(short_clip)) <= 2048
    assert _aligned_correlation(out, short_clip, max_lag=2048) > 0.9
    assert rms_dbfs(out) == pytest.approx(rms_dbfs(short_clip), abs=1.0)


def test_decode_to_another_target_rate(short_clip: np.ndarray) -> None:
    webm = _encode_with_av(short_clip, SAMPLE_RATE, "webm", "libopus")
    out = decode_audio_file(webm, target_rate=8000)
    assert abs(len(out) - len(short_clip) // 2) <= 1024
    wav = _write_with_soundfile(short_clip, SAMPLE_RATE, "WAV", "PCM_16")
    assert abs(len(decode_audio_file(wav, target_rate=8000)) - len(short_clip) // 2) <= 1


@pytest.mark.parametrize("container", ["wav", "webm"])
def test_too_long_audio_is_refused(jfk: np.ndarray, container: str) -> None:
    if container == "wav":
        data = _write_with_soundfile(jfk, SAMPLE_RATE, "WAV", "PCM_16")
    else:
        data = _encode_with_av(jfk, SAMPLE_RATE, "webm", "libopus")
    with pytest.raises(PayloadTooLarge) as info:
        decode_audio_file(data, max_seconds=5.0)
    assert info.value.code == "audio_too_long"
    assert "5 s" in info.value.message
    assert len(decode_audio_file(data, max_seconds=12.0)) > 10 * SAMPLE_RATE


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is a text file and not audio\n" * 50,
        np.random.default_rng(7).bytes(8192),
        b"RIFF\x24\x00\x00\x00WAVEfmt " + np.random.default_rng(8).bytes(4096),
        (SPEECH_DIR / "manifest.jsonl").read_bytes(),
    ],
    ids=["empty", "text", "random", "corrupt-wav", "jsonl"],
)
def test_undecodable_data_is_bad_audio(data: bytes) -> None:
    with pytest.raises(BadAudio) as info:
        decode_audio_file(data)
    assert info.value.code == "undecodable_audio"
    assert info.value.message


def test_truncated_webm_is_bad_audio_or_partial(short_clip: np.ndarray) -> None:
    webm = _encode_with_av(short_clip, SAMPLE_RATE, "webm", "libopus")
    try:
        out = decode_audio_file(webm[: len(webm) // 2])
    except BadAudio as exc:
        assert exc.code == "undecodable_audio"
    else:
        assert 0 < len(out) < len(short_clip)


def test_read_audio_file_and_load_clip_16k(tmp_path: Path, short_clip: np.ndarray) -> None:
    manifest = _manifest()
    samples, rate = read_audio_file(SPEECH_DIR / "pocketsphinx-goforward.wav")
    assert rate == SAMPLE_RATE
    assert len(samples) / rate == pytest.approx(
        manifest["pocketsphinx-goforward.wav"]["duration_s"], abs=0.01
    )

    flac_48k = tmp_path / "clip.flac"
    sf.write(flac_48k, resample(short_clip, SAMPLE_RATE, 48000), 48000)
    samples, rate = read_audio_file(flac_48k)
    assert rate == 48000 and samples.dtype == np.float32
    clip = load_clip_16k(flac_48k)
    assert abs(len(clip) - len(short_clip)) <= 4
    assert _aligned_correlation(clip, short_clip) > 0.99

    webm = tmp_path / "clip.webm"
    webm.write_bytes(_encode_with_av(short_clip, SAMPLE_RATE, "webm", "libopus"))
    samples, rate = read_audio_file(webm)
    assert rate == 48000  # Opus always decodes at 48 kHz
    assert abs(len(load_clip_16k(webm)) - len(short_clip)) <= 2048

    with pytest.raises(BadAudio):
        read_audio_file(SPEECH_DIR / "manifest.jsonl")
    with pytest.raises(FileNotFoundError):
        read_audio_file(tmp_path / "missing.wav")
