"""``voicemesh.client`` against the running mesh: every method, typed errors, streaming,
and every Python example of ``docs/client.md`` and the README.

A keyed gateway and a ``tts_clone`` replica join the session mesh's Redis, so behind
the client are the real CPU Whisper service, the speech detector, ``tts_vits`` with the
bundled Piper voice and the CPU cloning engine, as they register themselves.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from tests.harness import (
    REPO,
    SPEECH_DIR,
    ServiceProcess,
    clip_named,
    dropping_proxy,
    error_rate,
    free_port,
    start_routing_gateway,
)
from tests.integration.conftest import Mesh
from voicemesh.audio import resample
from voicemesh.audio_files import load_clip_16k
from voicemesh.client import (
    AsyncVoiceMeshClient,
    BadInputError,
    ConflictError,
    FinalMessage,
    NotFoundError,
    ReadyMessage,
    ReconnectEvent,
    StreamEvent,
    UnauthorizedError,
    VoiceMeshClient,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY = "python-client-key"
JFK = clip_named("whisper-jfk.wav")
SHORT = clip_named("pocketsphinx-librivox-0880.wav")
LONGER = clip_named("pocketsphinx-librivox-0870.wav")
REFERENCE = clip_named("pocketsphinx-librivox-0870.wav")
JOE = "en_US-joe-medium"
WER_LIMIT = 15.0
STREAM_WER_LIMIT = 25.0
"""A stream's finals against the reference: at most 2 of the short clip's 8 words wrong."""


@pytest.fixture(scope="module")
def gateway_url(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A keyed gateway and a tts_clone replica on the mesh's Redis, once both route."""
    logs = tmp_path_factory.mktemp("python-client")
    env = mesh.joining_env(
        tmp_path_factory,
        VOICEMESH_GATEWAY_API_KEYS=json.dumps([KEY]),
        VOICEMESH_TTS_CLONE_KEY_PREFIX=f"pyclient{free_port()}",
    )
    clone = ServiceProcess("tts_clone", free_port(), env, logs).start()
    gateway = None
    try:
        clone.wait_healthy()
        gateway = start_routing_gateway(env, logs)
        deadline = time.monotonic() + 60
        while not httpx.get(f"{gateway.url}/health", timeout=5).json()["replicas"].get("tts_clone"):
            if time.monotonic() > deadline:
                pytest.fail(f"tts_clone never registered:\n{clone.log_tail()}")
            time.sleep(0.2)
        yield gateway.url
    finally:
        if gateway is not None:
            gateway.stop()
        clone.stop()


@pytest.fixture
def vm(gateway_url: str) -> Iterator[VoiceMeshClient]:
    with VoiceMeshClient(gateway_url, api_key=KEY) as client:
        yield client


def finals_of(events: list[StreamEvent]) -> list[FinalMessage]:
    return [e for e in events if isinstance(e, FinalMessage)]


def transcript(events: list[StreamEvent]) -> str:
    return " ".join(f.text for f in finals_of(events)).strip()


# ---------------------------------------------------------------------- ASR


def test_transcribe_a_file_into_a_typed_transcript(vm: VoiceMeshClient) -> None:
    result = vm.transcribe(JFK.path, model="base", language="en")
    assert error_rate(JFK.text, result.text) <= WER_LIMIT, result.text
    assert result.model == "base" and result.language == "en"
    assert result.duration_seconds == pytest.approx(JFK.duration_s, abs=0.05)
    assert result.confidence is not None and 0 < result.confidence <= 1
    assert result.segments and all(
        0 <= s.start_time <= s.end_time <= JFK.duration_s + 0.5 for s in result.segments
    )
    assert result.metadata.engine == "faster-whisper/cpu" and result.metadata.failovers == 0
    # Bytes and a file object upload the same way as a path.
    with open(SHORT.path, "rb") as handle:
        from_file = vm.transcribe(handle, language="en")
    from_bytes = vm.transcribe(SHORT.path.read_bytes(), language="en")
    assert from_file.text == from_bytes.text
    assert error_rate(SHORT.text, from_bytes.text) <= WER_LIMIT


