"""Every HTTP route of the gateway fuzzed from its own OpenAPI schema (schemathesis).

The gateway under test joins the session mesh's Redis, so behind it are the real CPU
Whisper service, the speech detector and the VITS TTS service, plus a ``tts_clone``
of this module's own (the mesh has none, and without one every clone route could
only answer 503). It has an admin key and a client key; the fuzz sends the admin key,
so the admin routes are exercised past the 401.

For each operation schemathesis draws ``MAX_EXAMPLES`` requests (valid ones and ones
that break the schema: wrong types, missing fields, bad content types). Every answer
must be under 500, and every 4xx must be the one JSON error shape
``{"error": {"code", "message", "request_id"}}`` with the id in ``X-Request-ID``; each
operation of the schema gets requests (none is skipped silently). After the run the
gateway still answers ``/health`` and still routes to STT and TTS.

Operations that would change the session mesh for every other test (the routing mode
and the default model are shared through Redis; unloading the only STT model; long
benchmark runs streaming through the shared STT replica) are excluded from that run by
name and fuzzed instead against a gateway of their own, on a Redis database of their
own with no backend behind it.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.generation import GenerationMode
from schemathesis.generation.case import Case

from tests.harness import RedisServer, ServiceProcess, free_port, start_routing_gateway
from tests.integration.conftest import Mesh
from voicemesh.settings import default_home

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ADMIN_KEY = "fuzz-http-admin-key-0001"
CLIENT_KEY = "fuzz-http-client-key-0002"
MAX_EXAMPLES = 20
"""Requests drawn per operation (hypothesis examples; schemathesis adds its explicit ones)."""
REQUEST_TIMEOUT_S = 60.0
# The per-key rate limit (120/min by default) would answer most of the fuzz with 429.
UNLIMITED = {
    "VOICEMESH_GATEWAY_REQUESTS_PER_MINUTE_PER_KEY": "100000",
    "VOICEMESH_GATEWAY_REQUESTS_PER_MINUTE_TOTAL": "100000",
}
OWN_REDIS_DB = 14
"""The Redis database of the gateway that takes the mesh-changing operations."""

MESH_CHANGING = [
    # POST /v1/admin/mode: the mode is shared through Redis; "gpu" would leave every
    # other test of the session without an STT route.
    "set_mode_v1_admin_mode_post",
    # The model routes act on the replicas holding a model: an unload (with force) of
    # the mesh's only STT model, or a load, would change the shared STT replica.
    "unload_v1_admin_models__model_id__unload_post",
    "load_v1_admin_models__model_id__load_post",
    # The default model is shared through Redis too.
    "set_default_v1_admin_models__model_id__default_post",
    # A benchmark run streams clips through the shared STT replica for minutes.
    "start_run_v1_benchmark_run_post",
]


@schemathesis.check
def one_error_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A 4xx/5xx answer is ``{"error": {"code", "message", "request_id"}}`` JSON."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(
            f"a {response.status_code} that is not JSON: {response.text!r:.200}"
        ) from exc
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"no error object: {body!r:.300}"
    for field in ("code", "message", "request_id"):
        assert isinstance(error.get(field), str) and error[field], f"error.{field}: {error!r:.300}"
    assert response.headers.get("x-request-id") == [error["request_id"]], response.headers
    return None


def _wait_for(url: str, kind: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replicas = httpx.get(f"{url}/health", timeout=5).json().get("replicas", {})
        if replicas.get(kind):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the gateway at {url} never saw {kind}")


@pytest.fixture(scope="module")
def fuzzed_gateway(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A keyed gateway on the mesh's Redis with a ``tts_clone`` of its own; its URL."""
    logs = tmp_path_factory.mktemp("fuzz-http")
    env = mesh.joining_env(
        tmp_path_factory,
        VOICEMESH_GATEWAY_API_KEYS=json.dumps([CLIENT_KEY]),
        VOICEMESH_GATEWAY_ADMIN_KEY=ADMIN_KEY,
        VOICEMESH_GATEWAY_WYOMING_ENABLED="false",
        VOICEMESH_TTS_CLONE_KEY_PREFIX=f"fuzz{free_port()}",
        **UNLIMITED,
    )
    clone = ServiceProcess("tts_clone", free_port(), env, logs).start()
    gateway: ServiceProcess | None = None
    try:
        clone.wait_healthy()
        gateway = start_routing_gateway(env, logs)
        _wait_for(gateway.url, "tts_clone")
        yield gateway.url
    finally:
        if gateway is not None:
            gateway.stop()
        clone.stop()


