"""Whether a new session gets the speech detector: not on a replica already loaded."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.detector_link import detector_wanted
from gateway.settings import GatewaySettings
from voicemesh.metrics import GatewayMetrics
from voicemesh.registry import ReplicaInfo, ReplicaLoad

pytestmark = pytest.mark.unit

METRICS = GatewayMetrics("gateway-detector-choice-test")


def state(**settings: Any) -> Any:
    return SimpleNamespace(settings=GatewaySettings(redis_url="", **settings), metrics=METRICS)


def replica(utilization: float | None) -> ReplicaInfo:
    now = time.time()
    return ReplicaInfo(
        instance_id="stt-1",
        kind="stt_cpu_ws",
        url="http://127.0.0.1:1",
        load=ReplicaLoad(utilization=utilization),
        started_at=now,
        updated_at=now,
    )


def shed_count() -> float:
    return METRICS.requests.labels("gateway-detector-choice-test", "shed", "detector")._value.get()


def test_a_quiet_or_unmeasured_replica_gets_the_detector() -> None:
    assert detector_wanted(state(), replica(None), "s1")
    assert detector_wanted(state(), replica(0.5), "s1")


def test_a_loaded_replica_runs_its_sessions_on_its_own_vad_and_the_shed_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = shed_count()
    with caplog.at_level("INFO"):
        assert not detector_wanted(state(), replica(0.8), "s2")
    assert shed_count() == before + 1
    assert "s2 runs without the detector" in caplog.text and "80% busy" in caplog.text


def test_the_limit_is_a_setting_and_the_detector_can_be_off() -> None:
    assert detector_wanted(state(detector_max_utilization=1.0), replica(0.95), "s3")
    assert not detector_wanted(state(use_detector=False), replica(0.0), "s3")
