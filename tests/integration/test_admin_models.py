"""Model management against the running mesh, by a client written from the issue's text.

A gateway with an admin key and a client key joins the session mesh's Redis: behind it
the real CPU Whisper service (base), the speech detector (tiny.en, confirming speech
only) and the VITS TTS service, as they register themselves. The client knows only
``GET /v1/admin/models``, ``POST /v1/admin/models/{id}/load|unload|default`` and the
ASR routes. The mesh's one STT model is unloaded and loaded again here; every test
leaves it loaded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import clip_named, error_rate
from tests.integration.conftest import Mesh

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ADMIN_KEY = "models-integration-admin"
CLIENT_KEY = "models-integration-client"
JFK = clip_named("whisper-jfk.wav")


class ModelsClient:
    """The admin's model routes and the ASR routes, over plain HTTP."""

    def __init__(self, base_url: str, key: str) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {key}"}

    def models(self) -> Any:
        """``GET /v1/admin/models``."""
        return httpx.get(f"{self.base_url}/v1/admin/models", headers=self.headers, timeout=10)

    def act(self, model: str, action: str, body: dict[str, Any] | None = None) -> Any:
        """``POST /v1/admin/models/{model}/{action}`` with an optional JSON body."""
        url = f"{self.base_url}/v1/admin/models/{model}/{action}"
        return httpx.post(url, headers=self.headers, json=body, timeout=60)

    def transcribe(self, audio: bytes) -> Any:
        """``POST /v1/asr/transcribe`` with no model named."""
        files = {"audio": ("speech.wav", audio, "audio/wav")}
        return httpx.post(
            f"{self.base_url}/v1/asr/transcribe", headers=self.headers, files=files, timeout=120
        )

    def asr_models(self) -> Any:
        """``GET /v1/asr/models``."""
        return httpx.get(f"{self.base_url}/v1/asr/models", headers=self.headers, timeout=10)


@pytest.fixture(scope="module")
def gateway_url(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with an admin key on the mesh's Redis, once it routes to STT."""
    with mesh.keyed_gateway(
        tmp_path_factory, "admin-models", client_key=CLIENT_KEY, admin_key=ADMIN_KEY
    ) as url:
        yield url


@pytest.fixture(scope="module")
def admin(gateway_url: str) -> ModelsClient:
    return ModelsClient(gateway_url, ADMIN_KEY)


def by_id(admin: ModelsClient) -> dict[str, dict[str, Any]]:
    response = admin.models()
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["models"]}


def error_of(response: Any, status: int, code: str) -> str:
    """The message of a refused request in the one error shape."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["request_id"], error
    return str(error["message"])


def wait_loaded(admin: ModelsClient, model: str = "base") -> None:
    """Until every replica of ``model`` says loaded."""
    deadline = time.monotonic() + 120
    while {r["status"] for r in by_id(admin)[model]["replicas"]} != {"loaded"}:
        assert time.monotonic() < deadline, by_id(admin)[model]
        time.sleep(0.3)


def test_the_listing_has_the_meshs_asr_and_tts_models(admin: ModelsClient) -> None:
    models = by_id(admin)
    base = models["base"]
    assert base["status"] == "loaded" and base["default"] is True
    assert [r["status"] for r in base["replicas"] if r["use"] == "transcribe"] == ["loaded"]
    tts = [m for m in models.values() if m["kind"] == "tts"]
    assert tts and tts[0]["status"] == "loaded" and tts[0]["unloadable"] is False
    assert admin.models().json()["default"]["asr"] == "base"


def test_only_the_admin_key_manages_models(gateway_url: str) -> None:
    client = ModelsClient(gateway_url, CLIENT_KEY)
    error_of(client.models(), 403, "forbidden")
    error_of(client.act("base", "unload", {"force": True}), 403, "forbidden")
    error_of(ModelsClient(gateway_url, "wrong").models(), 401, "unauthorized")
    assert client.asr_models().status_code == 200  # the client's own routes still serve


def test_bad_requests_are_refused_clearly(admin: ModelsClient) -> None:
    message = error_of(admin.act("large-v9", "unload"), 404, "unknown_model")
    assert "base" in message, message
    assert "forse" in error_of(admin.act("base", "unload", {"forse": 1}), 422, "unknown_field")
    tts = next(m["id"] for m in by_id(admin).values() if m["kind"] == "tts")
    assert "TTS" in error_of(admin.act(tts, "unload"), 409, "not_unloadable")
    # The detector's tiny.en only confirms speech: nothing here transcribes with it.
    error_of(admin.act("tiny.en", "unload"), 409, "model_cannot_serve")
    error_of(admin.act("tiny.en", "default"), 409, "model_cannot_serve")
    error_of(admin.act("large-v9", "default"), 404, "unknown_model")


def test_the_last_model_needs_force_and_comes_back_on_load(admin: ModelsClient) -> None:
    message = error_of(admin.act("base", "unload"), 409, "model_in_use")
    assert "last loaded STT model" in message, message
    try:
        forced = admin.act("base", "unload", {"force": True})
        assert forced.status_code == 200, forced.text
        rows = forced.json()["replicas"]
        assert rows and all((r["previous"], r["status"]) == ("loaded", "unloaded") for r in rows)
        listed = {m["id"]: m for m in admin.asr_models().json()["models"]}
        assert listed["base"]["status"] == "unloaded", listed["base"]
        assert admin.transcribe(JFK.path.read_bytes()).status_code == 503
        loading = admin.act("base", "load")
        assert loading.status_code == 200, loading.text
        assert {r["previous"] for r in loading.json()["replicas"]} == {"unloaded"}
    finally:
        admin.act("base", "load")
        wait_loaded(admin)
    served = admin.transcribe(JFK.path.read_bytes())
    assert served.status_code == 200, served.text
    assert error_rate(JFK.text, served.json()["text"]) <= 15.0, served.json()["text"]


def test_the_default_model_is_set_and_reported(admin: ModelsClient) -> None:
    answer = admin.act("base", "default")
    assert answer.status_code == 200, answer.text
    assert answer.json()["default"] == "base" and answer.json()["shared"] is True
    assert admin.asr_models().json()["default"] == "base"
