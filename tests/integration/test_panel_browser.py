"""The control panel in a real browser (Debian's Chromium, driven by Playwright) on the
real mesh: dashboard, mode toggle, mic test on a fake capture device fed a shared
speech clip, and the error messages a wrong key or a missing service gives.

Screenshots go to ``outputs/e2e/`` (git-ignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import soundfile

from tests.harness import (
    REPO,
    RedisServer,
    ServiceProcess,
    clip_named,
    error_rate,
    free_port,
    offline_transcript,
)
from tests.integration.test_clone_gateway import KEY_A as CLONE_KEY
from tests.integration.test_clone_gateway import CloneMesh, clone_mesh  # noqa: F401 - fixture
from voicemesh.audio import resample
from voicemesh.audio_files import load_clip_16k
from voicemesh.registry import RegistryClient
from voicemesh.settings import default_home

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = REPO / "outputs" / "e2e"
MIC_CLIP = clip_named("pocketsphinx-librivox-0870.wav")
LEAD_S, TAIL_S = 0.5, 4.0  # silence around the clip: the fake device loops the file
STOP_AFTER_SPEECH_S = 2.0
WER_MARGIN = 1.0  # the bound test_stream_through_gateway uses for this clip
ADMIN_KEY = "e2e-admin-key"
CLIENT_KEY = "e2e-client-key"


def page_results(url: str, profile: Path, expression: str = "window.results") -> Any:
    """Open ``url`` in headless Chromium, wait until the page sets ``window.results.done``,
    and return ``expression`` evaluated there; a JavaScript error on the way fails."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "run scripts/setup-browser (apt-get install chromium)"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            page.wait_for_function("() => window.results && window.results.done", timeout=180000)
            found = page.evaluate(f"() => {expression}")
        finally:
            context.close()
    assert not errors, errors
    return found


def fake_capture_wav(path: Path) -> float:
    """The mic clip as Chromium's fake capture wants it: 48 kHz 16-bit mono WAV, padded."""
    audio = load_clip_16k(MIC_CLIP.path)
    padded = np.concatenate(
        [
            np.zeros(int(LEAD_S * 16000), np.float32),
            audio,
            np.zeros(int(TAIL_S * 16000), np.float32),
        ]
    )
    soundfile.write(path, resample(padded, 16000, 48000), 48000, subtype="PCM_16")
    return padded.size / 16000


@pytest.fixture(scope="module")
def capture_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake microphone's WAV file."""
    path = tmp_path_factory.mktemp("fake-mic") / "mic.wav"
    fake_capture_wav(path)
    return path


