"""``client/js/voicemesh.js`` in Debian's Chromium against the real mesh, through its test page.

A keyed gateway on the session mesh's Redis serves, as its control-panel folder, the test
page (``client/js/test.html``), the module and a speech clip; the page calls every method
and leaves what came back in ``window.results``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import REPO, DropRelay, clip_named, error_rate, start_routing_gateway
from tests.integration.conftest import Mesh
from tests.integration.test_panel_browser import page_results

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

KEY = "js-client-key"
CLIP = clip_named("pocketsphinx-librivox-0880.wav")
JS = REPO / "client" / "js"
WER_LIMIT = 25.0


@pytest.fixture(scope="module")
def page_url(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A keyed gateway serving the test page, the module and the clip; the page's URL (with
    a relay that cuts a stream's first connection, for the resume check)."""
    folder = tmp_path_factory.mktemp("js-test-page")
    shutil.copy(JS / "test.html", folder / "index.html")
    shutil.copy(JS / "voicemesh.js", folder / "voicemesh.js")
    shutil.copy(CLIP.path, folder / "clip.wav")
    env = mesh.joining_env(
        tmp_path_factory,
        VOICEMESH_GATEWAY_API_KEYS=json.dumps([KEY]),
        VOICEMESH_GATEWAY_CONTROL_PANEL_DIR=str(folder),
    )
    gateway = start_routing_gateway(env, tmp_path_factory.mktemp("js-client-logs"))
    try:
        with DropRelay(f"ws://127.0.0.1:{gateway.port}", drop_after_s=1.5) as relay:
            yield f"{gateway.url}/?key={KEY}&drop=http://127.0.0.1:{relay.port}"
            assert relay.connections == ["dropped", "kept"]
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def results(page_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the test page's calls returned (no JavaScript error allowed on the way)."""
    found: dict[str, Any] = page_results(page_url, tmp_path_factory.mktemp("chromium-js-client"))
    return found


def test_transcribe(results: dict[str, Any]) -> None:
    body = results["transcribe"]
    assert error_rate(CLIP.text, body["text"]) <= WER_LIMIT, body
    assert body["segments"] >= 1 and body["engine"] == "faster-whisper/cpu"


def test_synthesize_and_compare(results: dict[str, Any]) -> None:
    speech = results["synthesize"]
    assert speech["riff"] == "RIFF" and speech["sampleRate"] == 22050, speech
    assert speech["voice"] == "en_US-joe-medium" and 0.5 < speech["duration"] < 5
    comparison = results["compareVoices"]
    assert comparison["results"] == 2 and "Rule:" in comparison["reason"], comparison
    assert comparison["bytes"] > 1000


def test_status_and_its_live_feed(results: dict[str, Any]) -> None:
    assert results["getStatus"]["service"] == "gateway", results["getStatus"]
    assert "stt_cpu_ws" in results["getStatus"]["services"]
    feed = results["streamStatus"]
    assert feed["type"] == "status_update" and "stt_cpu_ws" in feed["services"], feed


def test_stream_transcription_of_a_buffer(results: dict[str, Any]) -> None:
    stream = results["streamTranscription"]
    assert stream["first"] == "ready", stream
    assert error_rate(CLIP.text, stream["text"]) <= WER_LIMIT, stream
    ends = [f["end"] for f in stream["finals"]]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(CLIP.duration_s, abs=0.5)


def test_a_dropped_stream_resumes_its_session(results: dict[str, Any]) -> None:
    stream = results["streamResumed"]
    types = stream.get("types", [])
    assert types.count("reconnect") == 1 and types.count("ready") == 2, stream
    resumed = stream["resumed"]
    assert resumed and resumed["received_s"] > 0.5, stream
    finals = stream["finals"]
    assert [f["index"] for f in finals] == list(range(len(finals))), finals  # none lost or twice
    ends = [f["end"] for f in finals]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(CLIP.duration_s, abs=0.5)
    assert error_rate(CLIP.text, stream["text"]) <= WER_LIMIT, stream


def test_errors_are_typed(results: dict[str, Any]) -> None:
    wrong = results["wrongKey"]
    assert wrong["transcribe"] == {"refused": True, "code": "unauthorized", "status": 401}
    assert wrong["stream"] == {"refused": True, "code": "unauthorized", "status": 4401}
    assert results["badInput"] == {"refused": True, "code": "validation_error", "status": 422}
