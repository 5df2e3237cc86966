"""Starting and stopping a whole mesh from outside it: the steps behind ``up`` and ``down``.

These only act and report (return values); the CLI decides what to print.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from voicemesh.mesh.plan import GATEWAY, MeshPaths, MeshPlan, nginx_layout, url_host
from voicemesh.mesh.state import (
    MeshState,
    cmdline_mentions,
    pid_alive,
    read_state,
    remove_run_files,
    signal_group,
    wait_gone,
    write_atomic,
)
from voicemesh.nginx import NginxSettings, write_embedded_conf
from voicemesh.settings import MIN_INTERNAL_TOKEN_CHARS

TOKEN_MODE = 0o600
"""The internal token file: readable by its owner alone."""


def ensure_internal_token(path: Path) -> bool:
    """Make the mesh's internal token once per home (random, mode 0600); True when made now.

    An existing token is kept (its mode tightened if needed), so that a restarted service
    and the ones still running agree. Deleting the file rotates it at the next ``up``.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if len(path.read_text(encoding="utf-8").strip()) >= MIN_INTERNAL_TOKEN_CHARS:
            if path.stat().st_mode & 0o077:
                os.chmod(path, TOKEN_MODE)
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, TOKEN_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    os.chmod(tmp, TOKEN_MODE)  # whatever the umask
    os.replace(tmp, path)
    return True


def write_plan(plan: MeshPlan, paths: MeshPaths) -> None:
    """Record the plan where the supervisor reads it, and create the logs folder."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    write_atomic(paths.plan, plan.model_dump_json(indent=2))


def write_nginx_conf(
    plan: MeshPlan, paths: MeshPaths, settings: NginxSettings, *, body_limit_bytes: int
) -> None:
    """Render the front door's config for the plan's gateway (no-op without nginx)."""
    front = plan.front_door()
    if front is None:
        return
    gateway = next(item for item in plan.services if item.name == GATEWAY)
    write_embedded_conf(
        settings,
        nginx_layout(paths, front.port),
        [f"{url_host(gateway.host)}:{gateway.port}"],
        body_limit_bytes=body_limit_bytes,
    )


def spawn_supervisor(plan: MeshPlan, paths: MeshPaths) -> subprocess.Popen[bytes]:
    """Start a detached ``voicemesh supervise`` for the written plan, logging to its own file."""
    with open(paths.supervisor_log, "wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "voicemesh.cli", "supervise", "--plan", str(paths.plan)],
            cwd=plan.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # Reap the supervisor whenever it ends so it never lingers as a zombie of this process.
    threading.Thread(target=supervisor.wait, name="voicemesh-reaper", daemon=True).start()
    return supervisor


def stop_leftovers(state: MeshState, grace_s: float = 5.0) -> list[str]:
    """Stop every recorded process still alive (SIGTERM, then SIGKILL); returns their labels."""
    # The port in the command line guards against a recycled pid.
    leftovers = [
        item
        for item in [*state.services, state.redis]
        if item and item.pid and pid_alive(item.pid) and cmdline_mentions(item.pid, str(item.port))
    ]
    for item in leftovers:
        assert item.pid is not None
        signal_group(item.pid, signal.SIGTERM)
    for pid in wait_gone([item.pid for item in leftovers if item.pid], grace_s):
        signal_group(pid, signal.SIGKILL)
    wait_gone([item.pid for item in leftovers if item.pid], 5.0)
    return [f"{item.label} (pid {item.pid})" for item in leftovers]


@dataclass
class StopReport:
    """What stopping a mesh did, for the CLI to tell."""

    supervisor_pid: int | None = None
    """None when no state was recorded (nothing ran)."""
    supervisor: Literal["gone", "stopped", "killed"] = "gone"
    """``gone``: it was not running; ``killed``: it ignored SIGTERM past the timeout."""
    stopped: list[str] = field(default_factory=list)
    """``label (pid N)`` of each process the supervisor stopped."""
    leftovers: list[str] = field(default_factory=list)
    """``label (pid N)`` of each process the supervisor left running, stopped here."""


def stop_mesh(paths: MeshPaths, timeout: float, grace_s: float = 5.0) -> StopReport:
    """Stop the supervisor and everything it recorded, however it is doing.

    ``timeout``: how long the supervisor gets after SIGTERM; ``grace_s``: how long a
    process it left behind gets (0 and 0: kill everything at once).
    """
    state = read_state(paths)
    if state is None:
        remove_run_files(paths)
        return StopReport()
    report = StopReport(supervisor_pid=state.supervisor_pid)
    # Listed in stop order: services first, Redis last.
    running = [item for item in [*state.services, state.redis] if item and pid_alive(item.pid)]
    supervisor_pid = state.supervisor_pid
    if pid_alive(supervisor_pid) and supervisor_pid != os.getpid():
        os.kill(supervisor_pid, signal.SIGTERM)
        if wait_gone([supervisor_pid], timeout):
            report.supervisor = "killed"
            if cmdline_mentions(supervisor_pid, "voicemesh"):
                signal_group(supervisor_pid, signal.SIGKILL)
            wait_gone([supervisor_pid], 5.0)
        else:
            report.supervisor = "stopped"
    # The supervisor removes the state when it stops cleanly; re-read for what it left.
    left = read_state(paths) or state
    report.leftovers = stop_leftovers(left, grace_s)
    report.stopped = [
        label
        for label in (f"{item.label} (pid {item.pid})" for item in running)
        if label not in report.leftovers
    ]
    remove_run_files(paths)
    return report


def stop_supervisor(supervisor: subprocess.Popen[bytes], paths: MeshPaths, timeout: float) -> None:
    """Stop a supervisor this process spawned, even before it wrote any state."""
    if supervisor.poll() is None:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signal_group(supervisor.pid, signal.SIGKILL)
            supervisor.wait(timeout=5.0)
    state = read_state(paths)
    if state is not None:
        stop_leftovers(state)
    remove_run_files(paths)