@pytest.fixture(scope="module")
def browser(capture_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Debian's Chromium with a fresh profile and a fake microphone playing the clip."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "run scripts/setup-browser (apt-get install chromium)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            viewport={"width": 1280, "height": 900},
            args=[
                *CHROMIUM_ARGS,
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={capture_clip}",
            ],
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A new tab that fails the test on any JavaScript error."""
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    tab.close()
    assert not errors, errors


def mode_in_redis(mesh: Any) -> str | None:
    """The routing mode the gateway stored in Redis."""
    key = RegistryClient(mesh.redis.url).mode_key
    client = redis.Redis.from_url(mesh.redis.url, decode_responses=True)
    try:
        value: str | None = client.get(key)
        return value
    finally:
        client.close()


def open_panel(page: Any, url: str) -> None:
    """Load the panel and wait for the live status feed."""
    page.goto(url)
    page.wait_for_selector("#conn.badge-ok", timeout=15000)


def test_dashboard_lists_the_running_services(mesh: Any, page: Any) -> None:
    open_panel(page, mesh.gateway.url)
    assert "VoiceMesh" in page.title()
    page.wait_for_selector("#services tr[data-kind='stt_cpu_ws']", timeout=10000)
    rows = page.eval_on_selector_all(
        "#services tbody tr", "rows => rows.map(r => [r.dataset.kind, r.innerText])"
    )
    kinds = {kind for kind, _ in rows}
    assert {"stt_cpu_ws", "stt_tiny_ws"} <= kinds, rows
    cpu_row = next(text for kind, text in rows if kind == "stt_cpu_ws")
    assert "cpu" in cpu_row and "ok" in cpu_row and str(mesh.stt_cpu.port) in cpu_row
    assert page.inner_text("#t-redis") == "connected"
    assert mesh.stt_cpu.url in page.inner_text("#stt-route")
    page.wait_for_timeout(2500)  # a few status updates for the charts
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)


def test_mode_toggle_changes_redis_and_the_page(mesh: Any, page: Any) -> None:
    open_panel(page, mesh.gateway.url)
    try:
        for mode in ("cpu", "gpu", "auto"):
            page.click(f"#mode-toggle button[data-mode='{mode}']")
            # How fast is the benchmarks' business; a generous deadline, then the outcome.
            page.wait_for_function(
                "mode => document.getElementById('mode-current').textContent === mode",
                arg=mode,
                timeout=15000,
            )
            assert (
                page.get_attribute(f"#mode-toggle button[data-mode='{mode}']", "class") == "active"
            )
            assert mode_in_redis(mesh) == mode
            # The page's mode is the one the gateway then reports in its status feed.
            page.wait_for_function(
                "mode => [...document.querySelectorAll('#events li')]"
                ".some(li => li.textContent.includes('→ ' + mode))",
                arg=mode,
                timeout=15000,
            )
            assert page.inner_text("#mode-current") == mode
        page.screenshot(path=str(SHOTS / "mode-toggle.png"))
    finally:
        import httpx

        httpx.post(f"{mesh.gateway.url}/v1/admin/mode", json={"mode": "auto"}, timeout=5)


def test_mic_test_transcribes_the_fake_microphone(mesh: Any, page: Any) -> None:
    open_panel(page, mesh.gateway.url)
    page.click("button[data-tab='mic']")
    page.select_option("#mic-language", "en")
    page.click("#mic-start")
    page.wait_for_selector("#mic-state.badge-ok", timeout=15000)
    speech_end = LEAD_S + MIC_CLIP.duration_s
    # The fake device loops the file: stop inside the silence after the speech; the stop
    # finalizes whatever is still open, then the session closes.
    page.wait_for_timeout(int((speech_end + STOP_AFTER_SPEECH_S) * 1000))
    page.click("#mic-stop")
    page.wait_for_selector("#mic-state:text('idle')", timeout=30000)
    page.screenshot(path=str(SHOTS / "mic-test.png"), full_page=True)
    finals = page.eval_on_selector_all(
        "#mic-finals .final",
        "fs => fs.map(f => ({text: f.dataset.text, start: Number(f.dataset.start),"
        " end: Number(f.dataset.end), latency: f.querySelector('.lat').textContent}))",
    )
    assert page.inner_text("#mic-info") == "", page.inner_text("#mic-info")
    first_pass = [f for f in finals if f["start"] < speech_end]
    transcript = " ".join(f["text"] for f in first_pass)
    streamed = error_rate(MIC_CLIP.text, transcript)
    offline = error_rate(MIC_CLIP.text, offline_transcript(MIC_CLIP))
    print(f"browser mic: WER {streamed:.1f} (offline {offline:.1f}) | {transcript} | {finals}")
    assert streamed <= offline + WER_MARGIN, (transcript, streamed, offline)
    assert all("server" in f["latency"] and "felt" in f["latency"] for f in first_pass)


@pytest.fixture(scope="module")
def locked_gateway(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A gateway with auth on, on an empty Redis database: no service behind it."""
    env = {
        "VOICEMESH_REDIS_URL": f"{redis_server.url.rsplit('/', 1)[0]}/5",
        "VOICEMESH_HOME": str(tmp_path_factory.getbasetemp() / "vmhome-locked"),
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        "VOICEMESH_GATEWAY_API_KEYS": json.dumps([CLIENT_KEY]),
        "VOICEMESH_GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
    }
    gateway = ServiceProcess("gateway", free_port(), env, tmp_path_factory.mktemp("locked"))
    gateway.start()
    try:
        gateway.wait_healthy()
        yield gateway
    finally:
        gateway.stop()


def save_keys(page: Any, api_key: str, admin_key: str) -> None:
    """Type both keys into the header form and save them."""
    page.fill("#api-key", api_key)
    page.fill("#admin-key", admin_key)
    page.click("#keys button[type='submit']")


def test_wrong_key_and_missing_services_get_clear_messages(
    locked_gateway: ServiceProcess, page: Any
) -> None:
    page.goto(locked_gateway.url)
    page.wait_for_selector("#conn.badge-bad", timeout=15000)
    assert "API key is missing or wrong" in page.inner_text("#banner")
    save_keys(page, "not-the-key", "not-the-key")
    page.wait_for_function(
        "document.getElementById('banner').textContent.includes('missing or wrong')", timeout=10000
    )
    # A client key is not enough for the live status and the mode toggle.
    save_keys(page, CLIENT_KEY, "")
    page.wait_for_function(
        "document.getElementById('banner').textContent.includes('needs the admin key')",
        timeout=10000,
    )
    page.click("#mode-toggle button[data-mode='cpu']")
    page.wait_for_function(
        "document.getElementById('mode-message').textContent.includes('admin key')", timeout=15000
    )
    # The right keys: live, but nothing is registered behind this gateway.
    save_keys(page, CLIENT_KEY, ADMIN_KEY)
    page.wait_for_selector("#conn.badge-ok", timeout=15000)
    assert "no service is registered" in page.inner_text("#services")
    page.click("button[data-tab='mic']")
    page.click("#mic-start")
    page.wait_for_function(
        "document.getElementById('mic-info').textContent"
        ".includes('no STT service could take the session')",
        timeout=15000,
    )
    page.click("button[data-tab='tts']")
    page.wait_for_function(
        "document.querySelector('#voices tbody').textContent"
        ".includes('TTS voices: the service is down or unreachable')",
        timeout=15000,
    )
    page.click("button[data-tab='mic']")
    page.screenshot(path=str(SHOTS / "no-service.png"), full_page=True)
    stored = page.evaluate("localStorage.getItem('voicemesh.apiKey')")
    assert stored == CLIENT_KEY


def test_panel_fits_a_phone_screen(mesh: Any, browser: Any) -> None:
    phone = browser.new_page()
    phone.set_viewport_size({"width": 390, "height": 844})
    try:
        open_panel(phone, mesh.gateway.url)
        for tab in ("dashboard", "mic", "tts", "clone", "models", "benchmark", "settings", "logs"):
            phone.click(f"button[data-tab='{tab}']")
            overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, (tab, overflow)
        phone.click("button[data-tab='dashboard']")
        phone.wait_for_selector("#services tr[data-kind='stt_cpu_ws']", timeout=10000)
        phone.wait_for_timeout(2000)  # a few status updates for the charts
        phone.screenshot(path=str(SHOTS / "phone-dashboard.png"), full_page=True)
    finally:
        phone.close()


def test_tts_request_plays_in_the_page(mesh: Any, page: Any) -> None:
    open_panel(page, mesh.gateway.url)
    page.click("button[data-tab='tts']")
    page.wait_for_selector("#voices tr[data-voice] .play-voice", timeout=20000)
    listed = page.eval_on_selector_all("#voices tr[data-voice]", "rows => rows.length")
    assert listed >= 1
    # The language filter narrows the list to matching voices only.
    language = page.eval_on_selector(
        "#voices tr[data-voice] td:nth-child(2)", "cell => cell.textContent"
    )
    page.select_option("#voice-language", language)
    languages = page.eval_on_selector_all(
        "#voices tr[data-voice] td:nth-child(2)", "cells => cells.map(c => c.textContent)"
    )
    assert languages and set(languages) == {language}
    page.fill("#tts-text", "The control panel speaks.")
    page.click("#tts-go")
    page.wait_for_function(
        "() => { const a = document.getElementById('tts-audio');"
        " return a.src.startsWith('blob:') && a.duration > 0.3; }",
        timeout=60000,
    )
    info = page.inner_text("#tts-info")
    assert "KiB" in info, info
    duration = page.evaluate("document.getElementById('tts-audio').duration")
    assert 0.5 < duration < 10, duration
    page.click("#ab-go")
    page.wait_for_function(
        "() => ['ab-a-audio', 'ab-b-audio'].every(id =>"
        " document.getElementById(id).src.startsWith('blob:'))",
        timeout=60000,
    )
    sides = page.inner_text("#ab-a-info") + " | " + page.inner_text("#ab-b-info")
    assert "RTF" in sides and sides.count("recommended") == 1, sides
    page.screenshot(path=str(SHOTS / "tts.png"), full_page=True)


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServiceProcess]]:
    """A Redis of its own, two CPU STT replicas and a gateway (no detector): one may die."""
    redis_server = RedisServer(tmp_path_factory.mktemp("redis-failover"))
    redis_server.start()
    logs = tmp_path_factory.mktemp("failover-logs")
    env = {
        "VOICEMESH_REDIS_URL": redis_server.url,
        "VOICEMESH_HOME": str(tmp_path_factory.getbasetemp() / "vmhome-failover"),
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        "VOICEMESH_GATEWAY_USE_DETECTOR": "false",
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
    }
    services = [ServiceProcess("stt_cpu_ws", free_port(), env, logs) for _ in range(2)]
    services.append(ServiceProcess("gateway", free_port(), env, logs))
    try:
        for service in services:
            service.start()
        for service in services:
            service.wait_healthy()
        yield services
    finally:
        for service in reversed(services):
            service.stop()
        redis_server.stop()