def test_transcribe_text_answers_subtitles(vm: VoiceMeshClient) -> None:
    srt = vm.transcribe_text(SHORT.path, "srt", language="en")
    lines = srt.splitlines()
    assert lines[0] == "1" and "-->" in lines[1], srt
    assert error_rate(SHORT.text, " ".join(lines[2:])) <= WER_LIMIT
    models = vm.asr_models()
    assert models["default"] == "base"


def test_bad_input_and_unknown_models_raise_typed_errors(vm: VoiceMeshClient) -> None:
    with pytest.raises(BadInputError) as diarization:
        vm.transcribe(SHORT.path, enable_diarization=True)
    error = diarization.value
    assert (error.status, error.code) == (422, "feature_unavailable")
    assert error.request_id and "diarization" in error.message
    with pytest.raises(BadInputError) as undecodable:
        vm.transcribe(b"this is not audio" * 100)
    assert undecodable.value.code == "undecodable_audio"
    with pytest.raises(NotFoundError) as unknown:
        vm.transcribe(SHORT.path, model="no-such-model")
    assert unknown.value.code == "unknown_model" and "base" in unknown.value.message
    with pytest.raises(BadInputError) as loud:
        vm.synthesize("Too loud.", volume_db=30)
    assert (loud.value.status, loud.value.code) == (422, "validation_error")
    with pytest.raises(NotFoundError) as voice:
        vm.synthesize("Who?", voice_id="no-such-voice")
    assert voice.value.code == "unknown_voice"


async def test_a_wrong_key_is_unauthorized_on_every_interface(gateway_url: str) -> None:
    async with AsyncVoiceMeshClient(gateway_url, api_key="not-a-key") as wrong:
        with pytest.raises(UnauthorizedError) as http:
            await wrong.transcribe(SHORT.path)
        assert (http.value.status, http.value.code) == (401, "unauthorized")
        with pytest.raises(UnauthorizedError) as stream:
            async for _ in wrong.stream(SHORT.path):
                pass
        assert stream.value.status == 4401
        with pytest.raises(UnauthorizedError):
            async for _ in wrong.stream_status():
                pass
        with pytest.raises(UnauthorizedError):
            await wrong.status()


# ---------------------------------------------------------------------- streaming


async def test_stream_a_file(gateway_url: str) -> None:
    async with AsyncVoiceMeshClient(gateway_url, api_key=KEY) as vm:
        events = [e async for e in vm.stream(SHORT.path, language="en")]
    assert isinstance(events[0], ReadyMessage) and events[0].engine
    finals = finals_of(events)
    assert finals and finals[-1].reason == "stop"
    assert error_rate(SHORT.text, transcript(events)) <= STREAM_WER_LIMIT, transcript(events)
    assert finals[-1].end == pytest.approx(SHORT.duration_s, abs=0.5)


def test_stream_a_numpy_array_at_another_rate(vm: VoiceMeshClient) -> None:
    audio = load_clip_16k(SHORT.path)
    at_8k = resample(audio, 16000, 8000)
    events = list(vm.stream(at_8k, sample_rate=8000, language="en"))
    assert error_rate(SHORT.text, transcript(events)) <= STREAM_WER_LIMIT, transcript(events)
    pcm16 = (audio * 32767).astype(np.int16)
    events = list(vm.stream(pcm16, language="en"))
    assert error_rate(SHORT.text, transcript(events)) <= STREAM_WER_LIMIT, transcript(events)


async def test_stream_live_frames_from_an_async_iterator(gateway_url: str) -> None:
    pcm = (load_clip_16k(SHORT.path) * 32767).astype("<i2")

    async def microphone() -> AsyncIterator[bytes]:
        for i in range(0, pcm.size, 640):  # 40 ms frames of PCM16 bytes
            yield pcm[i : i + 640].tobytes()

    async with AsyncVoiceMeshClient(gateway_url, api_key=KEY) as vm:
        events = [e async for e in vm.stream(microphone(), language="en")]
    assert error_rate(SHORT.text, transcript(events)) <= STREAM_WER_LIMIT, transcript(events)


