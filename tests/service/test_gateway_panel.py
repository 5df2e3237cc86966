"""The control panel served by the gateway at ``/``: public page, routes unshadowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gateway.app import create_app
from gateway.settings import DEFAULT_CLIENT_JS_DIR, DEFAULT_PANEL_DIR, GatewaySettings

pytestmark = pytest.mark.service

ADMIN_KEY = "panel-admin-key"


@pytest.fixture
def gateway() -> TestClient:
    """A gateway with auth on (one client key, an admin key), no Redis."""
    app = create_app(
        GatewaySettings(
            redis_url="",
            use_detector=False,
            probe_interval_s=0,
            api_keys=["client-key"],
            admin_key=ADMIN_KEY,
        )
    )
    with TestClient(app) as client:
        yield client


def test_panel_page_is_public_and_names_voicemesh(gateway: TestClient) -> None:
    page = gateway.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>VoiceMesh" in page.text
    for asset in (
        "app.js",
        "common.js",
        "admin-tabs.js",
        "charts.js",
        "style.css",
        "pcm-worklet.js",
    ):
        response = gateway.get(f"/{asset}")
        assert response.status_code == 200, asset
        assert response.content == (DEFAULT_PANEL_DIR / asset).read_bytes()


def test_panel_imports_the_javascript_client_served_beside_it(gateway: TestClient) -> None:
    # The panel's modules import ./voicemesh.js: the client of client/js, not a copy.
    assert 'type="module" src="app.js"' in gateway.get("/").text
    assert 'from "./voicemesh.js"' in gateway.get("/common.js").text
    module = gateway.get("/voicemesh.js")
    assert module.status_code == 200
    assert module.headers["content-type"].startswith("text/javascript")
    assert module.content == (DEFAULT_CLIENT_JS_DIR / "voicemesh.js").read_bytes()
    assert not (DEFAULT_PANEL_DIR / "voicemesh.js").exists()


def test_api_routes_are_not_shadowed_and_keep_their_auth(gateway: TestClient) -> None:
    assert gateway.get("/health").json()["service"] == "gateway"
    assert gateway.get("/metrics").text.startswith("# HELP")
    refused = gateway.get("/v1/admin/status")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    allowed = gateway.get("/v1/admin/status", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert allowed.status_code == 200 and allowed.json()["auth"] == "on"
    missing = gateway.get("/v1/no-such-route")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_stream_route_still_wins_over_the_panel(gateway: TestClient) -> None:
    with gateway.websocket_connect("/ws/transcribe") as ws:
        message = ws.receive_json()
    assert message["type"] == "error" and message["code"] == "unauthorized"


def test_unknown_websocket_path_is_closed_not_served(gateway: TestClient) -> None:
    with (
        pytest.raises(WebSocketDisconnect) as closed,
        gateway.websocket_connect("/ws/nothing-here") as ws,
    ):
        ws.receive_text()
    assert closed.value.code == 1008


def test_panel_can_be_turned_off(tmp_path: Path) -> None:
    app = create_app(
        GatewaySettings(
            redis_url="", use_detector=False, probe_interval_s=0, control_panel_dir=None
        )
    )
    with TestClient(app) as client:
        assert client.get("/").status_code == 404
        assert client.get("/health").status_code == 200
    empty = create_app(
        GatewaySettings(
            redis_url="", use_detector=False, probe_interval_s=0, control_panel_dir=tmp_path
        )
    )
    with TestClient(empty) as client:
        assert client.get("/").status_code == 404