def test_opus_session_failover_shows_up_on_the_dashboard_as_it_happens(
    two_replicas: list[ServiceProcess], page: Any
) -> None:
    import asyncio
    import os
    import signal
    import threading

    from client.streaming import StreamResult, stream_audio

    *replicas, gateway = two_replicas
    open_panel(page, gateway.url)
    page.wait_for_function(
        "() => document.querySelectorAll(\"#services tr[data-kind='stt_cpu_ws']\").length === 2",
        timeout=20000,
    )
    killed: dict[str, Any] = {}
    results: list[StreamResult] = []

    def on_message(t: float, message: dict[str, Any]) -> None:
        if message.get("type") == "ready":
            killed["url"] = message["backend"]
        if message.get("type") == "partial" and "pid" not in killed:
            victim = next(r for r in replicas if r.url == killed["url"])
            assert victim.process is not None
            killed["pid"] = victim.process.pid
            os.kill(victim.process.pid, signal.SIGKILL)

    ws_url = gateway.url.replace("http://", "ws://") + "/ws/transcribe"
    session = threading.Thread(
        target=lambda: results.append(
            asyncio.run(
                stream_audio(
                    ws_url,
                    load_clip_16k(MIC_CLIP.path),
                    language="en",
                    encoding="opus",
                    on_message=on_message,
                )
            )
        )
    )
    session.start()
    try:
        page.wait_for_selector("#events li.ev-failover", timeout=30000)
        event = page.inner_text("#events li.ev-failover")
        assert f"{killed['url']} →" in event and "replayed" in event, event
        assert page.inner_text("#t-failovers") == "1"
        page.screenshot(path=str(SHOTS / "failover.png"), full_page=True)
    finally:
        session.join(timeout=60)
    assert results and len(results[0].of_type("failover")) == 1
    # The gateway replays decoded audio, so an Opus session loses no words either.
    streamed = error_rate(MIC_CLIP.text, results[0].transcript)
    assert streamed <= error_rate(MIC_CLIP.text, offline_transcript(MIC_CLIP)) + WER_MARGIN, (
        results[0].transcript
    )
    # The dead replica leaves the table's healthy rows once its registration lapses.
    page.wait_for_selector("#events li.ev-service_down", timeout=30000)


