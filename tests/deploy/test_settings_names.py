"""Every ``VOICEMESH_<SERVICE>_*`` variable the deployment sets names a real settings field
of that service (a misspelt or stale name would be silently ignored: ``extra="ignore"``)."""

from __future__ import annotations

import importlib
import re

import pytest
from pydantic_settings import BaseSettings

from tests.deploy.files import K8S, dockerfile_instructions, k8s_render, resolved_compose
from tests.harness import REPO
from voicemesh.nginx import NginxSettings
from voicemesh.services import SERVICES
from voicemesh.settings import CommonSettings

pytestmark = pytest.mark.deploy


def settings_fields() -> dict[str, set[str]]:
    """Env prefix -> field names, from each service's own settings class."""
    fields: dict[str, set[str]] = {
        "VOICEMESH_": set(CommonSettings.model_fields),
        "VOICEMESH_NGINX_": set(NginxSettings.model_fields),
    }
    for spec in SERVICES.values():
        module = importlib.import_module(spec.factory.split(":")[0])
        classes = [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type)
            and issubclass(obj, BaseSettings)
            and obj.model_config.get("env_prefix") == spec.env_prefix
        ]
        assert classes, f"{spec.name}: no settings class with prefix {spec.env_prefix}"
        fields[spec.env_prefix] = set().union(*(set(c.model_fields) for c in classes))
    return fields


def check(variable: str, fields: dict[str, set[str]], where: str) -> None:
    """``variable`` is a field of the longest prefix it starts with."""
    prefix = max((p for p in fields if variable.startswith(p)), key=len)
    field = variable[len(prefix) :].lower()
    assert field in fields[prefix], f"{where}: {variable} is no setting ({prefix}*)"


def test_compose_variables_are_settings() -> None:
    fields = settings_fields()
    checked = 0
    for name, service in resolved_compose("gpu")["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("VOICEMESH_"):
                check(variable, fields, f"compose {name}")
                checked += 1
    assert checked >= 30


def test_kubernetes_variables_are_settings() -> None:
    fields = settings_fields()
    checked = 0
    for doc in k8s_render(K8S / "overlays" / "gpu"):
        if doc["kind"] == "ConfigMap":
            names = list(doc.get("data", {}))
        elif doc["kind"] == "Deployment":
            names = [
                e["name"]
                for c in doc["spec"]["template"]["spec"]["containers"]
                for e in c.get("env", [])
            ]
        else:
            continue
        for variable in names:
            if variable.startswith("VOICEMESH_"):
                check(variable, fields, f"k8s {doc['metadata']['name']}")
                checked += 1
    assert checked >= 25


def test_dockerfile_variables_are_settings() -> None:
    fields = settings_fields()
    for dockerfile in REPO.glob("*/Dockerfile"):
        for step in dockerfile_instructions(dockerfile):
            if step.keyword == "ENV":
                for variable in re.findall(r"(VOICEMESH_[A-Z_]+)=", step.args):
                    check(variable, fields, str(dockerfile.relative_to(REPO)))


def test_a_misspelt_variable_is_caught() -> None:
    with pytest.raises(AssertionError, match="no setting"):
        check("VOICEMESH_TTS_CLONE_GPT_SOVITS_URL", settings_fields(), "here")
