"""The OpenAI Realtime transcription route from a web page in Debian's Chromium.

A keyed gateway on the session mesh's Redis serves, as its control-panel folder, a page
that speaks the protocol itself (``tests/integration/pages/realtime.html``) and a speech
clip; the browser's own WebSocket streams the clip as base64 PCM16 with server VAD, as a
web voice agent does, and the test reads every event the page got.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import clip_named, error_rate, offline_transcript, start_routing_gateway
from tests.integration.conftest import Mesh
from tests.integration.test_panel_browser import page_results

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

KEY = "realtime-browser-key"
CLIP = clip_named("whisper-jfk.wav")
PAGE = Path(__file__).parent / "pages" / "realtime.html"
WER_MARGIN = 1.0


@pytest.fixture(scope="module")
def events(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    """Every event the page received (no JavaScript error allowed on the way)."""
    folder = tmp_path_factory.mktemp("realtime-page")
    shutil.copy(PAGE, folder / "index.html")
    shutil.copy(CLIP.path, folder / "clip.wav")
    env = mesh.joining_env(
        tmp_path_factory,
        VOICEMESH_GATEWAY_API_KEYS=json.dumps([KEY]),
        VOICEMESH_GATEWAY_CONTROL_PANEL_DIR=str(folder),
    )
    gateway = start_routing_gateway(env, tmp_path_factory.mktemp("realtime-page-logs"))
    try:
        found: list[dict[str, Any]] = page_results(
            f"{gateway.url}/?key={KEY}",
            tmp_path_factory.mktemp("chromium-realtime"),
            "window.results.events",
        )
    finally:
        gateway.stop()
    yield found


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == kind]


def test_the_page_gets_a_transcription_session_and_its_speech_events(
    events: list[dict[str, Any]],
) -> None:
    assert not of_type(events, "page_error"), events
    kinds = [e["type"] for e in events]
    assert kinds[0] == "session.created", kinds
    assert "session.updated" in kinds
    assert of_type(events, "input_audio_buffer.speech_started"), kinds
    committed = of_type(events, "input_audio_buffer.committed")
    assert committed and all(e.get("item_id") for e in committed), committed


def test_completed_transcripts_are_within_the_streaming_bound(
    events: list[dict[str, Any]],
) -> None:
    completed = of_type(events, "conversation.item.input_audio_transcription.completed")
    assert completed, [e["type"] for e in events]
    text = " ".join(e["transcript"] for e in completed)
    offline = error_rate(CLIP.text, offline_transcript(CLIP))
    assert error_rate(CLIP.text, text) <= offline + WER_MARGIN, text
    deltas = of_type(events, "conversation.item.input_audio_transcription.delta")
    assert deltas, "partials reach the page as deltas while the audio still arrives"


def test_an_event_the_route_does_not_serve_is_named_in_an_error(
    events: list[dict[str, Any]],
) -> None:
    errors = of_type(events, "error")
    assert any("response.create" in e["error"]["message"] for e in errors), errors
    assert all(e["error"]["type"] for e in errors), errors
