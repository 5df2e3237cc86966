"""The Wyoming adapter's pure parts: who may connect, audio conversion, transcript chunks,
sentences of streamed text, voice choice, and reading events off a byte stream."""

from __future__ import annotations

import asyncio
import json
from ipaddress import ip_network

import numpy as np
import pytest
from wyoming.tts import SynthesizeVoice

from gateway.wyoming_asr import (
    TranscriptDeltas,
    WyomingAudioFormat,
    core_audio,
    wyoming_language,
)
from gateway.wyoming_server import client_allowed, read_event
from gateway.wyoming_tts import SentenceBuffer, pick_voice
from voicemesh.errors import BadAudio, BadEvent, PayloadTooLarge, UnknownModel

pytestmark = pytest.mark.unit

LOOPBACK = [ip_network("127.0.0.0/8"), ip_network("::1/128")]
HOME = [ip_network("192.168.1.0/24"), ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("host", "networks", "allowed"),
    [
        ("127.0.0.1", LOOPBACK, True),
        ("127.8.9.10", LOOPBACK, True),
        ("::1", LOOPBACK, True),
        ("192.168.1.20", LOOPBACK, False),
        ("192.168.1.20", HOME, True),
        ("192.168.2.20", HOME, False),
        ("10.0.0.5", HOME, False),
        # An IPv4 client on a dual-stack socket is judged by its IPv4 address.
        ("::ffff:192.168.1.20", HOME, True),
        ("::ffff:10.0.0.5", HOME, False),
        ("fd00::42%eth0", HOME, True),
        ("fe80::1", HOME, False),
        ("not-an-address", LOOPBACK, False),
        ("", LOOPBACK, False),
        ("127.0.0.1", [], False),
    ],
)
def test_client_allowed_only_from_the_listed_networks(
    host: str, networks: list[object], allowed: bool
) -> None:
    assert client_allowed(host, networks) is allowed  # type: ignore[arg-type]


def test_language_codes_of_home_assistant_become_the_engines() -> None:
    assert wyoming_language("en-US") == "en"
    assert wyoming_language("de_DE") == "de"
    assert wyoming_language("fr") == "fr"
    assert wyoming_language("") is None
    assert wyoming_language(None) is None


def test_16_bit_audio_passes_through_in_frames_under_the_limit() -> None:
    fmt = WyomingAudioFormat(rate=48000, width=2, channels=2)
    start = fmt.start_message("en", "s1")
    assert (start.sample_rate, start.encoding, start.channels) == (48000, "pcm_s16le", 2)
    payload = bytes(range(256)) * 40  # 10240 bytes: 2560 stereo samples
    frames = core_audio(payload, fmt, max_frame_bytes=3000)
    assert b"".join(frames) == payload
    assert all(len(f) <= 3000 and len(f) % 4 == 0 for f in frames)


@pytest.mark.parametrize(
    ("width", "dtype", "scale", "offset"),
    [(1, np.uint8, 128, 128), (4, np.int32, 2**31, 0)],
)
def test_other_widths_become_float32_mono(width: int, dtype: type, scale: int, offset: int) -> None:
    fmt = WyomingAudioFormat(rate=22050, width=width, channels=2)
    start = fmt.start_message(None, "s1")
    assert (start.encoding, start.channels) == ("pcm_f32le", 1)
    left = np.array([0.5, -0.5, 0.25], dtype=np.float64)
    right = np.array([0.5, 0.5, -0.25], dtype=np.float64)
    interleaved = np.stack([left, right], axis=1).reshape(-1)
    raw = (interleaved * (scale - 1) + offset).round().astype(dtype).tobytes()
    (frame,) = core_audio(raw, fmt, max_frame_bytes=1 << 20)
    mono = np.frombuffer(frame, dtype="<f4")
    np.testing.assert_allclose(mono, (left + right) / 2, atol=2 / scale + 1e-6)


def test_24_bit_audio_is_read_signed() -> None:
    fmt = WyomingAudioFormat(rate=16000, width=3, channels=1)
    values = [0, 1 << 22, -(1 << 22), (1 << 23) - 1]
    raw = b"".join(v.to_bytes(3, "little", signed=True) for v in values)
    (frame,) = core_audio(raw, fmt, max_frame_bytes=1 << 20)
    np.testing.assert_allclose(np.frombuffer(frame, "<f4"), [0, 0.5, -0.5, 1.0], atol=1e-6)


def test_audio_formats_the_core_cannot_take_are_refused() -> None:
    for fmt in (
        WyomingAudioFormat(rate=4000, width=2, channels=1),
        WyomingAudioFormat(rate=16000, width=5, channels=1),
        WyomingAudioFormat(rate=16000, width=2, channels=0),
    ):
        with pytest.raises(BadAudio):
            fmt.check()
    with pytest.raises(BadAudio, match="whole samples"):
        core_audio(b"\0\0\0", WyomingAudioFormat(16000, 2, 1), max_frame_bytes=1024)