def test_clone_tab_validates_a_reference_and_speaks_in_it(
    request: pytest.FixtureRequest, page: Any, tmp_path: Path
) -> None:
    # tts_clone and a keyed gateway: the clone tests' own fixture, shared, not copied.
    cloning: CloneMesh = request.getfixturevalue("clone_mesh")
    page.goto(cloning.gateway.url)
    save_keys(page, CLONE_KEY, "")
    page.click("button[data-tab='clone']")
    page.wait_for_function(
        "document.getElementById('clone-info').textContent.includes('No cloned voice yet')",
        timeout=15000,
    )
    # Not audio: refused, with the service's reason.
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all " * 64)
    page.fill("#clone-name", "junk")
    page.set_input_files("#clone-file", str(junk))
    page.check("#clone-consent")
    page.click("#clone-form button[type='submit']")
    page.wait_for_selector("#clone-validation.bad", timeout=30000)
    refused = page.inner_text("#clone-validation")
    assert refused.startswith("Reference upload: error 400 ("), refused
    assert "code: undecodable_audio" in refused.splitlines(), refused
    # A real reference: accepted, with its quality report, and spoken in.
    page.fill("#clone-name", "librivox reader")
    page.set_input_files("#clone-file", str(MIC_CLIP.path))
    page.fill("#clone-ref-text", MIC_CLIP.text)
    page.select_option("#clone-language", "en")
    page.click("#clone-form button[type='submit']")
    page.wait_for_selector("#clone-validation.ok", timeout=60000)
    validation = page.inner_text("#clone-validation")
    assert "accepted as v_" in validation and "duration_s:" in validation, validation
    voice_id = validation.split("accepted as ", 1)[1].split()[0]
    page.wait_for_function(
        "id => document.getElementById('clone-voice').value === id", arg=voice_id, timeout=15000
    )
    page.fill("#clone-text", "The panel speaks in a cloned voice.")
    page.click("#clone-go")
    page.wait_for_function(
        "() => { const a = document.getElementById('clone-audio');"
        " return a.src.startsWith('blob:') && a.duration > 0.3; }",
        timeout=120000,
    )
    assert "KiB" in page.inner_text("#clone-info")
    page.screenshot(path=str(SHOTS / "clone.png"), full_page=True)
