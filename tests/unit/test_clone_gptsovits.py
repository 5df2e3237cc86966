"""The GPT-SoVITS client's pure parts: request body, WAV stream parsing, per-backend queue."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from voicemesh.clone.cache import cache_key
from voicemesh.clone.engines import CloneRequest
from voicemesh.clone.gptsovits import (
    BackendQueue,
    WavStreamReader,
    backend_language,
    tts_payload,
)
from voicemesh.errors import BackendTimeout, BadRequest, EngineUnavailable

pytestmark = pytest.mark.unit


def header(rate: int, size: int, bits: int = 16, channels: int = 1) -> bytes:
    return (
        b"RIFF"
        + struct.pack("<I", 36 + size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * 2 * channels, 2 * channels, bits)
        + b"data"
        + struct.pack("<I", size)
    )


def request(**changes: object) -> CloneRequest:
    values: dict[str, object] = {
        "text": "Hello.",
        "language": "en",
        "speed": 1.0,
        "reference_path": Path("/v/a.wav"),
        "reference_sha256": "ab" * 32,
        "prompt_text": "what the reference says",
        "prompt_language": "en",
        **changes,
    }
    return CloneRequest(**values)  # type: ignore[arg-type]


def test_payload_names_the_reference_by_hash_and_never_control_fields() -> None:
    body = tts_payload(request(language="zh-CN"), "/voices/abab.wav", streaming=True)
    assert body["ref_audio_path"] == "/voices/abab.wav"
    assert body["text_lang"] == "zh"
    assert body["prompt_lang"] == "en"
    assert body["media_type"] == "wav"
    assert body["streaming_mode"] is True
    assert not {"command", "weights_path"} & body.keys()


def test_unknown_language_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as info:
        backend_language("xx")
    assert info.value.code == "unsupported_language"


def test_wav_reader_split_anywhere_gives_the_same_pcm() -> None:
    pcm = bytes(range(200))
    whole = header(32000, len(pcm)) + pcm
    for cut in (1, 10, 43, 44, 45, 100):
        reader = WavStreamReader()
        out = reader.feed(whole[:cut]) + reader.feed(whole[cut:])
        assert reader.sample_rate == 32000
        assert out == pcm


def test_wav_reader_streaming_header_reads_to_the_end() -> None:
    reader = WavStreamReader()
    out = reader.feed(header(24000, 0) + b"\x01\x02") + reader.feed(b"\x03\x04")
    assert (reader.sample_rate, out) == (24000, b"\x01\x02\x03\x04")


def test_wav_reader_stops_at_the_declared_size() -> None:
    reader = WavStreamReader()
    assert reader.feed(header(16000, 4) + b"\x01\x02\x03\x04LIST....") == b"\x01\x02\x03\x04"


@pytest.mark.parametrize(
    "data", [b'{"message": "tts failed"}' + bytes(40), header(32000, 4, bits=32) + bytes(4)]
)
def test_wav_reader_refuses_what_it_cannot_pass_on(data: bytes) -> None:
    with pytest.raises(EngineUnavailable):
        WavStreamReader().feed(data)


def test_queue_serves_one_request_per_backend_and_times_out() -> None:
    async def scenario() -> None:
        queue = BackendQueue(queue_timeout_s=0.1)
        both = ["http://a", "http://b"]
        async with queue.claim(both) as first, queue.claim(both) as second:
            assert {first, second} == set(both)
            assert queue.busy("http://a") and queue.busy("http://b")
            with pytest.raises(BackendTimeout):
                async with queue.claim(both):
                    pass
        assert queue.depth() == 0
        with pytest.raises(EngineUnavailable):
            async with queue.claim([]):
                pass

    asyncio.run(scenario())


def test_cache_key_changes_with_everything_that_changes_the_audio() -> None:
    base = {
        "voice_sha256": "a",
        "text": "hi",
        "params": {"speed": 1.0},
        "engine": "e",
        "model_version": "m",
    }
    key = cache_key(**base)  # type: ignore[arg-type]
    assert key == cache_key(**base)  # type: ignore[arg-type]
    for field, value in (
        ("voice_sha256", "b"),
        ("text", "ho"),
        ("params", {"speed": 1.1}),
        ("engine", "f"),
        ("model_version", "n"),
    ):
        assert cache_key(**{**base, field: value}) != key  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("gpt", "cpu", "fallback", "expected"),
    [
        (True, True, True, ["gpt_sovits", "world_vits"]),
        (True, True, False, ["gpt_sovits"]),
        (False, True, False, ["world_vits"]),
        (False, True, True, ["world_vits"]),
        (True, False, True, ["gpt_sovits"]),
        (False, False, True, []),
    ],
)
def test_engine_order(gpt: bool, cpu: bool, fallback: bool, expected: list[str]) -> None:
    from types import SimpleNamespace

    from voicemesh.clone.state import engine_order

    gpt_engine = SimpleNamespace(name="gpt_sovits") if gpt else None
    cpu_engine = SimpleNamespace(name="world_vits") if cpu else None
    order = engine_order(gpt_engine, cpu_engine, fallback=fallback)  # type: ignore[arg-type]
    assert [engine.name for engine in order] == expected
