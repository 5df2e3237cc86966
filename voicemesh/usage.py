"""What one process uses of the machine: resident memory, CPU, and GPU memory on CUDA.

Every replica's heartbeat (:class:`~voicemesh.registry.RegistryHeartbeat`) stamps these
figures into the load it registers, and the gateway sums them over the mesh for
``GET /v1/admin/status``. GPU memory is the memory the NVIDIA driver charges to this
process (``nvidia-smi --query-compute-apps``), read only where the replica's device is
``cuda``: a CPU replica has none to report, and a CUDA one whose process the driver
does not list (a container whose PIDs the host does not share) reports None rather
than the whole device's, which would count every replica on that GPU again.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import psutil

_LOGGER = logging.getLogger(__name__)

MB = 1024 * 1024
NVIDIA_SMI_QUERY = [
    "--query-compute-apps=pid,used_memory",
    "--format=csv,noheader,nounits",
]
NVIDIA_SMI_TIMEOUT_S = 2.0

GpuReader = Callable[[], dict[int, float] | None]
"""Returns MB of GPU memory by process id, or None when it cannot be read."""


def parse_compute_apps(text: str) -> dict[int, float]:
    """MB of GPU memory by PID from ``nvidia-smi --query-compute-apps=pid,used_memory``
    (CSV without header or units); a process on several GPUs has its figures added."""
    used: dict[int, float] = {}
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2:
            continue
        try:
            pid, megabytes = int(fields[0]), float(fields[1])
        except ValueError:
            continue  # "[N/A]" where the driver withholds the figure
        used[pid] = used.get(pid, 0.0) + megabytes
    return used


def read_nvidia_smi() -> dict[int, float] | None:
    """MB of GPU memory per PID as ``nvidia-smi`` reports it; None without the tool."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        done = subprocess.run(
            [tool, *NVIDIA_SMI_QUERY],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        _LOGGER.debug("nvidia-smi failed: %s", exc)
        return None
    return parse_compute_apps(done.stdout)


@dataclass(frozen=True)
class UsageSample:
    """One look at a process: memory (MB), CPU (% of one core), GPU memory (MB or None)."""

    memory_mb: float
    cpu_percent: float
    gpu_memory_mb: float | None


class ProcessUsage:
    """Samples one process (this one by default); CPU is the share since the last sample."""

    def __init__(self, pid: int | None = None, gpu_reader: GpuReader = read_nvidia_smi) -> None:
        self.process = psutil.Process(pid if pid is not None else os.getpid())
        self.gpu_reader = gpu_reader
        self.process.cpu_percent(None)  # the first call only starts the measurement

    def sample(self, device: str = "cpu") -> UsageSample:
        """Memory and CPU now; GPU memory too when ``device`` is a CUDA device."""
        with self.process.oneshot():
            rss = self.process.memory_info().rss
            cpu = float(self.process.cpu_percent(None))
        gpu: float | None = None
        if device.startswith("cuda"):
            by_pid = self.gpu_reader()
            if by_pid is not None:
                gpu = by_pid.get(self.process.pid)
        return UsageSample(
            memory_mb=round(rss / MB, 1),
            cpu_percent=round(cpu, 1),
            gpu_memory_mb=None if gpu is None else round(gpu, 1),
        )
