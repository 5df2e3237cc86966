"""What runs now: the state file, pids, signals and log tails.

The supervisor records every process it runs in ``run/state.json`` (written
atomically); ``status`` and ``down`` only read that file and signal the recorded
processes, so they work from any shell.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from voicemesh.mesh.plan import MeshPaths, ProcessKind

_LOGGER = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
"""Lines of a failing process's log shown to the user."""


class ProcessState(BaseModel):
    """One supervised process as recorded in ``state.json``."""

    name: str
    replica: int
    kind: ProcessKind
    pid: int | None
    """None while the process waits for its restart."""
    host: str
    port: int
    url: str
    log: str
    wyoming: str | None = None
    """The gateway's Wyoming server address (None for every other process)."""
    restarts: int = 0
    exits: int = 0
    started_at: float | None = None
    status: Literal["running", "backoff", "stopped"] = "running"

    @property
    def label(self) -> str:
        """Name shown to people: the log file's stem."""
        return Path(self.log).stem


class MeshState(BaseModel):
    """The content of ``state.json``."""

    supervisor_pid: int
    started_at: float
    home: str
    logs_dir: str
    redis_url: str
    redis: ProcessState | None = None
    services: list[ProcessState] = []

    def processes(self) -> list[ProcessState]:
        """Redis (when bundled) then the services."""
        return ([self.redis] if self.redis else []) + list(self.services)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temp file and a rename, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_state(paths: MeshPaths) -> MeshState | None:
    """The recorded state, or None when there is none (or it is unreadable)."""
    try:
        return MeshState.model_validate_json(paths.state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as exc:
        _LOGGER.warning("ignoring unreadable %s: %s", paths.state, exc)
        return None


def running_state(paths: MeshPaths) -> MeshState | None:
    """The recorded state when its supervisor is alive, else None."""
    state = read_state(paths)
    if state is not None and pid_alive(state.supervisor_pid):
        return state
    return None


def remove_run_files(paths: MeshPaths) -> None:
    """Forget the plan and the state (the mesh is stopped)."""
    for path in (paths.state, paths.plan):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


def pid_alive(pid: int | None) -> bool:
    """True when ``pid`` is a running (not zombie) process."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the command name, which is in parentheses.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def cmdline_mentions(pid: int, marker: str) -> bool:
    """Guard against pid reuse: the process's command line mentions ``marker``."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True
    return marker in raw.replace(b"\0", b" ").decode("utf-8", errors="replace")


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a process and its group (every child runs in its own session)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout_s: float) -> set[int]:
    """Wait until every pid has exited; returns the ones still alive."""
    remaining = {pid for pid in pids if pid_alive(pid)}
    deadline = time.monotonic() + timeout_s
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        remaining = {pid for pid in remaining if pid_alive(pid)}
    return remaining
