"""The benchmark service against the real mesh: real Whisper, real Piper, real Redis.

One run of each kind at once (``both``), one client, one clip, at real-time pace:
what the service reports must be what such a mesh does, a transcript within the
streaming WER bound the other integration tests hold the mesh to, and latencies that
were measured (positive, and within what a 2-core machine takes).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Mesh
from tests.integration.test_python_client import STREAM_WER_LIMIT
from voicemesh.assets.speech_clips import bundled_clips

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_a_run_of_both_kinds_measures_the_real_mesh(mesh: Mesh) -> None:
    base = mesh.gateway.url
    started = httpx.post(
        f"{base}/v1/benchmark/run",
        json={"kind": "both", "clients": 1, "clips": 1},
        timeout=10,
    )
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]

    deadline = time.monotonic() + 180
    result: dict[str, Any] = {}
    while time.monotonic() < deadline:
        result = httpx.get(f"{base}/v1/benchmark/results/{run_id}", timeout=10).json()
        if result["status"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert result["status"] == "completed", result
    assert result["errors"] == [], result["errors"]
    assert result["store"] == "redis"

    (stt,) = result["stt"]
    clip = bundled_clips()[0]
    assert stt["clip"] == clip.name
    assert stt["backend"] == mesh.stt_cpu.url
    assert stt["wer"] <= STREAM_WER_LIMIT, (stt["transcript"], clip.text)
    assert 0 < stt["ready_ms"] < 5_000
    assert 0 < stt["first_partial_ms"] < clip.duration_s * 1000
    assert 0 < stt["final_ms"] < 10_000
    summary = result["summary"]
    assert summary["stt"]["wer_mean"] == stt["wer"]
    assert summary["stt"]["final_ms"] == {"median": stt["final_ms"], "p95": stt["final_ms"]}

    assert len(result["tts"]) == 3
    for row in result["tts"]:
        assert row["backend"] == mesh.tts_vits.url
        assert 0 < row["first_chunk_ms"] <= row["total_ms"]
        assert row["audio_s"] > 0.5
        assert 0 < row["rtf"] < 5
    assert summary["tts"]["errors"] == 0
    assert summary["tts"]["rtf_median"] > 0
