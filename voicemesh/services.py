"""The one table of VoiceMesh services: entry points, default ports, env prefixes.

The embedded runner, the CLI and ``docker-compose.yml`` all start services from
here, so there is one source of truth for how each service is run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service."""

    name: str
    factory: str
    """``module:function`` for ``uvicorn --factory``."""
    env_prefix: str
    default_port: int
    needs_cuda: bool = False
    scalable: bool = True

    def uvicorn_args(self, host: str, port: int) -> list[str]:
        """Arguments after ``python -m`` that start this service."""
        return [
            "uvicorn",
            "--factory",
            self.factory,
            "--host",
            host,
            "--port",
            str(port),
            "--no-access-log",
            "--ws-max-size",
            str(16 * 1024 * 1024),
        ]


WYOMING_PORT = 10300
"""The gateway's Wyoming (Home Assistant) TCP port by default: the port Home Assistant's
Wyoming speech-to-text add-ons use."""


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("stt_tiny_ws", "stt_tiny_ws.app:create_app", "VOICEMESH_STT_TINY_", 8091),
        ServiceSpec("stt_cpu_ws", "stt_cpu_ws.app:create_app", "VOICEMESH_STT_CPU_", 8092),
        ServiceSpec(
            "stt_gpu_ws", "stt_gpu_ws.app:create_app", "VOICEMESH_STT_GPU_", 8093, needs_cuda=True
        ),
        ServiceSpec("tts_vits", "tts_vits.app:create_app", "VOICEMESH_TTS_VITS_", 8094),
        ServiceSpec("tts_clone", "tts_clone.app:create_app", "VOICEMESH_TTS_CLONE_", 8095),
        ServiceSpec(
            "gateway", "gateway.app:create_app", "VOICEMESH_GATEWAY_", 8080, scalable=False
        ),
    )
}
"""Start order: detector and engines first, the gateway last."""