async def test_a_dropped_connection_resumes_its_session(mesh: Mesh) -> None:
    async with (
        dropping_proxy(mesh.ws_url, drop_after_s=3.0) as (url, connections),
        AsyncVoiceMeshClient(url.removesuffix("/ws/transcribe").replace("ws://", "http://")) as vm,
    ):
        events = [e async for e in vm.stream(LONGER.path, language="en", realtime=True)]
    assert connections == ["dropped", "kept"]
    reconnects = [e for e in events if isinstance(e, ReconnectEvent)]
    assert len(reconnects) == 1
    reconnect = reconnects[0]
    assert reconnect.attempt == 1 and reconnect.previous_session_id
    # The server session went on: the client sent what followed the audio the gateway
    # held, and its times need no shift.
    assert reconnect.resumed and reconnect.lost_audio_s == 0 and reconnect.offset_s == 0
    assert reconnect.replayed_s <= 2.0
    assert [type(e).__name__ for e in events].count("ReadyMessage") == 2
    assert [type(e).__name__ for e in events].count("ResumedMessage") == 1
    finals = finals_of(events)
    assert [f.index for f in finals] == list(range(len(finals)))  # none lost or repeated
    assert [f.start for f in finals] == sorted(f.start for f in finals)
    assert finals[-1].end > LONGER.duration_s - 1.5  # times continue across the reconnect
    assert error_rate(LONGER.text, transcript(events)) <= 20.0, transcript(events)


# ---------------------------------------------------------------------- TTS


def test_synthesize_whole_and_streamed(vm: VoiceMeshClient) -> None:
    speech = vm.synthesize("Hello from the Python client.", voice_id=JOE, speed=1.1)
    audio, rate = soundfile.read(io.BytesIO(speech.audio))
    assert speech.media_type.startswith("audio/wav") and speech.voice == JOE
    assert rate == speech.sample_rate == 22050
    assert speech.duration_seconds == pytest.approx(audio.size / rate, abs=0.05)
    assert speech.rtf is not None and speech.rtf > 0
    chunks = list(
        vm.synthesize_stream("First sentence. And a second one.", voice_id=JOE, format="pcm")
    )
    pcm = b"".join(chunks)
    assert len(chunks) >= 1 and len(pcm) % 2 == 0 and len(pcm) / 2 / 22050 > 1.0


def test_compare_voices_then_fetch_the_preferred_audio(vm: VoiceMeshClient) -> None:
    comparison = vm.compare_voices(
        "Which one sounds better?",
        [JOE, {"voice_id": JOE, "speed": 1.3}],
        metrics=["rtf", "latency_ms"],
    )
    assert len(comparison.results) == 2
    assert comparison.recommendation.for_ == "rtf" and "Rule:" in comparison.recommendation.reason
    preferred = comparison.preferred
    assert preferred is not None and preferred.metrics.rtf is not None
    audio, rate = soundfile.read(io.BytesIO(vm.fetch_audio(preferred.audio_url)))
    assert rate == 22050 and audio.size / rate == pytest.approx(
        preferred.metrics.duration_seconds, abs=0.05
    )


def test_clone_a_voice_speak_with_it_and_delete_it(vm: VoiceMeshClient) -> None:
    with pytest.raises(BadInputError) as refused:
        vm.clone_voice(REFERENCE.path, "no consent", consent=False, prompt_text=REFERENCE.text)
    assert refused.value.code == "consent_required"
    voice = vm.clone_voice(
        Path(SPEECH_DIR / REFERENCE.file),
        "narrator",
        consent=True,
        prompt_text=REFERENCE.text,
        language="en",
    )
    assert voice.voice_id.startswith("v_") and voice.name == "narrator"
    assert voice.voice_id in [v.voice_id for v in vm.cloned_voices()]
    speech = vm.synthesize("See you tomorrow.", voice_id=voice.voice_id)
    audio, rate = soundfile.read(io.BytesIO(speech.audio))
    assert 0.5 < audio.size / rate < 5.0
    vm.delete_cloned_voice(voice.voice_id)
    with pytest.raises(NotFoundError) as gone:
        vm.synthesize("Still there?", voice_id=voice.voice_id)
    assert gone.value.code == "voice_not_found"


# ---------------------------------------------------------------------- status