def test_transcript_chunks_append_stable_text_and_spell_the_transcript() -> None:
    deltas = TranscriptDeltas()
    chunks = [
        deltas.on_partial(""),
        deltas.on_partial("And so"),
        deltas.on_partial("And so"),  # nothing new
        deltas.on_partial("And so my  fellow"),
        deltas.on_final("And so my fellow Americans,"),
        deltas.on_partial("ask not"),
        deltas.on_final("ask not what your country can do for you."),
    ]
    sent = [c for c in chunks if c]
    assert sent == [
        "And so",
        " my fellow",
        " Americans,",
        " ask not",
        " what your country can do for you.",
    ]
    assert "".join(sent) == deltas.transcript
    assert (
        deltas.transcript == "And so my fellow Americans, ask not what your country can do for you."
    )


def test_a_final_that_revises_sent_text_adds_no_chunk_but_the_transcript_has_it() -> None:
    deltas = TranscriptDeltas()
    assert deltas.on_partial("I scream") == "I scream"
    assert deltas.on_final("Ice cream, please") is None
    assert deltas.transcript == "Ice cream, please"
    # The next utterance is not held back by the revision.
    assert deltas.on_final("Thanks.") is None
    assert deltas.transcript == "Ice cream, please Thanks."


def test_streamed_text_is_spoken_sentence_by_sentence() -> None:
    buffer = SentenceBuffer()
    assert buffer.add("Hello the") == []
    assert buffer.add("re. How are") == ["Hello there."]
    assert buffer.add(" you? I am fine") == ["How are you?"]
    assert buffer.add(", 3.5 degrees") == []  # a point inside a number ends nothing
    assert buffer.rest() == "I am fine, 3.5 degrees"
    assert buffer.rest() == ""


def test_full_width_marks_end_a_sentence_without_a_space() -> None:
    buffer = SentenceBuffer()
    assert buffer.add("\u4f60\u597d\u3002\u518d\u89c1") == ["\u4f60\u597d\u3002"]
    assert buffer.rest() == "\u518d\u89c1"


VOICES = [
    {"id": "en_GB-alan-medium", "language": "en_GB"},
    {"id": "en_US-joe-medium", "language": "en_US"},
    {"id": "de_DE-thorsten-medium", "language": "de_DE"},
]


def test_voice_by_name_then_by_language_then_the_default() -> None:
    assert pick_voice(None, VOICES) is None
    assert pick_voice(SynthesizeVoice(), VOICES) is None
    assert pick_voice(SynthesizeVoice(name="en_US-joe-medium"), VOICES) == "en_US-joe-medium"
    assert pick_voice(SynthesizeVoice(language="en-US"), VOICES) == "en_US-joe-medium"
    assert pick_voice(SynthesizeVoice(language="en"), VOICES) == "en_GB-alan-medium"
    assert pick_voice(SynthesizeVoice(language="de_AT"), VOICES) == "de_DE-thorsten-medium"
    with pytest.raises(UnknownModel, match="fr_FR"):
        pick_voice(SynthesizeVoice(language="fr_FR"), VOICES)


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_events_are_read_with_their_data_and_payload() -> None:
    extra = json.dumps({"width": 2, "channels": 1}).encode()
    header = {"type": "audio-chunk", "data": {"rate": 16000}, "data_length": len(extra)}
    header["payload_length"] = 4
    raw = json.dumps(header).encode() + b"\n" + extra + b"\x01\x00\x02\x00"
    event = await read_event(_reader(raw), max_bytes=1024)
    assert event is not None
    assert event.type == "audio-chunk"
    assert event.data == {"rate": 16000, "width": 2, "channels": 1}
    assert event.payload == b"\x01\x00\x02\x00"


async def test_bad_lines_are_bad_events_and_the_stream_goes_on() -> None:
    reader = _reader(b'not json\n[1, 2]\n{"data": {}}\n{"type": "describe"}\n')
    for _ in range(3):
        with pytest.raises(BadEvent):
            await read_event(reader, max_bytes=1024)
    event = await read_event(reader, max_bytes=1024)
    assert event is not None and event.type == "describe"
    assert await read_event(reader, max_bytes=1024) is None


async def test_an_event_over_the_size_limit_is_refused_before_it_is_read() -> None:
    raw = json.dumps({"type": "audio-chunk", "payload_length": 10_000}).encode() + b"\n"
    with pytest.raises(PayloadTooLarge):
        await read_event(_reader(raw), max_bytes=1024)
