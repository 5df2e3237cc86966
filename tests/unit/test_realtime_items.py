"""The session core's messages as OpenAI input-transcription events (no I/O)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gateway.realtime_items import TranscriptionItems, error_event

pytestmark = pytest.mark.unit

DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"


def items(*, vad: bool = True) -> TranscriptionItems:
    counter = itertools.count(1)
    return TranscriptionItems(vad=vad, make_id=lambda prefix: f"{prefix}_{next(counter)}")


def vad(event: str, t: float, source: str = "engine") -> dict[str, Any]:
    return {"type": "vad", "event": event, "t": t, "source": source}


def partial(stable: str, start: float, end: float) -> dict[str, Any]:
    return {
        "type": "partial",
        "text": stable + " ...",
        "stable_text": stable,
        "start": start,
        "end": end,
        "utterance_id": 0,
    }


def final(text: str, start: float, end: float) -> dict[str, Any]:
    return {"type": "final", "text": text, "start": start, "end": end, "utterance_id": 0}


def feed(tracker: TranscriptionItems, *messages: dict[str, Any]) -> list[dict[str, Any]]:
    return [event for m in messages for event in tracker.on_message(m)]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].rsplit(".", 1)[-1] for e in events]


def test_a_turn_under_server_vad_starts_streams_deltas_and_completes() -> None:
    tracker = items()
    events = feed(
        tracker,
        vad("speech_start", 0.6),
        vad("speech_start", 0.62, source="detector"),  # the detector's: not a second turn
        partial("", 0.1, 1.0),
        partial("and so", 0.1, 1.8),
        partial("and so my fellow", 0.1, 2.6),
        vad("speech_end", 3.0),
        final("And so my fellow Americans.", 0.1, 3.2),
        {"type": "failover", "from": "a", "to": "b", "replayed_ms": 10, "reason": "x"},
    )
    assert kinds(events) == [
        "speech_started",
        "delta",
        "delta",
        "speech_stopped",
        "committed",
        "completed",
    ]
    item = events[0]["item_id"]
    assert all(e["item_id"] == item for e in events)
    assert events[0]["audio_start_ms"] == 600 and events[3]["audio_end_ms"] == 3200
    assert [e["delta"] for e in events if e["type"] == DELTA] == ["and so", " my fellow"]
    assert events[4]["previous_item_id"] is None
    assert events[5]["transcript"] == "And so my fellow Americans."
    assert events[5]["usage"] == {"type": "duration", "seconds": 3.1}
    assert len({e["event_id"] for e in events}) == len(events)


def test_the_next_turn_is_a_new_item_after_the_last() -> None:
    tracker = items()
    first = feed(tracker, vad("speech_start", 0.5), final("One.", 0.4, 1.5))
    second = feed(tracker, vad("speech_start", 3.0), final("Two.", 2.9, 4.0))
    assert first[0]["item_id"] != second[0]["item_id"]
    committed = next(e for e in second if e["type"] == "input_audio_buffer.committed")
    assert committed["previous_item_id"] == first[0]["item_id"]


def test_a_failover_replay_continues_the_open_item() -> None:
    """The new backend hears the audio since the last final again: same item, one turn."""
    tracker = items()
    events = feed(
        tracker,
        vad("speech_start", 1.0),
        partial("the birch canoe", 0.9, 2.0),
        # the backend died; the next one replays from 0.9 s and starts over
        vad("speech_start", 1.0),
        partial("the birch", 0.9, 1.6),
        partial("the birch canoe slid", 0.9, 2.6),
        final("The birch canoe slid on the smooth planks.", 0.9, 4.0),
    )
    assert kinds(events).count("speech_started") == 1
    assert len({e["item_id"] for e in events if "item_id" in e}) == 1
    deltas = [e["delta"] for e in events if e["type"] == DELTA]
    assert deltas == ["the birch canoe", " slid"]
    assert events[-1]["transcript"] == "The birch canoe slid on the smooth planks."


def test_manual_turns_gather_finals_until_the_commits_final() -> None:
    tracker = items(vad=False)
    events = feed(
        tracker,
        vad("speech_start", 0.5),
        final("First part.", 0.4, 2.0),
        vad("speech_start", 3.0),
        partial("second", 2.9, 3.6),
    )
    assert "speech_started" not in kinds(events)
    committed, item = tracker.commit(4.0)
    assert kinds(committed) == ["committed"] and item is not None
    assert tracker.settle(item) == []  # speech before the commit: its final is owed
    done = feed(tracker, final("Second part.", 2.9, 4.0))
    assert kinds(done)[-1] == "completed"
    assert done[-1]["transcript"] == "First part. Second part."
    assert {e["item_id"] for e in events + committed + done} == {item.id}
    assert tracker.settle(item) == []  # already completed


def test_a_manual_commit_after_the_last_final_settles_without_waiting_for_one() -> None:
    tracker = items(vad=False)
    feed(tracker, vad("speech_start", 0.5), final("Hello.", 0.4, 1.5))
    _, item = tracker.commit(3.0)
    assert item is not None
    settled = tracker.settle(item)
    assert kinds(settled) == ["completed"] and settled[0]["transcript"] == "Hello."


def test_a_forced_settle_completes_an_owed_item_with_what_it_has() -> None:
    tracker = items(vad=False)
    feed(tracker, vad("speech_start", 0.5))
    _, item = tracker.commit(1.0)
    assert item is not None
    assert tracker.settle(item) == []
    assert tracker.settle(item, force=True)[0]["transcript"] == ""


def test_commit_under_server_vad_waits_for_the_flushed_final() -> None:
    tracker = items()
    feed(tracker, vad("speech_start", 0.5))
    assert tracker.commit(1.0) == ([], None)
    assert kinds(feed(tracker, final("Hi.", 0.4, 1.0)))[-1] == "completed"


def test_cleared_audio_never_completes_and_later_speech_does() -> None:
    tracker = items()
    started = feed(tracker, vad("speech_start", 0.5), partial("oops", 0.4, 1.2))
    assert kinds(tracker.clear(1.5)) == ["cleared"]
    # The flush the clear sent finalizes the cleared speech: swallowed.
    assert feed(tracker, final("Oops.", 0.4, 1.5), partial("late", 0.4, 1.4)) == []
    later = feed(tracker, vad("speech_start", 2.0), final("Again.", 1.9, 3.0))
    assert kinds(later) == ["speech_started", "delta", "speech_stopped", "committed", "completed"]
    assert later[0]["item_id"] != started[0]["item_id"]
    assert later[-1]["transcript"] == "Again."


def test_errors_have_openais_shape() -> None:
    event = error_event("bad_event", "nope", client_event_id="evt_1", make_id=lambda p: f"{p}_9")
    assert event == {
        "type": "error",
        "event_id": "event_9",
        "error": {
            "type": "invalid_request_error",
            "code": "bad_event",
            "message": "nope",
            "param": None,
            "event_id": "evt_1",
        },
    }
    assert error_event("no_backend", "down")["error"]["type"] == "server_error"