@pytest.fixture(scope="module")
def own_gateway(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A keyed gateway alone on a Redis database of its own (no backend); its URL."""
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{OWN_REDIS_DB}"
    env = {
        "VOICEMESH_REDIS_URL": url,
        "VOICEMESH_HOME": str(tmp_path_factory.mktemp("fuzz-own-home")),
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        "VOICEMESH_GATEWAY_API_KEYS": json.dumps([CLIENT_KEY]),
        "VOICEMESH_GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "VOICEMESH_GATEWAY_WYOMING_ENABLED": "false",
        **UNLIMITED,
    }
    gateway = ServiceProcess("gateway", free_port(), env, tmp_path_factory.mktemp("fuzz-own"))
    gateway.start()
    try:
        gateway.wait_healthy()
        yield gateway.url
    finally:
        gateway.stop()


def _schema(url: str) -> Any:
    """The gateway's schema, as it serves it."""
    return schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=30)


def call(case: Case) -> Response:
    """Send ``case`` with the admin key; fail on a 5xx or an error of another shape."""
    return case.call_and_validate(
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        checks=[not_a_server_error, one_error_shape],
        timeout=REQUEST_TIMEOUT_S,
    )


def requests_for(
    operation: Any,
    mode: GenerationMode,
    sent: collections.Counter[str],
    statuses: collections.Counter[int],
) -> Callable[[], None]:
    """A hypothesis run of ``MAX_EXAMPLES`` requests for one operation in one mode."""

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: each try is an HTTP call
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case) -> None:
        sent[operation.label] += 1
        statuses[call(case).status_code] += 1

    return run


def fuzz(url: str, keep: Callable[[str], bool]) -> list[str]:
    """Draw requests for every operation ``keep`` names; the failures, one line each.

    Prints the requests sent per operation, and checks that each chosen operation got
    at least one (none is skipped without saying so).
    """
    schema = _schema(url)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    chosen = [op for op in operations if keep(op.definition.raw.get("operationId", ""))]
    assert chosen, "the schema has no operation to fuzz"
    sent: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    unbreakable: list[str] = []
    for operation in chosen:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = requests_for(operation, mode, sent, statuses)
            try:
                run()
            except Unsatisfiable:
                # No request breaks this operation's schema (no parameters, or only
                # string path parameters, which any text fits): nothing to send.
                unbreakable.append(operation.label)
            except (Exception, BaseExceptionGroup) as exc:  # every failure, reported at the end
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    print(f"\n{url}: {sum(sent.values())} requests, statuses {dict(sorted(statuses.items()))}")
    for label, count in sorted(sent.items()):
        print(f"  {count:4d} {label}")
    print(f"no schema-breaking request exists for: {', '.join(unbreakable)}")
    assert sorted(sent) == sorted(op.label for op in chosen), "operations sent nothing"
    return failures


def test_mesh_routes_answer_bad_input_in_the_one_error_shape(
    mesh: Mesh, fuzzed_gateway: str
) -> None:
    failures = fuzz(fuzzed_gateway, lambda operation_id: operation_id not in MESH_CHANGING)
    assert not failures, "\n\n".join(failures)
    # Still up, still routing to the real services, and so is the mesh's own gateway.
    health = httpx.get(f"{fuzzed_gateway}/health", timeout=10).json()
    assert health["stt_route"] and health["replicas"].get("tts_vits"), health
    assert httpx.get(f"{mesh.gateway.url}/health", timeout=10).json()["stt_route"]


def test_mesh_changing_routes_on_a_gateway_of_their_own(own_gateway: str) -> None:
    failures = fuzz(own_gateway, lambda operation_id: operation_id in MESH_CHANGING)
    assert not failures, "\n\n".join(failures)
    assert httpx.get(f"{own_gateway}/health", timeout=10).status_code == 200
