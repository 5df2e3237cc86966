"""Every service of ``voicemesh.services.SERVICES``, built in-process by its own factory,
serves an ``/openapi.json`` that is a valid OpenAPI document (nothing loaded, no model)."""

from __future__ import annotations

import importlib
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from voicemesh.services import SERVICES, ServiceSpec

pytestmark = pytest.mark.service


def build_app(spec: ServiceSpec) -> Any:
    """The service's app from its ``uvicorn --factory`` target, default settings."""
    module, function = spec.factory.split(":")
    return getattr(importlib.import_module(module), function)()


@pytest.mark.parametrize("spec", list(SERVICES.values()), ids=list(SERVICES))
async def test_openapi_json_is_a_valid_openapi_document(spec: ServiceSpec) -> None:
    app = build_app(spec)
    # No lifespan: the document must not need a model, Redis or anything started.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://service"
    ) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    document = response.json()
    validate(document)
    assert document["openapi"].startswith("3.")
    assert "/health" in document["paths"], sorted(document["paths"])
