"""Which ASR models the mesh holds, from a registry snapshot (``gateway.asr_models``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.asr_models import check_model, list_models, narrow, same_model, transcribes_with
from gateway.routing import choose_backends
from voicemesh.errors import ModelConflict, UnknownModel
from voicemesh.registry import AsrModel, ReplicaInfo, ReplicaLoad

pytestmark = pytest.mark.unit


def replica(
    instance_id: str,
    kind: str = "stt_cpu_ws",
    *,
    model: str = "base",
    use: str = "transcribe",
    rtf: float | None = None,
    latency_ms: float | None = None,
    **fields: Any,
) -> ReplicaInfo:
    """A registry entry holding ``model`` for ``use``."""
    now = time.time()
    return ReplicaInfo(
        instance_id=instance_id,
        kind=kind,
        url=f"http://{instance_id}:1",
        model=model,
        engine="faster-whisper",
        capabilities=["transcribe", "stream"] if use == "transcribe" else ["detect", "confirm"],
        asr_models=[
            AsrModel(name=model, engine="faster-whisper", use=use, languages=["en"], load_ms=900)  # type: ignore[arg-type]
        ],
        load=ReplicaLoad(rtf=rtf, latency_ms=latency_ms),
        started_at=now,
        updated_at=now,
        **fields,
    )


def by_id(models: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in models}


def test_bundled_aliases_name_the_same_model() -> None:
    assert same_model("whisper-base", "base")
    assert same_model("base", "whisper-base")
    assert same_model("tiny.en", "whisper-tiny.en")
    assert not same_model("base", "tiny.en")
    assert not same_model("small", "base")


def test_performance_is_the_mean_of_measured_replicas_and_null_before_any() -> None:
    replicas = [
        replica("a", rtf=0.2, latency_ms=100.0),
        replica("b", rtf=0.4, latency_ms=None),
        replica("c", kind="stt_tiny_ws", model="tiny.en", use="confirm"),
    ]
    models = by_id(list_models(replicas, set(), replicas[:2]))
    assert models["base"]["performance"] == {"rtf": 0.3, "latency_ms": 100.0}
    assert models["tiny.en"]["performance"] == {"rtf": None, "latency_ms": None}


def test_status_per_replica_and_summarised() -> None:
    replicas = [
        replica("held"),
        replica("draining", draining=True),
        replica("sick", model="small", healthy=False),
    ]
    models = by_id(list_models(replicas, {"held"}, []))
    base = models["base"]
    assert {r["instance_id"]: r["status"] for r in base["replicas"]} == {
        "held": "failed",
        "draining": "unloaded",
    }
    assert base["status"] == "failed"  # none loaded; a failed one outranks a draining one
    assert models["small"]["status"] == "failed"
    # Bundled but held by no replica: known, listed, not loaded anywhere.
    assert models["tiny.en"]["status"] == "unloaded" and models["tiny.en"]["replicas"] == []


def test_a_loaded_replica_makes_the_model_loaded() -> None:
    models = by_id(list_models([replica("held"), replica("ok")], {"held"}, []))
    assert models["base"]["status"] == "loaded"


def test_the_default_is_the_model_of_the_first_routed_replica() -> None:
    gpu = replica("gpu", kind="stt_gpu_ws", model="small")
    cpu = replica("cpu")
    models = by_id(list_models([cpu, gpu], set(), [gpu, cpu]))
    assert models["small"]["default"] is True
    assert models["base"]["default"] is False


def test_detector_model_confirms_only() -> None:
    detector = replica("d", kind="stt_tiny_ws", model="tiny.en", use="confirm")
    tiny = by_id(list_models([detector], set(), []))["tiny.en"]
    assert tiny["transcribes_files"] is False
    assert (
        tiny["capabilities"]["streaming"] is False and tiny["capabilities"]["timestamps"] is False
    )
    assert tiny["capabilities"]["diarization"] is False
    assert not transcribes_with(detector, "tiny.en")


def test_an_older_stt_replica_counts_by_its_model_field() -> None:
    old = replica("old", model="small").model_copy(update={"asr_models": []})
    assert transcribes_with(old, "small")
    assert by_id(list_models([old], set(), [old]))["small"]["transcribes_files"] is True


def test_check_model_refuses_unknown_with_404_naming_the_available() -> None:
    with pytest.raises(UnknownModel) as refused:
        check_model("large-v9", [replica("a")])
    assert refused.value.status_code == 404
    assert "large-v9" in refused.value.message and "base" in refused.value.message


def test_check_model_refuses_a_confirm_only_model_with_409() -> None:
    known = [replica("a"), replica("d", kind="stt_tiny_ws", model="tiny.en", use="confirm")]
    with pytest.raises(ModelConflict) as refused:
        check_model("tiny.en", known)
    assert refused.value.status_code == 409
    assert "models that can: base" in refused.value.message


def test_check_model_refuses_a_bundled_model_no_replica_holds_with_409() -> None:
    with pytest.raises(ModelConflict):
        check_model("whisper-tiny.en", [replica("a")])


def test_check_model_accepts_a_served_model_by_alias() -> None:
    check_model("whisper-base", [replica("a")])


def test_static_backends_name_no_model_and_the_refusal_says_so() -> None:
    static = replica("static", model="").model_copy(update={"asr_models": []})
    with pytest.raises(UnknownModel) as refused:
        check_model("base-x", [static])
    assert "leave model out" in refused.value.message


def unloaded(instance_id: str, model: str = "base", status: str = "unloaded") -> ReplicaInfo:
    """An STT replica whose admin-managed model is not loaded (``status``)."""
    info = replica(instance_id, model=model)
    info.asr_models[0].status = status  # type: ignore[assignment]
    return info


def test_a_replica_reports_its_model_status_and_the_summary_follows() -> None:
    models = by_id(list_models([unloaded("a"), unloaded("b", status="loading")], set(), []))
    assert [r["status"] for r in models["base"]["replicas"]] == ["unloaded", "loading"]
    assert models["base"]["status"] == "loading"
    failed = unloaded("c")
    failed.asr_models[0].status, failed.asr_models[0].error = "failed", "OSError: no file"
    row = by_id(list_models([failed], set(), []))["base"]["replicas"][0]
    assert row["status"] == "failed" and row["error"] == "OSError: no file"


def test_routing_skips_a_replica_whose_model_is_not_loaded() -> None:
    ready, idle = replica("ready", model="tiny.en"), unloaded("idle")
    assert names(choose_backends("auto", [idle, ready])) == ["ready"]
    assert choose_backends("auto", [idle, unloaded("other", status="loading")]) == []


def test_check_model_refuses_a_model_only_unloaded_replicas_hold_with_409() -> None:
    with pytest.raises(ModelConflict, match="no replica has it loaded"):
        check_model("base", [unloaded("a"), replica("t", model="tiny.en")])
    check_model("tiny.en", [unloaded("a"), replica("t", model="tiny.en")])


def test_the_admins_default_model_goes_first_and_is_the_listed_default() -> None:
    base, tiny = replica("a-base"), replica("b-tiny", model="tiny.en")
    assert names(narrow([base, tiny], None, "tiny.en")) == ["b-tiny", "a-base"]
    assert names(narrow([base, tiny], None, None)) == ["a-base", "b-tiny"]
    assert names(narrow([base, tiny], "base", "tiny.en")) == ["a-base"]
    models = by_id(list_models([base, tiny], set(), [base], "tiny.en"))
    assert models["tiny.en"]["default"] and not models["base"]["default"]


def names(replicas: list[ReplicaInfo]) -> list[str]:
    return [r.instance_id for r in replicas]
