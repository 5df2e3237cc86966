"""Protocol messages: parsing client control frames and serialising server messages."""

from __future__ import annotations

import json

import pytest

from voicemesh.errors import BadRequest
from voicemesh.protocol import (
    SERVER_MESSAGE,
    FailoverMessage,
    FlushMessage,
    StartMessage,
    StopMessage,
    parse_control,
)

pytestmark = pytest.mark.unit


def test_seed_flush_text_is_a_flush() -> None:
    assert isinstance(parse_control("<flush>"), FlushMessage)
    assert isinstance(parse_control(" <flush>\n"), FlushMessage)


def test_start_message_defaults_and_values() -> None:
    start = parse_control('{"type":"start","sample_rate":48000,"encoding":"pcm_f32le"}')
    assert isinstance(start, StartMessage)
    assert (start.sample_rate, start.encoding, start.channels) == (48000, "pcm_f32le", 1)
    assert isinstance(parse_control('{"type":"stop"}'), StopMessage)


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "[1,2]",
        '{"no_type": 1}',
        '{"type":"dance"}',
        '{"type":"start","sample_rate":3}',
        '{"type":"start","encoding":"mp3"}',
        '{"type":"start","channels":6}',
    ],
)
def test_bad_control_messages_raise_bad_request(text: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_control(text)
    assert info.value.code == "bad_message"
    assert info.value.status_code == 400


def test_failover_message_uses_from_key() -> None:
    payload = json.loads(
        FailoverMessage(**{"from": "a"}, to="b", replayed_ms=120.0, reason="closed").dumps()
    )
    assert payload == {
        "type": "failover",
        "from": "a",
        "to": "b",
        "replayed_ms": 120.0,
        "reason": "closed",
    }


def test_server_messages_round_trip_by_type() -> None:
    final = {
        "type": "final",
        "utterance_id": 0,
        "text": "hi",
        "start": 0.0,
        "end": 1.0,
        "engine": "faster-whisper",
        "device": "cpu",
        "model": "base",
        "latency_ms": 3.0,
    }
    parsed = SERVER_MESSAGE.validate_python(final)
    assert parsed.type == "final" and parsed.reason == "endpoint"