def test_status_and_the_live_status_feed(vm: VoiceMeshClient) -> None:
    status = vm.status()
    assert status.service == "gateway" and status.auth == "on"
    assert {"stt_cpu_ws", "tts_vits", "tts_clone"} <= set(status.services)
    feed = vm.stream_status()
    try:
        first = next(feed)
    finally:
        feed.close()
    assert first.type == "status_update" and "stt_cpu_ws" in first.data["services"]


def test_the_status_has_the_specifications_fields(vm: VoiceMeshClient) -> None:
    status = vm.status()
    assert status.status in {"ok", "degraded"}
    # The sum is over the gateway and every replica, each listed with its own share.
    parts = status.usage_by_replica
    assert {p["kind"] for p in parts} >= {"gateway", "stt_cpu_ws", "tts_vits"}
    assert status.memory_usage_mb == pytest.approx(sum(p["memory_mb"] or 0 for p in parts), 0.01)
    assert status.memory_usage_mb > 100
    assert status.gpu_memory_mb is None  # no replica runs on a GPU here
    assert status.loaded_models["asr"] and status.loaded_models["tts"]
    assert set(status.request_stats) >= {"total_requests", "asr_requests", "tts_requests"}


def test_admin_models_mode_config_and_a_benchmark(vm: VoiceMeshClient) -> None:
    models = vm.models()["models"]
    asr = {m["id"]: m for m in models if m["kind"] == "asr"}
    default = next(m["id"] for m in asr.values() if m["default"])
    assert asr[default]["status"] == "loaded"
    assert any(m["kind"] == "tts" for m in models)
    assert vm.set_default_model(default)["default"] == default
    with pytest.raises(NotFoundError):
        vm.unload_model("no-such-model")
    with pytest.raises(ConflictError):  # a TTS model is loaded on first use, never unloaded
        vm.unload_model(next(m["id"] for m in models if m["kind"] == "tts"))
    assert vm.reload_config()["changed"] == {}
    previous = vm.set_mode("cpu")["previous"]
    try:
        assert vm.status().mode == "cpu"
    finally:
        vm.set_mode(previous)
    with pytest.raises(BadInputError):
        vm.start_benchmark("stt", clients=9)
    run = vm.start_benchmark("tts", clients=1)
    done = vm.wait_benchmark(run["id"], timeout_s=120)
    assert done["status"] == "completed", done
    tts = done["summary"]["tts"]
    assert tts["requests"] >= 1 and tts["errors"] == 0 and tts["rtf_median"] > 0
    assert run["id"] in [r["id"] for r in vm.benchmark_results()["runs"]]


# ---------------------------------------------------------------------- the documentation


def python_examples(path: Path) -> list[str]:
    """The ``python`` code blocks of a Markdown file."""
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


DOC_EXAMPLES = python_examples(REPO / "docs" / "client.md")


def run_example(code: str, base_url: str, key: str | None, cwd: Path) -> str:
    """Run a documented example against ``base_url``; its output."""
    for client in ("AsyncVoiceMeshClient(", "VoiceMeshClient("):
        code = code.replace(f"{client}api_key=", f'{client}"{base_url}", api_key=')
    code = code.replace("http://127.0.0.1:8080", base_url).replace('"my-key"', repr(key))
    code = code.replace('"my-admin-key"', repr(key))  # no admin key: a client key opens them
    code = code.replace('"tests/data/speech/', f'"{SPEECH_DIR}/')
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"{code}\n---\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("index", range(len(DOC_EXAMPLES)))
def test_the_documented_examples_run(index: int, gateway_url: str, tmp_path: Path) -> None:
    assert len(DOC_EXAMPLES) >= 8
    output = run_example(DOC_EXAMPLES[index], gateway_url, KEY, tmp_path)
    assert output.strip() or list(tmp_path.iterdir()), "the example did nothing visible"


def test_the_readme_example_runs(mesh: Mesh, tmp_path: Path) -> None:
    (example,) = [e for e in python_examples(REPO / "README.md") if "voicemesh.client" in e]
    output = run_example(example, mesh.gateway.url, None, tmp_path)
    assert error_rate(JFK.text, output.splitlines()[0]) <= WER_LIMIT, output
    assert "final" in output
