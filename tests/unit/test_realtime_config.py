"""OpenAI Realtime transcription sessions: both spellings read, refused options named."""

from __future__ import annotations

import base64

import pytest

from gateway.realtime_config import (
    ServerVad,
    TranscriptionConfig,
    audio_of,
    check_locked,
    parse_event,
    pcm_frames,
    read_update,
    session_object,
    unsupported,
)
from voicemesh.errors import BadAudio, BadEvent, FeatureUnavailable

pytestmark = pytest.mark.unit

DEFAULT = TranscriptionConfig()


def ga(**audio_input: object) -> dict[str, object]:
    """A GA ``session.update`` as ``client.realtime`` sends it."""
    session = {"type": "transcription", "audio": {"input": audio_input}}
    return {"type": "session.update", "session": session}


def beta(**session: object) -> dict[str, object]:
    """A beta ``transcription_session.update``."""
    return {"type": "transcription_session.update", "session": session}


def test_the_ga_spelling_sets_format_transcription_and_turn_detection() -> None:
    config = read_update(
        ga(
            format={"type": "audio/pcm", "rate": 16000},
            transcription={"model": "gpt-4o-transcribe", "language": "EN", "prompt": "VoiceMesh"},
            turn_detection={"type": "server_vad", "silence_duration_ms": 800, "threshold": 0.6},
        ),
        DEFAULT,
    )
    assert config == TranscriptionConfig(
        sample_rate=16000,
        model="gpt-4o-transcribe",
        language="en",
        prompt="VoiceMesh",
        turn_detection=ServerVad(threshold=0.6, prefix_padding_ms=500, silence_duration_ms=800),
    )


def test_the_beta_spelling_reads_the_same_and_null_turn_detection_means_manual() -> None:
    config = read_update(
        beta(
            input_audio_format="pcm16",
            input_audio_transcription={"model": "whisper-1", "language": "de"},
            turn_detection=None,
            input_audio_noise_reduction=None,
        ),
        DEFAULT,
    )
    assert (config.sample_rate, config.language, config.turn_detection) == (24000, "de", None)


def test_an_update_changes_only_what_it_names() -> None:
    manual = read_update(ga(turn_detection=None), DEFAULT)
    assert manual == TranscriptionConfig(turn_detection=None)
    assert read_update(beta(input_audio_transcription={"language": "fr"}), manual).language == "fr"


@pytest.mark.parametrize(
    ("event", "error", "code", "named"),
    [
        (ga(format={"type": "audio/pcmu"}), BadAudio, "bad_encoding", "audio/pcmu"),
        (beta(input_audio_format="g711_ulaw"), BadAudio, "bad_encoding", "g711_ulaw"),
        (ga(format={"type": "audio/pcm", "rate": 8000}), BadAudio, "bad_sample_rate", "8000"),
        (ga(turn_detection={"type": "semantic_vad"}), FeatureUnavailable, None, "semantic_vad"),
        (ga(turn_detection={"threshold": 1.5}), BadEvent, None, "threshold"),
        (ga(turn_detection={"silence_duration_ms": -1}), BadEvent, None, "silence_duration_ms"),
        (ga(noise_reduction={"type": "near_field"}), FeatureUnavailable, None, "noise_reduction"),
        (ga(transcription={"model": ""}), BadEvent, None, "model"),
        (ga(transcription={"keywords": ["mesh"]}), FeatureUnavailable, None, "keywords"),
        (ga(transcription=None), BadEvent, None, "cannot be turned off"),
        (ga(speed=1.0), BadEvent, None, "session.audio.input.speed"),
        (beta(voice="alloy"), BadEvent, None, "session.voice"),
        (
            {"type": "session.update", "session": {"type": "realtime"}},
            FeatureUnavailable,
            None,
            "'realtime'",
        ),
        ({"type": "session.update", "session": "x"}, BadEvent, None, "must be an object"),
    ],
)
def test_what_cannot_be_served_is_refused_with_a_reason(
    event: dict[str, object], error: type[Exception], code: str | None, named: str
) -> None:
    with pytest.raises(error) as caught:
        read_update(event, DEFAULT)
    assert named in str(caught.value)
    if code is not None:
        assert getattr(caught.value, "code", None) == code


def test_engine_settings_are_fixed_once_audio_flows() -> None:
    check_locked(DEFAULT, TranscriptionConfig())
    with pytest.raises(BadEvent, match="fixed once audio"):
        check_locked(DEFAULT, TranscriptionConfig(language="en"))
    with pytest.raises(BadEvent):
        check_locked(DEFAULT, TranscriptionConfig(turn_detection=None))


def test_the_core_start_carries_format_language_prompt_and_changed_vad_only() -> None:
    start = TranscriptionConfig(language="en", prompt="Kubernetes").start_message("s1")
    assert (start.sample_rate, start.encoding, start.language, start.prompt) == (
        24000,
        "pcm_s16le",
        "en",
        "Kubernetes",
    )
    assert (start.vad_threshold, start.min_silence_s, start.preroll_s) == (None, None, None)
    tuned = TranscriptionConfig(turn_detection=ServerVad(0.7, 300, 900)).start_message("s1")
    assert (tuned.vad_threshold, tuned.min_silence_s, tuned.preroll_s) == (0.7, 0.9, 0.3)


def test_the_session_is_shown_in_the_clients_spelling() -> None:
    config = TranscriptionConfig(sample_rate=16000, language="en", turn_detection=None)
    shown = session_object(config, "abc", beta=False)
    assert shown["type"] == "transcription" and shown["id"] == "sess_abc"
    audio_input = shown["audio"]["input"]
    assert audio_input["format"] == {"type": "audio/pcm", "rate": 16000}
    assert audio_input["transcription"]["language"] == "en"
    assert audio_input["turn_detection"] is None
    old = session_object(TranscriptionConfig(), "abc", beta=True)
    assert old["input_audio_format"] == "pcm16"
    assert old["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 500,
        "silence_duration_ms": 500,
    }
    # What is shown reads back as the same session.
    assert read_update({"type": "session.update", "session": shown}, DEFAULT) == config


def test_events_must_be_json_objects_with_a_type() -> None:
    assert parse_event('{"type": "input_audio_buffer.commit"}')["type"] == (
        "input_audio_buffer.commit"
    )
    for text in ("not json", "[1]", '{"audio": "AAAA"}', '{"type": 3}'):
        with pytest.raises(BadEvent):
            parse_event(text)


def test_an_unsupported_event_type_is_named() -> None:
    error = unsupported("response.create")
    assert error.code == "unsupported_event" and "'response.create'" in error.message


def test_appended_audio_is_base64_and_split_into_whole_samples() -> None:
    pcm = bytes(range(10))
    assert audio_of({"audio": base64.b64encode(pcm).decode()}) == pcm
    with pytest.raises(BadAudio):
        audio_of({"audio": "not base64!"})
    with pytest.raises(BadEvent):
        audio_of({})
    frames, carry = pcm_frames(b"", bytes(7), max_frame_bytes=4)
    assert [len(f) for f in frames] == [4, 2] and carry == bytes(1)
    frames, carry = pcm_frames(carry, bytes(3), max_frame_bytes=4)
    assert [len(f) for f in frames] == [4] and carry == b""
