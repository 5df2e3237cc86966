"""Gateway API keys and limits, on the real gateway app in-process (Redis disabled).

With Redis off and no backend configured, a request that passes auth reaches the
route and gets the route's own answer (``no_backend``, 503): that tells "let in"
apart from "refused at the door" without any STT service.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gateway.app import create_app
from gateway.keys import KeyRing, fingerprint, read_key_file
from gateway.settings import GatewaySettings

pytestmark = pytest.mark.service

CLIENT_KEY = "client-key-1"
OTHER_KEY = "client-key-2"
ADMIN_KEY = "admin-key-9"
PROTECTED = "/v1/admin/mode"  # admin route; without an admin key any client key opens it


def settings(**overrides: Any) -> GatewaySettings:
    """Gateway settings without Redis, without backends, with ``overrides``."""
    values: dict[str, Any] = {"redis_url": "", "use_detector": False, **overrides}
    return GatewaySettings(**values)


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    """A gateway with two client keys and no admin key."""
    with TestClient(create_app(settings(api_keys=[CLIENT_KEY, OTHER_KEY]))) as client:
        yield client


def by_header(key: str) -> dict[str, Any]:
    return {"headers": {"X-API-Key": key}}


def by_bearer(key: str) -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {key}"}}


def by_query(key: str) -> dict[str, Any]:
    return {"params": {"api_key": key}}


WAYS = [by_header, by_bearer, by_query]


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The one JSON error shape, with the request id of the response header."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return dict(error)


def ws_refusal(client: TestClient, url: str, **kwargs: Any) -> tuple[dict[str, Any], int]:
    """The error message an accepted WebSocket gets, and the code it is closed with."""
    with client.websocket_connect(url, **kwargs) as ws:
        message = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    return message, closed.value.code


def test_no_key_is_a_401_json_error(keyed: TestClient) -> None:
    response = keyed.get(PROTECTED)
    error = assert_error(response, 401, "unauthorized")
    assert "API key" in error["message"]
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("way", WAYS, ids=lambda w: w.__name__)
def test_wrong_key_is_a_401_in_each_way(keyed: TestClient, way: Any) -> None:
    error = assert_error(keyed.get(PROTECTED, **way("not-a-key")), 401, "unauthorized")
    assert "not valid" in error["message"]


@pytest.mark.parametrize("way", WAYS, ids=lambda w: w.__name__)
def test_right_key_is_let_in_each_way(keyed: TestClient, way: Any) -> None:
    response = keyed.get(PROTECTED, **way(CLIENT_KEY))
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == "auto"


def test_a_key_that_only_starts_like_a_valid_one_is_refused(keyed: TestClient) -> None:
    assert_error(keyed.get(PROTECTED, **by_header(CLIENT_KEY + "x")), 401, "unauthorized")
    assert_error(keyed.get(PROTECTED, **by_header(CLIENT_KEY[:-1])), 401, "unauthorized")


def test_transcription_route_needs_a_key_too(keyed: TestClient) -> None:
    files = {"file": ("a.wav", b"RIFF", "audio/wav")}
    assert_error(keyed.post("/v1/audio/transcriptions", files=files), 401, "unauthorized")
    let_in = keyed.post("/v1/audio/transcriptions", files=files, **by_bearer(OTHER_KEY))
    assert_error(let_in, 503, "no_backend")


def test_probes_answer_without_a_key(keyed: TestClient) -> None:
    health = keyed.get("/health")
    assert health.status_code == 200
    assert health.json()["auth"] == "on"
    assert keyed.get("/metrics").status_code == 200
    assert_error(keyed.get("/ready"), 503, "not_ready")  # answers, but no backend yet


def test_without_keys_auth_is_off_and_routes_are_open() -> None:
    with TestClient(create_app(settings())) as client:
        assert client.get("/health").json()["auth"] == "off"
        assert client.get(PROTECTED).status_code == 200
        # A stray key is ignored rather than refused when auth is off.
        assert client.get(PROTECTED, **by_header("anything")).status_code == 200
        status = client.get("/v1/admin/status").json()
        assert status["auth"] == "off"


def test_admin_key_guards_admin_routes_and_opens_client_routes() -> None:
    app = create_app(settings(api_keys=[CLIENT_KEY], admin_key=ADMIN_KEY))
    with TestClient(app) as client:
        forbidden = assert_error(client.get(PROTECTED, **by_header(CLIENT_KEY)), 403, "forbidden")
        assert "admin key" in forbidden["message"]
        assert_error(
            client.post(PROTECTED, json={"mode": "cpu"}, **by_header(CLIENT_KEY)), 403, "forbidden"
        )
        assert_error(client.get(PROTECTED), 401, "unauthorized")
        assert_error(client.get(PROTECTED, **by_query("nope")), 401, "unauthorized")
        assert client.get(PROTECTED, **by_bearer(ADMIN_KEY)).status_code == 200
        files = {"file": ("a.wav", b"RIFF", "audio/wav")}
        as_admin = client.post("/v1/audio/transcriptions", files=files, **by_header(ADMIN_KEY))
        assert_error(as_admin, 503, "no_backend")


def test_admin_key_alone_leaves_client_routes_open() -> None:
    with TestClient(create_app(settings(admin_key=ADMIN_KEY))) as client:
        assert client.get("/health").json()["auth"] == "off"
        files = {"file": ("a.wav", b"RIFF", "audio/wav")}
        assert_error(client.post("/v1/audio/transcriptions", files=files), 503, "no_backend")
        assert_error(client.get(PROTECTED), 401, "unauthorized")
        assert_error(client.get(PROTECTED, **by_header("guess")), 401, "unauthorized")
        assert client.get(PROTECTED, **by_header(ADMIN_KEY)).status_code == 200


def test_websocket_without_key_gets_an_error_then_4401(keyed: TestClient) -> None:
    message, code = ws_refusal(keyed, "/ws/transcribe")
    assert code == 4401
    assert message["type"] == "error"
    assert message["code"] == "unauthorized"
    assert message["fatal"] is True
    assert message["message"]


@pytest.mark.parametrize("way", WAYS, ids=lambda w: w.__name__)
def test_websocket_with_wrong_key_gets_4401(keyed: TestClient, way: Any) -> None:
    message, code = ws_refusal(keyed, "/ws/transcribe", **way("wrong"))
    assert (message["code"], code) == ("unauthorized", 4401)


@pytest.mark.parametrize("way", WAYS, ids=lambda w: w.__name__)
def test_websocket_with_right_key_reaches_the_session(keyed: TestClient, way: Any) -> None:
    message, code = ws_refusal(keyed, "/ws/transcribe", **way(CLIENT_KEY))
    # Past auth and limits the session itself answers: there is no backend here.
    assert (message["code"], code) == ("no_backend", 1013)
    assert keyed.app.state.gateway.active_sessions == 0  # the slot was given back


def test_status_feed_refuses_a_client_key_when_an_admin_key_is_set() -> None:
    app = create_app(settings(api_keys=[CLIENT_KEY], admin_key=ADMIN_KEY))
    with TestClient(app) as client:
        message, code = ws_refusal(client, "/v1/ws/status", **by_query(CLIENT_KEY))
        assert (message["code"], code) == ("forbidden", 4403)
        message, code = ws_refusal(client, "/v1/ws/status")
        assert (message["code"], code) == ("unauthorized", 4401)


def test_per_key_rate_limit_is_a_429_with_retry_after() -> None:
    app = create_app(settings(api_keys=[CLIENT_KEY, OTHER_KEY], requests_per_minute_per_key=3))
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get(PROTECTED, **by_header(CLIENT_KEY)).status_code == 200

        response = client.get(PROTECTED, **by_header(CLIENT_KEY))

        error = assert_error(response, 429, "rate_limited")
        assert isinstance(error["retry_after"], int)
        assert 55 <= error["retry_after"] <= 60
        assert response.headers["retry-after"] == str(error["retry_after"])
        assert error["limit"] == "key"
        # Another key has its own budget; probes are never limited.
        assert client.get(PROTECTED, **by_header(OTHER_KEY)).status_code == 200
        assert client.get("/health").status_code == 200


def test_overall_rate_limit_applies_across_keys() -> None:
    app = create_app(settings(api_keys=[CLIENT_KEY, OTHER_KEY], requests_per_minute_total=3))
    with TestClient(app) as client:
        for key in (CLIENT_KEY, OTHER_KEY, CLIENT_KEY):
            assert client.get(PROTECTED, **by_header(key)).status_code == 200
        error = assert_error(client.get(PROTECTED, **by_header(OTHER_KEY)), 429, "rate_limited")
        assert error["limit"] == "total"


def test_unauthorized_requests_do_not_use_up_a_budget() -> None:
    app = create_app(settings(api_keys=[CLIENT_KEY], requests_per_minute_total=2))
    with TestClient(app) as client:
        for _ in range(5):
            assert client.get(PROTECTED, **by_header("wrong")).status_code == 401
        assert client.get(PROTECTED, **by_header(CLIENT_KEY)).status_code == 200


def test_new_sessions_count_against_the_rate() -> None:
    app = create_app(settings(api_keys=[CLIENT_KEY], requests_per_minute_per_key=2))
    with TestClient(app) as client:
        assert client.get(PROTECTED, **by_header(CLIENT_KEY)).status_code == 200
        first, code = ws_refusal(client, "/ws/transcribe", **by_query(CLIENT_KEY))
        assert (first["code"], code) == ("no_backend", 1013)

        message, code = ws_refusal(client, "/ws/transcribe", **by_query(CLIENT_KEY))

        assert code == 1013
        assert message["code"] == "rate_limited"
        assert message["fatal"] is True
        assert 55 <= message["retry_after"] <= 60
        assert client.app.state.gateway.active_sessions == 0


def test_refusals_are_counted_by_route_and_status(keyed: TestClient) -> None:
    keyed.get(PROTECTED)
    keyed.get(PROTECTED, **by_header(CLIENT_KEY))
    ws_refusal(keyed, "/ws/transcribe")
    text = keyed.get("/metrics").text
    assert 'voicemesh_gateway_requests_total{route="/v1/admin/mode",status="401"} 1.0' in text
    assert 'voicemesh_gateway_requests_total{route="/v1/admin/mode",status="200"} 1.0' in text
    assert 'voicemesh_gateway_requests_total{route="/ws/transcribe",status="4401"} 1.0' in text
    assert 'voicemesh_errors_total{code="unauthorized",service="gateway"} 2.0' in text


def test_keys_from_a_file_with_comments(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# operators\nfile-key-a\n\n  file-key-b  \n", encoding="utf-8")
    assert read_key_file(key_file) == ["file-key-a", "file-key-b"]
    app = create_app(settings(api_keys=[CLIENT_KEY], api_keys_file=key_file))
    with TestClient(app) as client:
        for key in (CLIENT_KEY, "file-key-a", "file-key-b"):
            assert client.get(PROTECTED, **by_header(key)).status_code == 200
        assert client.get(PROTECTED, **by_header("# operators")).status_code == 401


def test_an_edited_key_file_is_picked_up_without_restart(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("old-key\n", encoding="utf-8")
    ring = KeyRing([], key_file=key_file)
    assert ring.identify("old-key") is not None

    key_file.write_text("new-key\nsecond-new-key\n", encoding="utf-8")

    assert ring.identify("old-key") is None
    principal = ring.identify("new-key")
    assert principal is not None
    assert principal.key_id == f"key-{fingerprint('new-key')}"
    assert "new-key" not in principal.key_id


def test_an_emptied_key_file_locks_clients_out(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("only-key\n", encoding="utf-8")
    with TestClient(create_app(settings(api_keys_file=key_file))) as client:
        assert client.get(PROTECTED, **by_header("only-key")).status_code == 200
        key_file.write_text("# all keys revoked\n", encoding="utf-8")
        assert_error(client.get(PROTECTED, **by_header("only-key")), 401, "unauthorized")
        assert_error(client.get(PROTECTED), 401, "unauthorized")
        assert client.get("/health").json()["auth"] == "on"


def test_a_missing_key_file_fails_at_startup(tmp_path: Path) -> None:
    app = create_app(settings(api_keys_file=tmp_path / "absent.txt"))
    with pytest.raises(ValueError, match="api_keys_file"), TestClient(app):
        pass


def test_principals_name_keys_by_fingerprint_only() -> None:
    ring = KeyRing([CLIENT_KEY], ADMIN_KEY)
    client = ring.identify(CLIENT_KEY)
    admin = ring.identify(ADMIN_KEY)
    assert client is not None and admin is not None
    assert (client.admin, admin.admin) == (False, True)
    assert CLIENT_KEY not in client.key_id and ADMIN_KEY not in admin.key_id
    assert client.key_id != admin.key_id
    assert ring.identify(None) is None
    assert ring.identify("") is None
