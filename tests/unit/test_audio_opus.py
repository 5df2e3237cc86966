"""Opus on the streaming path: one raw packet per frame, encoded and decoded with libopus."""

from __future__ import annotations

import numpy as np
import pytest

from tests.harness import clip_named
from voicemesh.audio import OpusStreamDecoder, OpusStreamEncoder, PcmStreamDecoder, stream_decoder
from voicemesh.audio_files import load_clip_16k
from voicemesh.errors import BadAudio, PayloadTooLarge
from voicemesh.protocol import StartMessage, parse_control

pytestmark = pytest.mark.unit


def _round_trip(audio: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    encoder = OpusStreamEncoder()
    packets = encoder.encode(audio[:1234]) + encoder.encode(audio[1234:]) + encoder.flush()
    decoder = stream_decoder(encoding="opus")
    out = np.concatenate([decoder.decode(p) for p in packets] + [decoder.flush()])
    return packets, out


def _snr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    """SNR after aligning for the codec's look-ahead."""
    corr = np.correlate(decoded[:32000], reference[:16000], mode="valid")
    lag = int(np.argmax(corr))
    aligned = decoded[lag : lag + reference.size]
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - aligned) ** 2)))


def test_speech_survives_an_opus_round_trip() -> None:
    audio = load_clip_16k(clip_named("whisper-jfk.wav").path)
    packets, out = _round_trip(audio)
    # One 20 ms packet per 320 samples, ~24 kbit/s.
    assert abs(len(packets) - audio.size / 320) <= 3
    assert 30 < np.mean([len(p) for p in packets]) < 90
    assert abs(out.size - audio.size) < 16000 * 0.05
    assert _snr_db(audio, out) > 8.0


def test_stereo_opus_is_mixed_to_mono() -> None:
    decoder = OpusStreamDecoder(channels=2)
    assert decoder.channels == 2
    assert decoder.decode(b"").size == 0
    with pytest.raises(BadAudio) as error:
        OpusStreamDecoder(channels=3)
    assert error.value.code == "bad_channels"


def test_a_bad_packet_is_refused_and_the_stream_goes_on() -> None:
    audio = load_clip_16k(clip_named("whisper-jfk.wav").path)[:16000]
    encoder = OpusStreamEncoder()
    packets = encoder.encode(audio) + encoder.flush()
    decoder = OpusStreamDecoder()
    first = [decoder.decode(p) for p in packets[:10]]
    with pytest.raises(BadAudio) as error:
        decoder.decode(b"\xff\xfe not an opus packet")
    assert error.value.code == "bad_opus_packet"
    rest = [decoder.decode(p) for p in packets[10:]]
    total = sum(x.size for x in first + rest) + decoder.flush().size
    assert abs(total - len(packets) * 320) < 400


def test_oversized_packet_is_refused() -> None:
    decoder = OpusStreamDecoder(max_frame_bytes=100)
    with pytest.raises(PayloadTooLarge) as error:
        decoder.decode(b"\x00" * 101)
    assert error.value.code == "frame_too_large"


def test_stream_decoder_picks_by_encoding() -> None:
    assert isinstance(stream_decoder(encoding="pcm_f32le", sample_rate=8000), PcmStreamDecoder)
    assert isinstance(stream_decoder(encoding="opus"), OpusStreamDecoder)
    with pytest.raises(BadAudio) as error:
        stream_decoder(encoding="mulaw")
    assert error.value.code == "bad_encoding" and "opus" in error.value.message


def test_start_message_accepts_opus() -> None:
    start = parse_control('{"type":"start","encoding":"opus","sample_rate":48000}')
    assert isinstance(start, StartMessage) and start.encoding == "opus"


def test_encoder_refuses_rates_opus_cannot_take() -> None:
    with pytest.raises(BadAudio):
        OpusStreamEncoder(sample_rate=44100)
